"""Where a finished train stage spent its time: optimizer steps against evaluations, from the
log LlamaFactory wrote while it trained (`models/adapter/trainer_log.jsonl`, DVC-cached).

    python -m bench.train_log                         # the workspace's run
    python -m bench.train_log --exp lr-1e-4 lr-2e-4   # these experiments' runs (from the cache)

Each log line carries the elapsed time (whole seconds) and the tokens seen so far (without
padding). A line with `eval_loss` closes an evaluation: the time since the line before it is
evaluation, every other interval is training. The train stage's `train_tokens_per_second`
(metrics/train.json) divides by both; the benchmark `bench.train_speed` times steps only, so
the two differ by what this script calls evaluation. Writes bench/results/train_log.json.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from bench.common import save
from triage.runs import Run

LOG = "models/adapter/trainer_log.jsonl"


def seconds(elapsed: str) -> int:
    """LlamaFactory's "H:MM:SS" (or "D day, H:MM:SS") as seconds."""
    days, _, clock = elapsed.rpartition(", ")
    h, m, s = (int(x) for x in clock.split(":"))
    return (int(days.split()[0]) if days else 0) * 86400 + h * 3600 + m * 60 + s


def split(lines: list[dict[str, Any]]) -> dict[str, Any]:
    """Seconds and tokens of the training intervals and of the evaluations of one run, and
    the slowest training intervals (tokens/s), which the medians hide."""
    train_s = eval_s = 0
    evals: list[int] = []
    intervals: list[dict[str, Any]] = []
    t0 = tokens0 = 0
    for line in lines:
        t, tokens = seconds(line["elapsed_time"]), line["total_tokens"]
        if "eval_loss" in line:
            eval_s += t - t0
            evals.append(t - t0)
        elif "loss" in line:
            train_s += t - t0
            step = line["current_steps"]
            intervals.append({"step": step, "s": t - t0, "tokens": tokens - tokens0})
        t0, tokens0 = t, tokens
    slowest = sorted(intervals, key=lambda i: i["tokens"] / max(i["s"], 1))[:3]
    return {
        "elapsed_s": t0,
        "train_s": train_s,
        "eval_s": eval_s,
        "evaluations": len(evals),
        "eval_s_each": evals,
        "tokens": tokens0,
        "tokens_per_s_overall": round(tokens0 / t0, 1),
        "tokens_per_s_training": round(tokens0 / train_s, 1),
        "slowest_intervals": [
            {**i, "tokens_per_s": round(i["tokens"] / max(i["s"], 1))} for i in slowest
        ],
    }


def read_log(exp: str | None) -> list[dict[str, Any]]:
    """The log of the workspace's run (exp None) or of an experiment's, from the DVC cache."""
    text = Run(exp or "workspace", exp, {}, {}).read_cached(LOG) or ""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exp", nargs="+", help="experiments (default: the workspace)")
    args = parser.parse_args()
    runs = {name or "workspace": split(read_log(name)) for name in args.exp or [None]}
    for name, run in runs.items():
        print(f"{name}: {run['train_s']} s training at {run['tokens_per_s_training']} tokens/s, "
              f"{run['eval_s']} s in {run['evaluations']} evaluations")  # fmt: skip
    command = "python -m bench.train_log" + (" --exp " + " ".join(args.exp) if args.exp else "")
    save("train_log", {"command": command,
                       "log": LOG, "runs": runs})  # fmt: skip


if __name__ == "__main__":
    main()
