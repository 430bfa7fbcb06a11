"""The evaluate stage's request loop before and after it moved to the openai client: the same
request bodies to one vLLM server, alternating, so the request loop is all that differs.

"Before" is triage/client.py at BENCH_CLIENT_BEFORE (default deea69c^: asyncio + httpx with a
hand-written retry and backoff loop), run from a `git archive` of that commit; "after" is the
working tree's (the openai client, retries by tenacity). Each pass runs in a Python process of
its own (the same interpreter), which builds its client and sends every body with
`evaluate.concurrency` requests in flight; the wall time is taken inside that process, around
the sending only, with the CPU time the client process used meanwhile (on 2 cores, CPU the
server did not get). Both send the bodies today's `request_body` builds for the benchmark records
(BENCH_TICKETS tickets), so the answers can be compared too: with greedy decoding they
should agree as often as two passes of one client do (vLLM's batches, and with them the
rounding of bf16, differ from pass to pass). One warm-up pass first (new batch shapes are
slow the first time on a CPU), then BENCH_REPEATS passes of each.

    python -m bench.client_speed
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.common import MERGED, ROOT, WORK, bench_records, repeats, save, spread
from triage.client import request_body, stage_budgets
from triage.params import load_params
from triage.prepared import read_inputs
from triage.server import VLLMServer

BEFORE = os.environ.get("BENCH_CLIENT_BEFORE", "deea69c^")

SEND = """
import asyncio, json, sys, time
from triage import client
bodies, url, headers, model, cfg = json.load(sys.stdin)
endpoint = client.Endpoint(url, headers, model)
started, cpu = time.monotonic(), time.process_time()
outcomes = asyncio.run(client._send_all(bodies, endpoint, cfg))
wall_s, cpu_s = time.monotonic() - started, time.process_time() - cpu
print(json.dumps({"wall_s": wall_s, "cpu_s": cpu_s, "answers": [o.content for o in outcomes],
                  "errors": sum(o.error is not None for o in outcomes)}))
"""


def tree_at(rev: str) -> Path:
    """The project's files at `rev` in a scratch folder (only its triage package is used)."""
    dest = WORK / "client-before"
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", rev], cwd=ROOT, capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    return dest


def send_pass(code_root: Path, request: str) -> dict[str, Any]:
    """One pass of every body through the client of the triage package under `code_root`."""
    env = {**os.environ, "PYTHONPATH": str(code_root)}
    proc = subprocess.run(
        [sys.executable, "-c", SEND], input=request, capture_output=True, text=True, env=env
    )
    if proc.returncode != 0:
        raise SystemExit(f"bench client: a pass under {code_root} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.splitlines()[-1])


def main() -> None:
    WORK.mkdir(parents=True, exist_ok=True)
    params = load_params()
    records = bench_records()
    _, labels = read_inputs(params["tasks"])
    budgets = stage_budgets(params, MERGED)
    clients = {"before": tree_at(BEFORE), "after": ROOT}
    n = repeats()
    passes: dict[str, list[dict[str, Any]]] = {"before": [], "after": []}
    with VLLMServer(MERGED, params["serve"], WORK / "client-vllm.log") as server:
        bodies = [request_body(r, server.name, labels, budgets) for r in records]
        request = json.dumps([bodies, server.url, server.headers, server.name, params["evaluate"]])
        send_pass(ROOT, request)  # warm-up
        for _ in range(n):
            for name, code_root in clients.items():
                passes[name].append(send_pass(code_root, request))
                last = passes[name][-1]
                print(f"  {name}: {last['wall_s']:.2f} s, {last['cpu_s']:.2f} s CPU", flush=True)
    results: dict[str, Any] = {"before_rev": BEFORE, "requests": len(bodies), "repeats": n}
    for name, rows in passes.items():
        results[name] = {
            "requests_per_s": spread([len(bodies) / r["wall_s"] for r in rows]),
            "client_cpu_s": spread([r["cpu_s"] for r in rows]),  # CPU the server did not get
            "errors": sum(r["errors"] for r in rows),
        }
    results["after_vs_before"] = round(
        results["after"]["requests_per_s"]["median"]
        / results["before"]["requests_per_s"]["median"],
        3,
    )

    def same(a: list[str | None], b: list[str | None]) -> str:
        return f"{sum(x == y for x, y in zip(a, b, strict=True))}/{len(a)}"

    # vLLM's batches differ from pass to pass, and with them bf16 rounding: the same client's
    # two passes are the reference for how many answers differ between the two clients
    before, after = passes["before"], passes["after"]
    results["same_answers"] = {
        "httpx vs openai, first passes": same(before[0]["answers"], after[0]["answers"]),
        "httpx, first vs last pass": same(before[0]["answers"], before[-1]["answers"]),
        "openai, first vs last pass": same(after[0]["answers"], after[-1]["answers"]),
    }
    save("client_speed", results)


if __name__ == "__main__":
    main()
