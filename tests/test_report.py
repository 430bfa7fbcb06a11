"""Studies, the comparison report, its training diagnosis, and the pull-request review.

Fast: the diagnosis on synthetic training logs (each pathology of the guide's troubleshooting
table, and a healthy run), the study's command lines (nothing is queued), and the PR report
on a two-commit copy of the repository (no training: metrics are committed files). Slow: the
two shared experiments of `tiny_experiments` in `dvc exp show`, the study's table and the report,
and a study interrupted on a real DVC queue.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import psutil
import pytest
import yaml

from tests.conftest import REPO, Experiment, dvc, exp_run, run, set_params
from tests.helpers import default_signal_dispositions
from triage import report, study
from triage.params import PipelineError
from triage.report import Run, diagnose

# ------------------------------------------------------------------ diagnosis (fast)

STEPS = np.arange(1, 61)


def log(loss, eval_every: int = 10, eval_loss=None, grad_norm=None, lr: float = 2e-4):
    """A training log as metrics/train_loss.csv holds it (eval_loss only on eval steps)."""
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


def causes(curve: pd.DataFrame, params: dict | None = None) -> list[str]:
    return [f.cause for f in diagnose(curve, params)]


def test_healthy_run_has_no_finding() -> None:
    assert diagnose(log(healthy_loss())) == []


def test_flat_loss_means_learning_rate_too_small() -> None:
    rng = np.random.default_rng(2)
    curve = log(2.3 + rng.normal(0, 0.01, len(STEPS)), lr=1e-6)
    (finding,) = diagnose(curve, {"learning_rate": 1e-6})
    assert finding.cause == "learning rate too small (学习率太小)"
    assert finding.symptom.startswith("loss not decreasing")
    assert "raise learning_rate (now 1e-06)" in finding.change
    assert re.search(r"training loss 2\.3\d* at the start, 2\.3\d* at the end", finding.evidence)


def test_oscillating_loss_means_learning_rate_too_large() -> None:
    curve = log(1.0 + 0.4 * np.sin(1.7 * STEPS) + 0.5 * np.exp(-STEPS / 15), lr=5e-4)
    (finding,) = diagnose(curve, {"learning_rate": 5e-4})  # not also "not decreasing"
    assert finding.cause == "learning rate too large (学习率太大)"
    assert "lower learning_rate (now 0.0005)" in finding.change
    assert "of its median" in finding.evidence and "threshold 5%" in finding.evidence


def test_rising_eval_loss_while_train_loss_falls_means_overfitting() -> None:
    evals = [1.6, 1.3, 1.2, 1.25, 1.35, 1.5]  # lowest at step 30
    (finding,) = diagnose(log(healthy_loss(), eval_loss=evals), {"lora_dropout": 0.1})
    assert finding.cause == "overfitting (过拟合)"
    assert "raise lora_dropout (now 0.1)" in finding.change and "num_train_epochs" in finding.change
    assert "lowest 1.2 (step 30) to 1.5 (step 60), +25.0%" in finding.evidence


def test_huge_gradient_norm_means_exploding_gradients() -> None:
    norms = np.full(len(STEPS), 0.9)
    norms[29] = 150.0
    (finding,) = diagnose(log(healthy_loss(), grad_norm=norms))
    assert finding.cause == "exploding gradients (梯度爆炸)"
    assert "peaked at 150 (step 30), median 0.9" in finding.evidence
    assert "lower learning_rate" in finding.change and "check the data" in finding.change


def test_non_finite_loss_is_an_exploding_gradient() -> None:
    loss = healthy_loss()
    loss[40:] = np.inf
    assert "exploding gradients (梯度爆炸)" in causes(log(loss))


def test_a_few_points_or_a_converged_loss_are_not_judged() -> None:
    short = log(healthy_loss()).head(3)
    assert diagnose(short) == []
    converged = log(0.05 + 0.001 * np.cos(STEPS))  # flat, but at the floor
    assert "learning rate too small (学习率太小)" not in causes(converged)


def test_grad_norm_comes_from_the_trainer_state_when_the_curve_lacks_it() -> None:
    """LlamaFactory's trainer_log.jsonl (metrics/train_loss.csv) logs no grad_norm."""
    r = Run("x", "c" * 40, {}, {})
    r.files[report.LOSS_CURVE] = "step,loss,eval_loss\n1,2.0,\n2,1.5,1.4\n"
    history = [{"step": 1, "loss": 2.0, "grad_norm": 0.5}, {"step": 2, "grad_norm": 99.0}]
    r.files[report.TRAINER_STATE] = json.dumps({"log_history": [*history, {"step": 2}]})
    curve = report.read_curve(r)
    assert curve["grad_norm"].tolist() == [0.5, 99.0]
    assert curve["eval_loss"].iloc[1] == 1.4


