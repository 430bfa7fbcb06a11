"""Helpers shared by several test modules: synthetic data, stage runners, process scans.

- Raw tickets and the prepare stage (tests/test_prepare.py, test_baseline.py,
  test_learning.py): `make_tickets`, `make_params`, `lay_out`, `run_stage`, `prepare_in`.
- Prepared records, the evaluate stage and the server's processes (tests/test_server.py,
  test_evaluate.py): `task_records`, `mini_workspace`, `run_evaluate`, `stage_env`,
  `owned_processes`, `leaked_shm`, `server_pid`, and the small `SERVE` section.
- Signals (tests/test_server.py, test_study.py): `default_signal_dispositions`.
- Training logs (tests/test_diagnosis.py, test_report.py): `training_log`, `healthy_loss`.

The session fixtures (models, workspaces, experiments) are in tests/conftest.py.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import psutil
import yaml

from triage.records import records_for_ticket
from triage.server import OWNER_ENV

REPO = Path(__file__).resolve().parent.parent
PARAMS = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))


# ----------------------------------------------------------------------------- raw tickets

# Small data needs bigger test and validation fractions to hold every class.
TEST_PREPARE = {  # the tests' own defaults (the repository's may change)
    "input": "tickets.csv",
    "test_size": 0.2,
    "max_chars": 400,
    "min_per_class": 3,
    "stratify": None,
    "balance": None,
    "group_column": None,
    "val_groups": None,
}
TEST_TOP = {"val_size": 0.1, "seed": 42}
TASKS = {  # the tests' own instructions (the repository's may change wording)
    "category": {
        "kind": "classification",
        "column": "category",
        "labels": None,
        "instruction": "Classify the ticket. Categories: {labels}.",
    },
    "priority": {
        "kind": "classification",
        "column": "priority",
        "labels": ["low", "medium", "high", "urgent"],
        "instruction": "one of {labels}",
    },
    "summary": {"kind": "generation", "column": "summary", "instruction": "one line"},
}
KEYWORDS = {  # each category shows in its words, so a baseline can learn it
    "billing": ["invoice", "double charge", "declined payment", "missing receipt"],
    "shipping": ["parcel", "late delivery", "tracking number", "courier"],
    "account": ["password reset", "login error", "two-factor code", "locked account"],
}
PRIORITIES = ("low", "medium", "high", "urgent")


def make_tickets(
    sizes: dict[str, int] | None = None, long_rows: tuple[int, ...] = (2, 5), seed: int = 0
) -> pd.DataFrame:
    """Synthetic raw tickets in the default export's shape; rows in `long_rows` are overlong.

    Ids are T0001, T0002, ... in row order, so a data row number and its id go together.
    """
    sizes = sizes or {"billing": 30, "shipping": 20, "account": 10}
    rng = random.Random(seed)
    categories = [c for c, size in sizes.items() for _ in range(size)]
    rng.shuffle(categories)
    rows = []
    for n, category in enumerate(categories, start=1):
        topic = rng.choice(KEYWORDS[category])
        body = f"Hello, ticket {n} here: I have a {topic} problem since {rng.randint(1, 28)} May."
        if n in long_rows:
            body += " More details follow." * 40
        rows.append(
            {
                "id": f"T{n:04d}",
                "subject": f"{topic} problem",
                "body": body,
                "category": category,
                "priority": PRIORITIES[n % len(PRIORITIES)],
                "summary": f"Customer reports a {topic} problem",
            }
        )
    return pd.DataFrame(rows)


def make_params(prepare: dict[str, Any] | None = None, **top: Any) -> dict[str, Any]:
    """The repository's params.yaml with the test defaults, then the given overrides."""
    params = copy.deepcopy(PARAMS) | TEST_TOP | {"tasks": copy.deepcopy(TASKS)}
    params["prepare"] = params["prepare"] | TEST_PREPARE | (prepare or {})
    return params | top


def lay_out(
    folder: Path, data: pd.DataFrame | bytes | None, params: dict[str, Any] | None = None
) -> Path:
    """A workspace: params.yaml and the input file in the format its name says.

    `data` bytes are written as they are; None writes no input file.
    """
    params = params or make_params()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    path = folder / params["prepare"]["input"]
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, bytes):
        path.write_bytes(data)
    elif data is None:
        pass
    elif path.suffix == ".jsonl":
        path.write_text(data.to_json(orient="records", lines=True, force_ascii=False), "utf-8")
    elif path.suffix == ".parquet":
        data.to_parquet(path, index=False)
    else:
        data.to_csv(path, index=False)
    return folder


