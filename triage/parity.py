"""Parity check (`make parity`): does the adapter served on the base model answer as the merged
model does?

The usual way a LlamaFactory + vLLM deployment goes wrong is that the merged model answers
differently from the adapter it came from (another chat template, the merge's dtype, other
tokenizer files). `make parity` runs the evaluate stage twice on the same test records, once
on `models/merged` (`data/eval/predictions.jsonl`, the pipeline's own run) and once on
`models/adapter` served by vLLM's LoRA support on `models/base`
(`python -m stages.evaluate --serve adapter --name adapter`), and this script compares the
two prediction files answer by answer. It writes `metrics/parity.json`: per task, the share
of identical answers and the first differing tickets; it exits 1 if a classification task
agrees on fewer than `--min-agreement` of its answers (99 % by default). Generation answers
are compared as strings: greedy decoding in float32 should agree token for token, and where
it does not, the first differing tickets show by how much.

On a CPU, where vLLM serves an adapter ~40x slower than a merged model, `make parity
PARITY_TICKETS=96` asks the adapter about the first 96 test tickets only, and compares those; with
`PARITY_DTYPE=float32` both models are served again in float32 (`--merged` names that run's
predictions), which tells bfloat16 rounding from a real difference.

Not a DVC stage: it serves the model a second time, which `dvc repro` should not pay for.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from triage.files import run_main, write_json
from triage.params import PipelineError, load_params
from triage.scoring import round4

MERGED = Path("data/eval/predictions.jsonl")
ADAPTER = Path("data/eval/predictions_adapter.jsonl")
OUT = Path("metrics/parity.json")


def answers(path: Path) -> dict[tuple[str, str], str | None]:
    """(ticket id, task) -> predicted answer."""
    if not path.is_file():
        raise PipelineError(f"{path}: not found (`make parity` writes both prediction files)")
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    return {(row["id"], row["task"]): row["predicted"] for row in rows}


def metrics_of(predictions: Path) -> Path:
    """The metrics file the evaluate run that wrote `predictions` wrote beside it:
    data/eval/predictions_NAME.jsonl -> metrics/eval_NAME.json."""
    return Path("metrics") / (predictions.stem.replace("predictions", "eval", 1) + ".json")


def agreement(
    merged: dict[tuple[str, str], str | None], adapter: dict[tuple[str, str], str | None]
) -> dict[str, dict[str, Any]]:
    """Per task: how many answers, the share identical, and the first few that differ.
    The adapter may have answered a sample of the merged model's tickets (`--tickets`)."""
    if not adapter or not adapter.keys() <= merged.keys():
        raise PipelineError(
            "the merged model's and the adapter's predictions answer different "
            "(ticket, task) pairs: rerun `make parity`"
        )
    tasks: dict[str, dict[str, Any]] = {}
    for (ticket, task), answer in adapter.items():
        t = tasks.setdefault(task, {"n": 0, "same": 0, "differing": []})
        t["n"] += 1
        if answer == merged[(ticket, task)]:
            t["same"] += 1
        elif len(t["differing"]) < 5:
            t["differing"].append(
                {"id": ticket, "merged": merged[(ticket, task)], "adapter": answer}
            )
    return {
        task: {"n": t["n"], "agreement": round4(t["same"] / t["n"]), "differing": t["differing"]}
        for task, t in tasks.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--min-agreement", type=float, default=0.99)
    parser.add_argument("--merged", type=Path, default=MERGED, help="the merged model's answers")
    args = parser.parse_args()
    tasks = load_params()["tasks"]
    result = agreement(answers(args.merged), answers(ADAPTER))
    for task, r in result.items():
        print(f"parity {task}: {r['agreement']:.2%} of {r['n']} answers identical")
    served = {
        name: json.loads(metrics.read_text(encoding="utf-8")).get("served")
        for name, metrics in (("merged", metrics_of(args.merged)), ("adapter", metrics_of(ADAPTER)))
    }
    write_json(OUT, {**result, "served": served})
    low = [
        task
        for task, r in result.items()
        if tasks.get(task, {}).get("kind") == "classification"
        and r["agreement"] < args.min_agreement
    ]
    if low:
        raise PipelineError(
            f"{OUT}: adapter and merged model disagree on more than "
            f"{1 - args.min_agreement:.0%} of the {', '.join(low)} labels"
        )


if __name__ == "__main__":
    run_main(main)