def test_the_thresholds_are_documented_in_the_report() -> None:
    for value in ("5%", "0.1", "10 x the run's median", "fewer than 4"):
        assert value in report.THRESHOLDS_MD


# ------------------------------------------------------------------ runs and evaluation (fast)

SHOWN = [
    {"rev": "workspace", "name": None, "data": {"params": {"params.yaml": {"data": {"a": 1}}}}},
    {
        "rev": "b" * 40,
        "name": "main",
        "data": {"params": {"params.yaml": {"data": {"a": 1}}}},
        "experiments": [
            {"executor": None, "name": "x", "revs": [
                {"rev": "c" * 40, "name": "x", "error": None, "data": {
                    "params": {"params.yaml": {"data": {"a": 2, "t": {"k": [1]}}}},
                    "metrics": {"metrics/train.json": {"data": {"train_loss": 1.0}}},
                }},
            ]},
            {"executor": {"state": "queued"}, "name": "q", "revs": [
                {"rev": "d" * 40, "name": "q", "error": None, "data": {}},
            ]},
            {"executor": {"state": "failed"}, "name": "f", "revs": [
                {"rev": "e" * 40, "name": "f", "error": {"msg": "x"}, "data": {}},
            ]},
        ],
    },
]  # fmt: skip


def test_runs_are_the_workspace_and_finished_experiments() -> None:
    runs = report.collect_runs(SHOWN)
    assert [(r.name, r.rev) for r in runs] == [("workspace", None), ("x", "c" * 40)]
    assert runs[1].metrics == {"metrics/train.json": {"train_loss": 1.0}}
    assert report.differing_params(runs) == {"a": [1, 2], "t.k": [None, [1]]}
    assert [r.name for r in report.collect_runs(SHOWN, ["ccc"])] == ["workspace", "x"]
    with pytest.raises(PipelineError, match=r"no finished experiment 'q'.*known: x"):
        report.collect_runs(SHOWN, ["q"])


def lock_of(runs: dict[str, dict[str, Any]]) -> str:
    """A dvc.lock (as JSON, which is YAML) of stages {name: {deps, outs, params}}."""
    return json.dumps({"schema": "2.0", "stages": runs})


