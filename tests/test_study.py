"""The guide's studies as queued DVC experiments. Fast: the command lines (nothing is queued),
the table, the queue's states read per experiment. Slow: the table against the columns DVC
really names on the shared tiny experiments, and a study interrupted on a real DVC queue.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.conftest import REPO, Experiment, dvc, run
from tests.helpers import default_signal_dispositions
from triage import study
from triage.params import PipelineError


def test_study_commands_follow_the_guide() -> None:
    rank = study.queue_commands("rank", study.STUDIES["rank"].values)
    assert [c[:6] for c in rank] == [
        ["dvc", "exp", "run", "--queue", "-n", f"rank-{r}"] for r in (16, 32, 64, 128)
    ]
    assert [c[6:] for c in rank] == [["-S", f"lora_rank={r}"] for r in (16, 32, 64, 128)]
    lr = study.queue_commands("lr", study.STUDIES["lr"].values)
    assert [c[5] for c in lr] == ["lr-1e-4", "lr-2e-4", "lr-5e-4"]
    assert [c[7] for c in lr] == ["learning_rate=1e-4", "learning_rate=2e-4", "learning_rate=5e-4"]
    target = study.queue_commands("target", study.STUDIES["target"].values)
    assert [(c[5], c[7]) for c in target] == [
        ("target-qv", "lora_target='q_proj,v_proj'"),  # quoted: a bare comma is a Hydra sweep
        ("target-qkvo", "lora_target='q_proj,k_proj,v_proj,o_proj'"),
        ("target-all", "lora_target=all"),
    ]


def test_study_can_be_sized_down() -> None:
    extra = ["max_samples=40", "prepare.max_tickets=200"]
    cmds = study.queue_commands("rank", ["8", "16"], extra)
    assert cmds == [
        ["dvc", "exp", "run", "--queue", "-n", f"rank-{r}-max_samples40-prepare.max_tickets200",
         "-S", f"lora_rank={r}", "-S", "max_samples=40", "-S", "prepare.max_tickets=200"]
        for r in (8, 16)
    ]  # fmt: skip
    # a sized-down run never passes for the full study's run of the same value
    assert study.experiment_name("rank", "16", extra) != study.experiment_name("rank", "16")
    out = run(
        [sys.executable, "-m", "triage.study", "rank", "--values", "8", "16", "--dry",
         "-j", "2", "-S", "max_samples=40"],
        REPO,
    ).stdout  # fmt: skip
    assert "dvc exp run --queue -n rank-8-max_samples40 -S lora_rank=8 -S max_samples=40" in out
    assert out.rstrip().endswith("dvc queue start -j 2")


def keeps(cmd: list[str], column: str) -> bool:
    """Whether `dvc exp show --keep K --drop D` shows a column (DVC: kept columns survive)."""
    keep, drop = cmd[cmd.index("--keep") + 1], cmd[cmd.index("--drop") + 1]
    return bool(re.match(keep, column)) or not re.match(drop, column)


def test_study_table_shows_the_changed_params_and_key_metrics() -> None:
    cmd = study.show_command("rank", ["max_samples=40", "prepare.max_tickets=200"])
    assert cmd[:4] == ["dvc", "exp", "show", "--md"] and "--only-changed" in cmd
    shown = [
        "Experiment", "params.yaml:lora_rank", "max_samples", "prepare.max_tickets",
        "train_loss", "eval_loss", "train_runtime_s", "trainable_parameters",
        "metrics/train.json:lora_alpha", "metrics/eval.json:category.accuracy",
        "metrics/eval.json:summary.rougeL",
    ]  # fmt: skip
    hidden = [
        "metrics/baseline.json:category.accuracy", "category.accuracy",  # the baseline's
        "learning_rate", "lora_target", "metrics/train.json:lora_rank", "peak_rss_mb",
        "input_rows", "label_counts.category.test.billing", "stages/train.py", "data/prepared",
        "metrics/eval.json:category.classification_report.billing.precision",
    ]  # fmt: skip
    assert [c for c in shown if not keeps(cmd, c)] == []
    assert [c for c in hidden if keeps(cmd, c)] == []


def test_study_rows_drop_other_studies() -> None:
    table = "\n".join([
        "| Experiment | lora_rank |",
        "|---|---|",
        "| workspace | 8 |",
        "| main | 8 |",
        "| ├── 1a2b3c4 [rank-16] | 16 |",
        "| ├── 2b3c4d5 [lr-1e-4] | 8 |",
        "| └── 3c4d5e6 [rank-8] | 8 |",
    ])  # fmt: skip
    kept = study.study_rows(table, ["rank-8", "rank-16"]).splitlines()
    assert len(kept) == 6 and not any("lr-1e-4" in line for line in kept)


def test_queue_status_is_read_per_experiment(monkeypatch: pytest.MonkeyPatch) -> None:
    status = "\n".join([
        "Task     Name     Created    Status",
        "7a1b2c3  rank-16  10:01 AM   Running",
        "8b2c3d4  rank-8   10:01 AM   Queued",
        "9c3d4e5  rank-8   Nov 27, 2026   Failed",  # an earlier attempt of the same name
        "0d4e5f6  lr-1e-4  09:00 AM   Success",
        "",
        "Worker status: 1 active, 0 idle",
    ])  # fmt: skip
    monkeypatch.setattr(study, "dvc", lambda *args, **kw: status)
    states, workers = study.queue_state(["rank-8", "rank-16"])
    assert states == {"rank-16": "Running", "rank-8": "Queued"} and workers == 1


def test_a_running_experiment_is_waited_for_whatever_the_worker_count(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A worker training on every core can miss DVC's status request (0 workers reported while
    its experiment runs): that is no stalled queue. Nothing running and no worker is."""
    polls = iter([({"rank-16": "Running"}, 0)] * 5 + [({"rank-16": "Success"}, 0)])
    done = iter([set()] * 5 + [{"rank-16"}])
    monkeypatch.setattr(study, "queue_state", lambda names: next(polls))
    monkeypatch.setattr(study, "existing_experiments", lambda: next(done))
    assert study.wait(["rank-16"], poll_s=0.01, timeout_s=None, idle_s=0.02) == []

    monkeypatch.setattr(study, "queue_state", lambda names: ({"rank-16": "Queued"}, 0))
    monkeypatch.setattr(study, "existing_experiments", set)
    with pytest.raises(PipelineError, match="no queue worker answered .* `dvc queue start`"):
        study.wait(["rank-16"], poll_s=0.01, timeout_s=None, idle_s=0.02)


