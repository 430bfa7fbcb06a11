"""Evaluation speed: the evaluate stage's request path under one server setting after another.

Each variant starts vLLM on `models/merged` exactly as the evaluate stage does
(`triage.server.VLLMServer` with params.yaml's `serve:` plus the variant's changes),
sends the benchmark records with the stage's own client (`triage.client.send_all`) and
scores them, so a setting that changes the answers shows up next to the one that changes
the speed. Each variant is one server start; its requests/s is the median of
BENCH_REPEATS passes after a warm-up pass.

    python -m bench.eval_speed    # BENCH_TICKETS=40 tickets (their records), BENCH_REPEATS passes
"""

from __future__ import annotations

import copy
import os
import time
from typing import Any

from bench.common import WORK, bench_records, repeats, save, served_passes, spread
from triage.params import load_params
from triage.prepared import read_inputs
from triage.scoring import overall, per_task, score

# (name, what changes relative to the untuned settings). Untuned: max_num_seqs 8,
# concurrency 8, vLLM's CPU reservation (1 of 2 cores for the engine's scheduler), prefix
# caching on, eager mode, structured-output backend auto.
UNTUNED: dict[str, Any] = {
    "serve": {
        "max_num_seqs": 8,
        "enable_prefix_caching": True,
        "enforce_eager": True,
        "cpu_num_of_reserved_cpu": None,
        "extra_args": [],
    },
    "evaluate": {"concurrency": 8},
}
VARIANTS: list[tuple[str, dict[str, Any]]] = [
    ("untuned settings", {}),
    ("all cores for the model (VLLM_CPU_NUM_OF_RESERVED_CPU=0)",
     {"serve": {"cpu_num_of_reserved_cpu": 0}}),
    ("+ max_num_seqs 32, concurrency 32",
     {"serve": {"cpu_num_of_reserved_cpu": 0, "max_num_seqs": 32},
      "evaluate": {"concurrency": 32}}),
    ("+ max_num_seqs 64, concurrency 64",
     {"serve": {"cpu_num_of_reserved_cpu": 0, "max_num_seqs": 64},
      "evaluate": {"concurrency": 64}}),
    ("max_num_seqs 64 without prefix caching",
     {"serve": {"cpu_num_of_reserved_cpu": 0, "max_num_seqs": 64,
                "enable_prefix_caching": False},
      "evaluate": {"concurrency": 64}}),
    ("max_num_seqs 64, structured outputs by guidance (auto picks xgrammar)",
     {"serve": {"cpu_num_of_reserved_cpu": 0, "max_num_seqs": 64,
                "extra_args": ["--structured-outputs-config.backend", "guidance"]},
      "evaluate": {"concurrency": 64}}),
    ("max_num_seqs 64, compiled (enforce_eager false)",
     {"serve": {"cpu_num_of_reserved_cpu": 0, "max_num_seqs": 64, "enforce_eager": False},
      "evaluate": {"concurrency": 64}}),
    ("params.yaml as committed", None),
]  # fmt: skip


def merged(params: dict[str, Any], changes: dict[str, Any] | None) -> dict[str, Any]:
    """params.yaml's serve/evaluate with the untuned settings and then `changes` applied;
    None = params.yaml as it is."""
    out = copy.deepcopy(params)
    for layer in [] if changes is None else [UNTUNED, changes]:
        for section, values in layer.items():
            out[section] = {**out[section], **values}
    return out


def measure(
    params: dict[str, Any], records: list[dict[str, Any]], labels: dict[str, list[str]], n: int
) -> dict[str, Any]:
    """Requests/s over n warm passes; latencies and scores from the last one."""
    server, passes = served_passes(params, records, labels, n, WORK / "eval_speed_vllm.log")
    wall_s, outcomes = passes[-1]
    rows, answers = per_task(records, outcomes)  # a ticket record answers several tasks
    metrics, _ = score(rows, answers, params["tasks"], labels)
    stats = overall(outcomes, wall_s, server.startup_s)
    stats["requests_per_s"] = spread([len(records) / w for w, _ in passes[1:]])
    stats["scores"] = {
        name: {k: m[k] for k in ("accuracy", "macro_f1", "rougeL", "truncated_rate") if k in m}
        for name, m in metrics.items()
        if isinstance(m, dict)
    }
    return stats


def main() -> None:
    params = load_params()
    records = bench_records()
    _, labels = read_inputs(params["tasks"])
    only = os.environ.get("BENCH_VARIANTS")  # e.g. "0,1,7": a subset while iterating
    rows = []
    for i, (name, changes) in enumerate(VARIANTS):
        if only and str(i) not in only.split(","):
            continue
        variant = merged(params, changes)
        print(f"bench eval_speed [{i}] {name}", flush=True)
        started = time.monotonic()
        stats = measure(variant, records, labels, repeats())
        stats["total_s"] = round(time.monotonic() - started, 1)
        print(
            f"  {stats['requests_per_s']} req/s, start-up {stats['server_startup_s']} s, "
            f"{stats['scores']}",
            flush=True,
        )
        rows.append({"variant": name, "serve": variant["serve"],
                     "concurrency": variant["evaluate"]["concurrency"], **stats})  # fmt: skip
    save("eval_speed", {"records": len(records), "rows": rows})


if __name__ == "__main__":
    main()