def test_a_stage_that_did_not_run_in_an_experiment_is_not_its_own() -> None:
    """dvc.lock keeps the parent's entries for the stages an experiment did not run: their
    outputs (and every stage downstream) are not that experiment's."""
    params = {"lora_rank": 32, "evaluate": {"concurrency": 8}}

    def stages(configs: str, adapter_in: str, merged_in: str) -> dict[str, Any]:
        return {
            "configure": {"params": {"params.yaml": {"lora_rank": 32}},
                          "outs": [{"path": "configs/train.yaml", "md5": configs}]},
            "train": {"deps": [{"path": "configs/train.yaml", "md5": "c1"}],
                      "outs": [{"path": "models/adapter", "md5": adapter_in},
                               {"path": "metrics/train.json", "md5": "t"}]},
            "merge": {"deps": [{"path": "models/adapter", "md5": "a1"}],
                      "outs": [{"path": "models/merged", "md5": "m1"}]},
            "evaluate": {"params": {"params.yaml": {"evaluate.concurrency": 8}},
                         "deps": [{"path": "models/merged", "md5": merged_in}],
                         "outs": [{"path": "metrics/eval.json", "md5": "e"}]},
        }  # fmt: skip

    def run_with(lock: dict[str, Any]) -> Run:
        r = Run("x", "c" * 40, params, {"metrics/eval.json": {}, "metrics/train.json": {}})
        r.files["dvc.lock"] = lock_of(lock)
        return r

    assert report.foreign_stages(run_with(stages("c1", "a1", "m1"))) == {}
    # stopped after configure: train ran on the parent's config, and so on downstream
    after_configure = run_with(stages("c2", "a1", "m1"))
    assert report.foreign_stages(after_configure) == {
        "train": "it ran on another configs/train.yaml",
        "merge": "train did not run in it",
        "evaluate": "merge did not run in it",
    }
    assert set(report.own_outputs(after_configure)) == {
        "models/adapter", "metrics/train.json", "models/merged", "metrics/eval.json"
    }  # fmt: skip
    assert after_configure.metrics == {}
    assert report.evaluation_state(after_configure, {}) == "not evaluated"
    # stopped after merge: the evaluation scored the parent's merged model
    after_merge = run_with(stages("c1", "a1", "m0"))
    assert report.foreign_stages(after_merge) == {"evaluate": "it ran on another models/merged"}
    assert report.evaluation_state(after_merge).startswith("not produced by this run (evaluate")
    # a params change the stage did not see
    other_params = run_with(stages("c1", "a1", "m1"))
    other_params.params = {**params, "evaluate": {"concurrency": 64}}
    assert report.foreign_stages(other_params) == {
        "evaluate": "it ran with another evaluate.concurrency"
    }


def test_report_renders_scores_curves_and_confusion(tmp_path: Path, monkeypatch) -> None:
    """The whole report from synthetic runs: one evaluated, one trained only."""
    same_tickets = {"category": {"accuracy": 0.8, "macro_f1": 0.7}, "summary": {"rougeL": 0.3}}
    baseline = {"tfidf_lora_tickets": same_tickets, "tfidf_all_tickets": {"category": {}}}
    scores = {"category": {"accuracy": 0.9, "macro_f1": 0.75}, "summary": {"rougeL": 0.35}}
    tasks = {"category": {"kind": "classification"}, "summary": {"kind": "generation"}}
    train = {"trainable_parameters": 34816, "train_runtime_s": 12.5, "lora_rank": 8}
    csv = log(healthy_loss()).to_csv(index=False)
    evaluated = Run("workspace", "a" * 40, {"tasks": tasks, "lora_rank": 8}, {
        "metrics/baseline.json": baseline, "metrics/eval.json": scores, "metrics/train.json": train,
    })  # fmt: skip
    evaluated.files.update({
        "metrics/train_loss.csv": csv, "dvc.lock": "{}",
        "metrics/confusion/category.csv": "actual,predicted\nbilling,billing\nrefund,billing\n",
    })  # fmt: skip
    trained = Run("rank-16", "b" * 40, {"tasks": tasks, "lora_rank": 16}, {
        "metrics/baseline.json": baseline, "metrics/train.json": {**train, "lora_rank": 16},
    })  # fmt: skip
    trained.files["metrics/train_loss.csv"] = csv
    monkeypatch.setattr(Run, "listdir", lambda self, folder: [
        p for p in self.files if p.startswith(folder + "/")
    ])  # fmt: skip

    text = report.render_report([evaluated, trained], tmp_path)
    assert "| lora_rank | 8 | 16 |" in text
    summary = md_rows(text.split("## Summary")[1].split("## Scores per task")[0])
    assert summary["workspace"]["lora_rank"] == "8" and summary["rank-16"]["lora_rank"] == "16"
    assert summary["rank-16"]["trainable params"] == "34,816"
    assert (
        summary["workspace"]["summary rougeL"] == "0.35"
        and summary["rank-16"]["summary rougeL"] == ""
    )
    assert "| workspace | 0.9 | 0.8 | +0.1000 | 0.75 | 0.7 | +0.0500 |" in text
    assert "| rank-16 | not evaluated | 0.8 |" in text
    assert "![workspace category](confusion-workspace-category.png)" in text
    assert "`rank-16`: not evaluated" in text
    assert "| workspace | no finding |" in text and "| rank-16 | no finding |" in text
    for png in ("loss_curves.png", "confusion-workspace-category.png"):
        assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG"