@pytest.mark.slow
def test_study_table_on_real_experiments(
    tiny_workspace: Path, tiny_experiments: dict[str, Experiment]
) -> None:
    """The study's `dvc exp show` columns against the columns DVC really names."""
    cmd = study.show_command("rank")
    table = study.study_rows(dvc(cmd[1:], tiny_workspace).stdout, ["rank-16"])
    header = [c.strip() for c in table.splitlines()[0].strip("|").split("|")]
    assert header[0] == "Experiment" and "params.yaml:lora_rank" in header
    assert {"train_loss", "trainable_parameters", "metrics/train.json:lora_alpha"} <= set(header)
    assert "lora_target" not in header and not any("label_counts" in c for c in header)
    assert "[rank-16]" in table and "[target-qv]" not in table


def queued_states(ws: Path) -> dict[str, str]:
    """`dvc queue status` of a workspace as {experiment name: status}."""
    rows = dvc(["queue", "status"], ws).stdout.splitlines()
    return {row.split()[1]: row.split()[-1] for row in rows if len(row.split()) >= 3}


def processes_in(folder: Path) -> list[str]:
    """Command lines of the live processes working in `folder` (their working directory)."""
    found = []
    for proc in psutil.process_iter(["cwd", "cmdline", "status"]):
        cwd = proc.info["cwd"]
        if cwd and Path(cwd).is_relative_to(folder) and proc.info["status"] != "zombie":
            found.append(" ".join(proc.info["cmdline"] or []))
    return found


@pytest.mark.slow
def test_interrupted_study_leaves_no_experiment_running(tiny_workspace: Path) -> None:
    """Ctrl-C while a study waits on a real DVC queue: exit 130 with one line, the running
    experiment killed, its queue records removed, no queue worker or stage left behind."""
    name = "rank-24"
    proc = subprocess.Popen(
        [sys.executable, "-m", "triage.study", "rank", "--values", "24", "--poll", "1"],
        cwd=tiny_workspace, env={**os.environ, "PYTHONPATH": str(tiny_workspace)},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=default_signal_dispositions,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 600
        while queued_states(tiny_workspace).get(name) != "Running":
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the experiment never started"
            time.sleep(1)
        assert processes_in(tiny_workspace)  # the queue worker, and the experiment under it
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, out + err
    assert err.strip().endswith(
        "error: interrupted (SIGINT); the study's experiments stopped; run it again to resume"
    )
    assert name not in queued_states(tiny_workspace)
    assert name not in dvc(["exp", "list", "--name-only"], tiny_workspace).stdout.split()
    deadline = time.monotonic() + 60  # an idle worker exits within about 10 s (DVC's docs)
    while (left := processes_in(tiny_workspace)) and time.monotonic() < deadline:
        time.sleep(1)
    assert not left