def run_stage(folder: Path, module: str = "stages.prepare") -> subprocess.CompletedProcess[str]:
    """Run a stage as DVC does: from the workspace folder, the repository on PYTHONPATH."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", module]
    return subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True, timeout=300)


def prepare_in(
    folder: Path, data: pd.DataFrame | bytes | None, params: dict[str, Any] | None = None
) -> subprocess.CompletedProcess[str]:
    return run_stage(lay_out(folder, data, params))


# ----------------------------------------------------------------------------- evaluate, server

# Label sets of the synthetic test records (category's are a subset of the real ones).
LABELS = {"category": ["billing", "refund", "shipping", "technical_issue"]}
LABELS["priority"] = [str(x) for x in PARAMS["tasks"]["priority"]["labels"]]
# Small server for the tiny model; the rest as in params.yaml.
# A start-up limit that only a hang reaches: vLLM starts in ~30 s alone, several minutes on
# a machine that another job (another vLLM, a training run) keeps busy.
STARTUP_S = 1800
SERVE = {
    **PARAMS["serve"],
    "max_model_len": 1024,
    "max_num_seqs": 8,
    "startup_timeout_s": STARTUP_S,
}


def owned_processes(owner: int | None = None, under: Path | None = None) -> list[int]:
    """Live processes whose environment carries the server marker, optionally only those
    started by `owner` (pid) or running in a folder `under` (their working directory).

    Reads /proc/<pid>/environ itself: vLLM renames its engine (setproctitle), which overwrites
    the start of that block with NULs, and psutil's environ() stops at the first of them."""
    found = []
    for proc in psutil.process_iter(["status", "cwd"]):
        if proc.info["status"] in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD):
            continue  # a zombie runs nothing
        try:
            environ = Path(f"/proc/{proc.pid}/environ").read_bytes().split(b"\0")
        except OSError:  # gone meanwhile, or not ours to read
            continue
        marker = [e.split(b"=", 1)[1] for e in environ if e.startswith(OWNER_ENV.encode() + b"=")]
        if not marker or (owner is not None and int(marker[0]) != owner):
            continue
        cwd = proc.info["cwd"]
        if under is not None and not (cwd and Path(cwd).is_relative_to(under)):
            continue
        found.append(proc.pid)
    return found


def unmapped_shm(since: float) -> set[str]:
    """Multiprocessing's psm_* and sem.mp-* files in /dev/shm, created since `since`, that
    no process maps."""
    mapped = set()
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            for region in proc.memory_maps():  # "/dev/shm/psm_1a2b (deleted)" once unlinked
                mapped.update(re.findall(r"/dev/shm/(\S+)", region.path))
    found = set()
    for f in Path("/dev/shm").glob("*"):
        with contextlib.suppress(OSError):
            if f.name.startswith(("psm_", "sem.mp-")) and f.stat().st_mtime >= since:
                found.add(f.name)
    return found - mapped


def leaked_shm(since: float, settle_s: float = 5.0) -> list[str]:
    """Shared memory created since `since` that no process maps and that stays: what a vLLM
    killed the wrong way leaves in /dev/shm (RAM; hundreds of MB each time, seen here).

    Another job on the machine (a second test run, any Python multiprocessing) creates such
    files too, for a moment: a named semaphore lives between its creation and its unlink. A
    leak stays until reboot, so only files still there after `settle_s` count."""
    first = unmapped_shm(since)
    if not first:
        return []
    time.sleep(settle_s)
    return sorted(first & unmapped_shm(since))


def task_records(
    texts: list[str],
    tasks: tuple[str, ...] = ("category", "priority", "summary"),
    layout: str = "task",
) -> list[dict[str, Any]]:
    """Prepared test records (as stages/prepare.py writes them) for the given ticket texts.

    The gold category and priority cycle through the label sets; the gold summary is the
    ticket's first line.
    """
    records = []
    for i, text in enumerate(texts):
        gold = {
            "category": LABELS["category"][i % len(LABELS["category"])],
            "priority": LABELS["priority"][i % len(LABELS["priority"])],
            "summary": text.splitlines()[0],
        }
        answers = {name: gold[name] for name in tasks}
        records += records_for_ticket(
            f"T{i:04d}", text, answers, PARAMS["tasks"], LABELS, PARAMS["default_system"], layout
        )
    return records