def predictions(answers: list[tuple[str, str]], task: str = "category") -> str:
    """A data/eval/predictions.jsonl text: one (gold, predicted) row per ticket."""
    rows = [
        {"id": f"T{i}", "task": task, "gold": gold, "predicted": predicted}
        for i, (gold, predicted) in enumerate(answers)
    ]
    return "".join(json.dumps(r) + "\n" for r in rows)


def test_each_run_is_paired_with_the_reference_ticket_by_ticket(tmp_path: Path) -> None:
    """A run that answers like the reference shows no difference beyond noise; one that gets
    every ticket right where the reference got a third wrong is beyond noise; a run that did
    not evaluate its own model is not paired; scores carry their bootstrap interval."""
    gold = ["billing", "refund", "shipping"] * 40
    wrong = [g if i % 3 else "refund" if g != "refund" else "billing" for i, g in enumerate(gold)]
    tasks = {"category": {"kind": "classification"}}
    shown = {"category": {"accuracy": 0.667, "macro_f1": 0.66}}  # dvc exp show drops lists
    recorded = {"category": {**shown["category"], "accuracy_ci95": [0.58, 0.75]}}

    def evaluated(name: str, answers: list[str]) -> Run:
        r = Run(name, name[0] * 40, {"tasks": tasks}, {"metrics/eval.json": shown})
        r.files.update({"dvc.lock": "{}", "metrics/eval.json": json.dumps(recorded),
                        "data/eval/predictions.jsonl": predictions(
                            list(zip(gold, answers, strict=True)))})  # fmt: skip
        return r

    reference, same, better = (evaluated(n, a) for n, a in (
        ("workspace", wrong), ("rank-16", list(wrong)), ("rank-128", gold)))  # fmt: skip
    trained = Run("rank-32", "c" * 40, {"tasks": tasks}, {})
    trained.files["dvc.lock"] = "{}"
    text = report.render_report([reference, same, better, trained], tmp_path, "Rank study")
    assert text.startswith("# Rank study\n")
    assert "| workspace | 0.667 [0.580, 0.750] |" in text
    paired = text.split("## Against `workspace`, ticket by ticket")[1].split("## Training")[0]
    rows = md_rows(paired, key=lambda cells: (cells[0], cells[2]))
    assert rows[("rank-16", "accuracy")]["change"] == "+0.0000"
    assert rows[("rank-16", "accuracy")][""] == "within noise"
    assert float(rows[("rank-128", "accuracy")]["change"]) == pytest.approx(1 / 3, abs=1e-3)
    assert rows[("rank-128", "macro_f1")][""] == "beyond noise"
    assert not any(run == "rank-32" for run, _ in rows)
    assert "- `rank-16`: no difference from `workspace` beyond noise on any score." in paired
    assert "- `rank-128`: differs beyond noise on category accuracy +0.333" in paired
    # the summary: the headline score per task and its paired change, marked beyond noise
    summary = md_rows(text.split("## Summary")[1].split("## Scores per task")[0])
    versus = "category vs `workspace`"
    assert summary["workspace"]["category macro_f1"] == "0.66"
    assert summary["workspace"][versus] == "" and summary["rank-32"][versus] == ""
    assert summary["rank-16"][versus] == "+0.000 [+0.000, +0.000]"
    assert (
        summary["rank-128"][versus].startswith("+0.") and summary["rank-128"][versus][-2:] == " *"
    )
    assert summary["rank-32"]["category macro_f1"] == summary["rank-32"]["trainable params"] == ""


