"""The comparison report (`make report`). Fast: which runs and which of their outputs count
(an experiment that stopped early carries its parent's metrics), rendering and pairing on
synthetic runs. Slow: the two shared experiments of `tiny_experiments` in `dvc exp show` and
the report on them, including an experiment that stopped after configure.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Experiment, dvc, exp_run, run
from tests.helpers import healthy_loss, training_log
from triage import report, runs
from triage.params import PipelineError
from triage.runs import Run

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
    found = runs.collect_runs(SHOWN)
    assert [(r.name, r.rev) for r in found] == [("workspace", None), ("x", "c" * 40)]
    assert found[1].metrics == {"metrics/train.json": {"train_loss": 1.0}}
    assert runs.differing_params(found) == {"a": [1, 2], "t.k": [None, [1]]}
    assert [r.name for r in runs.collect_runs(SHOWN, ["ccc"])] == ["workspace", "x"]
    with pytest.raises(PipelineError, match=r"no finished experiment 'q'.*known: x"):
        runs.collect_runs(SHOWN, ["q"])


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

    assert runs.foreign_stages(run_with(stages("c1", "a1", "m1"))) == {}
    # stopped after configure: train ran on the parent's config, and so on downstream
    after_configure = run_with(stages("c2", "a1", "m1"))
    assert runs.foreign_stages(after_configure) == {
        "train": "it ran on another configs/train.yaml",
        "merge": "train did not run in it",
        "evaluate": "merge did not run in it",
    }
    assert set(runs.own_outputs(after_configure)) == {
        "models/adapter", "metrics/train.json", "models/merged", "metrics/eval.json"
    }  # fmt: skip
    assert after_configure.metrics == {}
    assert runs.evaluation_state(after_configure, {}) == "not evaluated"
    # stopped after merge: the evaluation scored the parent's merged model
    after_merge = run_with(stages("c1", "a1", "m0"))
    assert runs.foreign_stages(after_merge) == {"evaluate": "it ran on another models/merged"}
    assert runs.evaluation_state(after_merge).startswith("not produced by this run (evaluate")
    # a params change the stage did not see
    other_params = run_with(stages("c1", "a1", "m1"))
    other_params.params = {**params, "evaluate": {"concurrency": 64}}
    assert runs.foreign_stages(other_params) == {
        "evaluate": "it ran with another evaluate.concurrency"
    }


def test_report_renders_scores_curves_and_confusion(tmp_path: Path, monkeypatch) -> None:
    """The whole report from synthetic runs: one evaluated, one trained only."""
    same_tickets = {"category": {"accuracy": 0.8, "macro_f1": 0.7}, "summary": {"rougeL": 0.3}}
    baseline = {"tfidf_lora_tickets": same_tickets, "tfidf_all_tickets": {"category": {}}}
    scores = {"category": {"accuracy": 0.9, "macro_f1": 0.75}, "summary": {"rougeL": 0.35}}
    tasks = {"category": {"kind": "classification"}, "summary": {"kind": "generation"}}
    train = {"trainable_parameters": 34816, "train_runtime_s": 12.5, "lora_rank": 8}
    csv = training_log(healthy_loss()).to_csv(index=False)
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
