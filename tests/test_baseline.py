"""Tests of the baseline stage: prepare then baseline, run as DVC runs them, on toy tickets
whose category shows in their words (so a TF-IDF model must learn it)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from stages.baseline import first_line, first_sentence
from tests.helpers import (
    PARAMS,
    lay_out,
    make_params,
    make_tickets,
    prepare_in,
    run_stage,
)
from triage import scoring

CLASSIFICATION_KEYS = {"accuracy", "accuracy_ci95", "macro_f1", "macro_f1_ci95", "weighted_f1"}
GENERATION_KEYS = {"rouge1", "rouge2", "rougeL", "rougeL_ci95"}
ROWS = ("tfidf_all_tickets", "tfidf_lora_tickets", "majority")


def baseline_params(**baseline: object) -> dict:
    """Test params: min_df 1, as toy data has few repeated n-grams; the LoRA model would
    train on the first 30 training tickets."""
    return make_params(
        baseline=PARAMS["baseline"] | {"min_df": 1, "summary_source": "first_line"} | baseline,
        max_samples=30,
    )


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One prepare + baseline run on 120 balanced toy tickets."""
    folder = tmp_path_factory.mktemp("baseline")
    tickets = make_tickets({"billing": 40, "shipping": 40, "account": 40})
    assert prepare_in(folder, tickets, baseline_params()).returncode == 0
    result = run_stage(folder, "stages.baseline")
    assert result.returncode == 0, result.stderr
    assert "baseline tfidf_all_tickets category: macro_f1" in result.stdout
    return folder


@pytest.fixture(scope="module")
def metrics(workspace: Path) -> dict:
    return json.loads((workspace / "metrics" / "baseline.json").read_text())


def test_metrics_have_every_key_in_range(metrics: dict) -> None:
    assert set(metrics) == {*ROWS, "test_tickets"}
    assert metrics["test_tickets"] == 24  # 20 % of 120
    assert metrics["tfidf_all_tickets"]["train_tickets"] == 84  # 70 % of 120
    assert metrics["tfidf_lora_tickets"]["train_tickets"] == 30  # max_samples
    for row in ROWS:
        tasks = (
            ("category", "priority") if row == "majority" else ("category", "priority", "summary")
        )
        assert set(metrics[row]) - {"train_tickets"} == set(tasks)
        for task in tasks:
            scores = metrics[row][task]
            assert set(scores) == (GENERATION_KEYS if task == "summary" else CLASSIFICATION_KEYS)
            for key, value in scores.items():
                if key.endswith("_ci95"):
                    low, high = value
                    assert 0 <= low <= scores[key.removesuffix("_ci95")] <= high <= 1
                else:
                    assert 0 <= value <= 1 and value == round(value, 4)


def test_learnable_task_scores_clearly_above_chance(metrics: dict) -> None:
    tfidf = metrics["tfidf_all_tickets"]
    assert tfidf["category"]["accuracy"] >= 0.9  # chance is 1/3
    assert tfidf["category"]["macro_f1"] >= 0.9
    assert tfidf["summary"]["rouge1"] >= 0.5  # the subject is most of the gold summary


def test_majority_answers_one_label(metrics: dict) -> None:
    majority = metrics["majority"]["category"]
    assert majority["accuracy"] == round(1 / 3, 4)  # balanced test split: one class in three
    assert majority["macro_f1"] == round((2 / 4) / 3, 4)  # F1 1/2 on one class of three


def test_predictions_are_the_scored_answers(workspace: Path, metrics: dict) -> None:
    """data/baseline/predictions.jsonl holds each TF-IDF row's answer to every test ticket and
    task, and scoring those answers gives the metrics the stage wrote."""
    lines = (workspace / "data" / "baseline" / "predictions.jsonl").read_text().splitlines()
    rows = pd.DataFrame([json.loads(line) for line in lines])
    assert len(rows) == 24 * 3 * 2  # test tickets x tasks x TF-IDF rows
    assert not rows.duplicated(["id", "task", "model"]).any()
    for (model, task), group in rows.groupby(["model", "task"]):
        scores = metrics[model][task]
        if task == "summary":
            assert scoring.rouge(group["gold"].tolist(), group["predicted"].tolist()) == scores
        else:
            right = (group["gold"] == group["predicted"]).mean()
            assert round(right, 4) == scores["accuracy"]


def test_extractive_summaries() -> None:
    text = "Subject: Refund not received\n\nHi, I paid twice. Please help!\nThanks"
    assert first_line(text) == "Refund not received"
    assert first_line("\n  \nNo label here\nsecond") == "No label here"
    assert first_sentence(text) == "Refund not received Hi, I paid twice."
    assert first_sentence("One line only") == "One line only"


def test_unknown_summary_source_is_an_error(tmp_path: Path) -> None:
    result = run_stage(
        lay_out(tmp_path, None, baseline_params(summary_source="subject")), "stages.baseline"
    )
    assert result.returncode == 1
    assert "baseline.summary_source" in result.stderr and "'subject'" in result.stderr
    assert "first_line or first_sentence" in result.stderr
    assert not (tmp_path / "metrics" / "baseline.json").exists()


def test_missing_prepared_data_is_an_error(tmp_path: Path) -> None:
    result = run_stage(lay_out(tmp_path, None, baseline_params()), "stages.baseline")
    assert result.returncode == 1
    assert (
        result.stderr.strip()
        == "error: data/prepared/labels.json: not found (run the prepare stage first)"
    )
    assert not (tmp_path / "metrics" / "baseline.json").exists()