# ------------------------------------------------------------------ study commands (fast)


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
        ["dvc", "exp", "run", "--queue", "-n", f"rank-{r}", "-S", f"lora_rank={r}",
         "-S", "max_samples=40", "-S", "prepare.max_tickets=200"]
        for r in (8, 16)
    ]  # fmt: skip
    out = run(
        [sys.executable, "-m", "triage.study", "rank", "--values", "8", "16", "--dry",
         "-j", "2", "-S", "max_samples=40"],
        REPO,
    ).stdout  # fmt: skip
    assert "dvc exp run --queue -n rank-8 -S lora_rank=8 -S max_samples=40" in out
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


# ------------------------------------------------------------------ PR review (fast, no training)


def commit(ws: Path, message: str) -> None:
    run(["git", "add", "-A"], ws)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@e", "commit", "-qm", message], ws)


@pytest.fixture(scope="module")
def pr_workspace(make_workspace) -> Path:
    """A copy of the repository with two commits: main, then a branch that changed a param,
    a metric and the loss curve (committed files, as `cache: false` outputs are)."""
    ws = make_workspace("pr")
    curve = "step,loss,eval_loss,learning_rate,grad_norm\n"
    (ws / "metrics" / "train_loss.csv").write_text(
        curve + "".join(f"{s},{3 - 0.2 * s},,0.0002,1.0\n" for s in range(1, 11))
    )
    commit(ws, "loss curve")
    run(["git", "checkout", "-qb", "branch"], ws)
    set_params(ws / "params.yaml", {"lora_rank": 128})
    baseline = json.loads((ws / "metrics" / "baseline.json").read_text())
    baseline["tfidf_all_tickets"]["category"]["accuracy"] = 0.5
    (ws / "metrics" / "baseline.json").write_text(json.dumps(baseline, indent=2))
    (ws / "metrics" / "train_loss.csv").write_text(
        curve + "".join(f"{s},{3 - 0.25 * s},,0.0002,1.0\n" for s in range(1, 11))
    )
    # the branch's model answers every priority right and every category as before
    predictions = ws / "data" / "eval" / "predictions.jsonl"
    rows = [json.loads(line) for line in predictions.read_text().splitlines()]
    for row in rows:
        if row["task"] == "priority":
            row["predicted"] = row["gold"]
    predictions.write_text("".join(json.dumps(row) + "\n" for row in rows))
    commit(ws, "rank 128")
    return ws


def test_pr_report_has_params_metrics_and_changed_plots(pr_workspace: Path) -> None:
    ws = pr_workspace
    show = ["git", "show", "main:params.yaml"]
    rank = yaml.safe_load(run(show, ws).stdout)["lora_rank"]
    show[-1] = "main:metrics/baseline.json"
    accuracy = json.loads(run(show, ws).stdout)["tfidf_all_tickets"]["category"]["accuracy"]
    if shutil.which("make"):
        run(["make", "pr-report", "BASE=main"], ws)
    else:
        run([sys.executable, "-m", "triage.report", "--pr", "main"], ws)
    text = (ws / "reports" / "pr.md").read_text()
    assert text.startswith(report.PR_MARKER)
    params = text.split("### Params")[1].split("###")[0]
    assert re.search(rf"\| params.yaml\s*\| lora_rank\s*\| {rank}\s*\| 128\s*\|", params)
    metrics = text.split("### Metrics")[1].split("###")[0]
    row = (
        rf"\| metrics/baseline.json\s*\| tfidf_all_tickets.category.accuracy\s*\| {accuracy}"
        rf"\s*\| 0.5\s*\| -0.\d+"
    )
    assert re.search(row, metrics)
    noise = text.split("### Beyond noise?")[1].split("###")[0]
    table = [[c.strip() for c in line.strip("|").split("|")] for line in noise.splitlines()]
    rows = {tuple(cells[:2]): cells for cells in table}
    category = rows[("category", "accuracy")]  # the same answers on both sides
    assert category[5] == "+0.0000" and category[7] == "within noise"
    priority = rows[("priority", "accuracy")]  # every answer right on the branch
    assert float(priority[5]) > 0 and priority[7] == "beyond noise"
    # lora_rank changed without `dvc repro`: the stage that reads it (configure, which writes
    # it into the training config) is stale, so the committed metrics are not this branch's
    stale = text.split("### Params")[0]
    assert "**Stale:**" in stale and "`configure`" in stale
    plots = text.split("### Plots")[1]
    assert "#### Loss curve" in plots
    assert re.search(r"\| loss \| 10 pts, 2.8 → 1 .*\| 10 pts, 2.75 → 0.5 ", plots)


