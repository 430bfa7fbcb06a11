"""Helpers shared by the benchmark scripts: timing, statistics, results files, the machine.

Every script writes one JSON file to `bench/results/` (committed: small, and the figures
BENCHMARKS.md quotes); `python -m bench.report` renders them all into BENCHMARKS.md.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from stages.common import ROOT, serve_python, write_json

RESULTS = ROOT / "bench" / "results"
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
    """Run a command to completion; (wall seconds, the finished process). Fails loudly."""
    started = time.monotonic()
    proc = subprocess.run(cmd, text=True, capture_output=True, **kw)
    wall = time.monotonic() - started
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
        raise SystemExit(f"bench: {' '.join(cmd)} exited {proc.returncode}")
    return wall, proc


def save(name: str, data: dict[str, Any]) -> Path:
    """Write bench/results/<name>.json, stamped with the date and the machine."""
    data = {"measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), **data}
    data["machine"] = machine()
    path = RESULTS / f"{name}.json"
    write_json(path, data)
    print(f"bench: wrote {path.relative_to(ROOT)}")
    return path


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


def serve_version() -> str | None:
    """vLLM's version in the serving environment."""
    proc = subprocess.run(
        [str(serve_python()), "-c", "import importlib.metadata as m; print(m.version('vllm'))"],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        proc = subprocess.run(
            [str(serve_python()), "-c", "import vllm; print(vllm.__version__)"],
            capture_output=True,
            text=True,
        )
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
    keep: list[str] = []
    for r in records:
        if r["id"] not in keep and len(keep) < limit:
            keep.append(r["id"])
    return [r for r in records if r["id"] in set(keep)]