def set_dotted(params: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Apply dotted-key overrides (`prepare.max_tickets`) to a params mapping, in place."""
    for dotted, value in overrides.items():
        *parents, leaf = dotted.split(".")
        node = params
        for key in parents:
            node = node[key]
        node[leaf] = value
    return params


def mini_workspace(
    root: Path,
    records: list[dict[str, Any]],
    model: Path | None = None,
    overrides: dict[str, Any] | None = None,
    baseline: dict[str, Any] | None = None,
) -> Path:
    """A folder the evaluate stage runs in: params.yaml, data/prepared, metrics/baseline.json
    and models/merged (a link to `model`), without running the pipeline. Answers are capped at
    64 tokens unless `overrides` say otherwise (sizing them is tested on its own)."""
    overrides = {"evaluate.max_tokens": 64, **(overrides or {})}
    params = set_dotted(yaml.safe_load((REPO / "params.yaml").read_text()), overrides)
    tasks = {name for r in records for name in r["tasks"]}
    params["tasks"] = {k: v for k, v in params["tasks"].items() if k in tasks}
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    prepared = root / "data" / "prepared"
    prepared.mkdir(parents=True)
    (prepared / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    labels = {k: v for k, v in LABELS.items() if k in tasks}
    (prepared / "labels.json").write_text(json.dumps(labels))
    (root / "metrics").mkdir()
    (root / "metrics" / "baseline.json").write_text(json.dumps(baseline or {}))
    if model is not None:
        (root / "models").mkdir()
        (root / "models" / "merged").symlink_to(model)
    return root


def stage_env(**extra: str) -> dict[str, str]:
    """The environment DVC would give the stage: this repository's code, both venvs."""
    return {**os.environ, "PYTHONPATH": str(REPO), **extra}


def run_evaluate(
    ws: Path, *args: str, timeout: float = 600, **env: str
) -> subprocess.CompletedProcess:
    """`python -m stages.evaluate` in a workspace, to completion."""
    return subprocess.run(
        [sys.executable, "-m", "stages.evaluate", *args],
        cwd=ws, env=stage_env(**env), capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def server_pid(stdout: str) -> int:
    """The API server's pid (= its process group) from the stage's "vLLM ready" line."""
    line = next(x for x in stdout.splitlines() if "vLLM ready" in x)
    return int(line.split("(pid ")[1].split(")")[0])


def alive(pid: int) -> bool:
    """The process runs (a zombie not yet reaped by its new parent counts as gone)."""
    try:
        return psutil.Process(pid).status() not in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)
    except psutil.NoSuchProcess:
        return False


def default_signal_dispositions() -> None:
    """Give the child the signal dispositions of a foreground command.

    A shell starts background jobs (`make test &`, nohup, some CI runners) with SIGINT and
    SIGQUIT ignored, and a child inherits that: Python then installs no KeyboardInterrupt
    handler and the stage would rightly ignore Ctrl-C. The signal tests must not depend on
    how pytest itself was launched.
    """
    for signum in (signal.SIGINT, signal.SIGQUIT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)


# ------------------------------------------------------------------ training logs

STEPS = np.arange(1, 61)


def training_log(loss, eval_every: int = 10, eval_loss=None, grad_norm=None, lr: float = 2e-4):
    """A synthetic training log of 60 steps as metrics/train_loss.csv holds it (eval_loss
    only on eval steps): the diagnosis and the report read it."""
    rng = np.random.default_rng(0)
    evals = np.full(len(STEPS), np.nan)
    at = STEPS % eval_every == 0
    evals[at] = (
        eval_loss if eval_loss is not None else 0.9 + 1.5 * np.exp(-STEPS[at] / 20)
    )  # falling
    return pd.DataFrame(
        {
            "step": STEPS,
            "loss": loss,
            "eval_loss": evals,
            "learning_rate": lr,
            "grad_norm": grad_norm if grad_norm is not None else 0.8 + 0.3 * rng.random(60),
        }
    )


def healthy_loss() -> np.ndarray:
    rng = np.random.default_rng(1)
    return 0.6 + 2.5 * np.exp(-STEPS / 15) + rng.normal(0, 0.01, len(STEPS))