def test_pr_report_needs_no_training_stack(pr_workspace: Path, tmp_path) -> None:
    """CI installs DVC, numpy, rouge-score and PyYAML: the PR path must import nothing else."""
    args = ["--pr", "main", "--out", str(tmp_path / "pr.md")]
    blocked = ("pandas", "matplotlib", "sklearn", "torch", "transformers", "llamafactory")
    code = (
        "import sys\n"
        "class Blocked:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        f"        if name.partition('.')[0] in {blocked!r}: raise ImportError(name)\n"
        "sys.meta_path.insert(0, Blocked())\n"
        f"from triage import report; sys.exit(report.main({args!r}))"
    )
    run([sys.executable, "-c", code], pr_workspace, env={"PYTHONPATH": str(REPO)})
    text = (tmp_path / "pr.md").read_text()
    assert "### Metrics" in text and "beyond noise" in text  # the paired bootstrap ran


def test_stale_means_changed_inputs_not_missing_outputs(tmp_path: Path, monkeypatch) -> None:
    """A CI checkout has no DVC cache: absent outputs are not stale, a changed param is."""
    monkeypatch.chdir(tmp_path)
    run(["git", "init", "-q"], tmp_path)
    dvc_cli = [sys.executable, "-m", "dvc"]
    run([*dvc_cli, "init", "-q"], tmp_path)
    (tmp_path / "params.yaml").write_text("a: 1\n")
    (tmp_path / "dvc.yaml").write_text(
        "stages:\n  s:\n    cmd: echo hi > out.txt\n    params: [a]\n    outs: [out.txt]\n"
    )
    run([*dvc_cli, "repro", "-q"], tmp_path)
    (tmp_path / "out.txt").unlink()  # as in a fresh clone: the output is in nobody's cache
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    assert report.stale_stages() == []
    (tmp_path / "params.yaml").write_text("a: 2\n")
    assert report.stale_stages() == ["s"]


def test_pr_report_without_changes_says_so(pr_workspace: Path, tmp_path: Path) -> None:
    out = tmp_path / "pr.md"
    run([sys.executable, "-m", "triage.report", "--pr", "HEAD", "--out", str(out)], pr_workspace)
    text = out.read_text()
    assert "No params changed." in text and "No metrics changed." in text
    assert "No plot changed." in text


# ------------------------------------------------------------------ the tiny experiments (slow)


def md_rows(section: str, key=lambda cells: cells[0]) -> dict[Any, dict[str, str]]:
    """The first markdown table of a report section: {key(cells): {column: cell}}, the first
    column left out of the cells (key: the first cell unless told)."""
    lines = [line for line in section.split("\n## ")[0].splitlines() if line.startswith("|")]
    header, *rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    return {key(row): dict(zip(header[1:], row[1:], strict=True)) for row in rows[1:]}


@pytest.mark.slow
def test_exp_show_lists_both_experiments(
    tiny_workspace: Path, tiny_experiments: dict[str, Experiment]
) -> None:
    shown = json.loads(dvc(["exp", "show", "--json"], tiny_workspace).stdout)
    exps = {
        rev["name"]: rev["data"]
        for entry in shown
        for exp in entry.get("experiments") or []
        for rev in exp["revs"]
    }
    assert set(tiny_experiments) <= set(exps)
    for name, exp in tiny_experiments.items():
        assert exps[name]["rev"] == exp.rev
    rank, target = exps["rank-16"], exps["target-qv"]
    assert rank["params"]["params.yaml"]["data"]["lora_rank"] == 16
    assert target["params"]["params.yaml"]["data"]["lora_target"] == "q_proj,v_proj"
    for data in (rank, target):
        train = data["metrics"]["metrics/train.json"]["data"]
        assert train["trainable_parameters"] > 0 and train["train_runtime_s"] > 0
    assert rank["metrics"]["metrics/train.json"]["data"]["lora_alpha"] == 32  # 2 x rank
    # fewer target modules, fewer trainable parameters
    tp = {
        n: d["metrics"]["metrics/train.json"]["data"]["trainable_parameters"]
        for n, d in exps.items()
    }
    assert tp["target-qv"] < tp["rank-16"]


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


@pytest.mark.slow
def test_report_compares_the_experiments(
    tiny_workspace: Path, tiny_experiments: dict[str, Experiment], tmp_path: Path
) -> None:
    out = tmp_path / "report.md"
    run([sys.executable, "-m", "triage.report", "--out", str(out)], tiny_workspace)
    text = out.read_text()
    for name, exp in tiny_experiments.items():
        assert f"`{name}` ({exp.rev[:7]})" in text
    params = md_rows(text.split("## Params that differ")[1])
    assert params["lora_rank"] == {"workspace": "8", "rank-16": "16", "target-qv": "8"}
    assert params["lora_target"] == {
        "workspace": "all",
        "rank-16": "all",
        "target-qv": "q_proj,v_proj",
    }
    training = md_rows(text.split("## Training\n")[1])
    for name in ("workspace", *tiny_experiments):
        assert int(training[name]["trainable params"].replace(",", "")) > 0
        assert float(training[name]["train time (s)"]) > 0
    assert training["rank-16"]["rank"] == "16" and training["rank-16"]["alpha"] == "32"
    # the experiments ran up to merge: their scores are not claimed
    scores = text.split("## Scores per task")[1].split("## Training")[0]
    assert re.search(r"\| rank-16 \| not (evaluated|produced by this run) \|", scores)
    assert "### category (classification)" in scores and "### summary (generation)" in scores
    assert (tmp_path / "loss_curves.png").read_bytes()[:4] == b"\x89PNG"
    diagnosis = text.split("## Training diagnosis")[1]
    for name in ("workspace", *tiny_experiments):
        assert f"| {name} |" in diagnosis
    # one experiment only
    run(
        [sys.executable, "-m", "triage.report", "--exp", "rank-16", "--out", str(out)],
        tiny_workspace,
    )
    assert "`rank-16`" in out.read_text() and "`target-qv`" not in out.read_text()


@pytest.mark.slow
def test_report_shows_no_figures_an_experiment_did_not_produce(
    tiny_workspace: Path, tiny_experiments: dict[str, Experiment], tmp_path: Path
) -> None:
    """An experiment that stops after configure carries its parent's training figures and
    scores in its metrics files: the report shows none of them under its name."""
    exp = exp_run(tiny_workspace, "lora_rank=32", name="configure-only", target="configure")
    try:
        assert exp.ran == {"configure"}
        out = tmp_path / "report.md"
        cmd = [sys.executable, "-m", "triage.report", "--exp", "configure-only", "rank-16"]
        run([*cmd, "--out", str(out)], tiny_workspace)
        text = out.read_text()
        params = md_rows(text.split("## Params that differ")[1])
        assert params["lora_rank"]["configure-only"] == "32"
        training = md_rows(text.split("## Training\n")[1])
        row = training["configure-only"]
        assert row["train time (s)"] == (
            "not produced by this run (train: it ran on another configs/train.yaml)"
        )
        assert row["rank"] == row["trainable params"] == row["eval loss"] == ""
        assert float(training["rank-16"]["train time (s)"]) > 0  # stopped after merge: trained
        scores = text.split("## Scores per task")[1].split("## Training")[0]
        for name in ("configure-only", "rank-16"):  # neither evaluated its own model
            assert re.search(rf"\| {name} \| not (evaluated|produced by this run) \|", scores)
        diagnosis = text.split("## Training diagnosis")[1]
        assert "| configure-only |" not in diagnosis and "| rank-16 |" in diagnosis
    finally:
        dvc(["exp", "remove", "configure-only"], tiny_workspace)


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
