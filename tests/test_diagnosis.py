"""The tuning guide's troubleshooting table on synthetic training logs: each pathology it names
(loss flat, oscillating, validation loss rising, exploding gradients) and a healthy run.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd

from tests.helpers import STEPS, healthy_loss, training_log
from triage import runs
from triage.diagnosis import THRESHOLDS_MD, diagnose
from triage.runs import Run


def causes(curve: pd.DataFrame, params: dict | None = None) -> list[str]:
    return [f.cause for f in diagnose(curve, params)]


def test_healthy_run_has_no_finding() -> None:
    assert diagnose(training_log(healthy_loss())) == []


def test_flat_loss_means_learning_rate_too_small() -> None:
    rng = np.random.default_rng(2)
    curve = training_log(2.3 + rng.normal(0, 0.01, len(STEPS)), lr=1e-6)
    (finding,) = diagnose(curve, {"learning_rate": 1e-6})
    assert finding.cause == "learning rate too small (学习率太小)"
    assert finding.symptom.startswith("loss not decreasing")
    assert "raise learning_rate (now 1e-06)" in finding.change
    assert re.search(r"training loss 2\.3\d* at the start, 2\.3\d* at the end", finding.evidence)


def test_oscillating_loss_means_learning_rate_too_large() -> None:
    curve = training_log(1.0 + 0.4 * np.sin(1.7 * STEPS) + 0.5 * np.exp(-STEPS / 15), lr=5e-4)
    (finding,) = diagnose(curve, {"learning_rate": 5e-4})  # not also "not decreasing"
    assert finding.cause == "learning rate too large (学习率太大)"
    assert "lower learning_rate (now 0.0005)" in finding.change
    assert "of its median" in finding.evidence and "threshold 5%" in finding.evidence


def test_oscillation_under_length_grouped_batches_says_the_sampler_may_cause_it() -> None:
    curve = training_log(1.0 + 0.4 * np.sin(1.7 * STEPS) + 0.5 * np.exp(-STEPS / 15), lr=1e-3)
    (grouped,) = diagnose(
        curve, {"learning_rate": 1e-3, "train_sampling_strategy": "group_by_length"}
    )
    (shuffled,) = diagnose(curve, {"learning_rate": 1e-3, "train_sampling_strategy": "random"})
    assert grouped.cause == shuffled.cause == "learning rate too large (学习率太大)"
    assert "train_sampling_strategy: random" in grouped.change
    assert "grouped by length" not in shuffled.change


def test_rising_eval_loss_while_train_loss_falls_means_overfitting() -> None:
    evals = [1.6, 1.3, 1.2, 1.25, 1.35, 1.5]  # lowest at step 30
    (finding,) = diagnose(training_log(healthy_loss(), eval_loss=evals), {"lora_dropout": 0.1})
    assert finding.cause == "overfitting (过拟合)"
    assert "raise lora_dropout (now 0.1)" in finding.change and "num_train_epochs" in finding.change
    assert "lowest 1.2 (step 30) to 1.5 (step 60), +25.0%" in finding.evidence


def test_huge_gradient_norm_means_exploding_gradients() -> None:
    norms = np.full(len(STEPS), 0.9)
    norms[29] = 150.0
    (finding,) = diagnose(training_log(healthy_loss(), grad_norm=norms))
    assert finding.cause == "exploding gradients (梯度爆炸)"
    assert "peaked at 150 (step 30), median 0.9" in finding.evidence
    assert "lower learning_rate" in finding.change and "check the data" in finding.change


def test_non_finite_loss_is_an_exploding_gradient() -> None:
    loss = healthy_loss()
    loss[40:] = np.inf
    assert "exploding gradients (梯度爆炸)" in causes(training_log(loss))


def test_a_few_points_or_a_converged_loss_are_not_judged() -> None:
    short = training_log(healthy_loss()).head(3)
    assert diagnose(short) == []
    converged = training_log(0.05 + 0.001 * np.cos(STEPS))  # flat, but at the floor
    assert "learning rate too small (学习率太小)" not in causes(converged)


def test_grad_norm_comes_from_the_trainer_state_when_the_curve_lacks_it() -> None:
    """LlamaFactory's trainer_log.jsonl (metrics/train_loss.csv) logs no grad_norm."""
    r = Run("x", "c" * 40, {}, {})
    r.files[runs.LOSS_CURVE] = "step,loss,eval_loss\n1,2.0,\n2,1.5,1.4\n"
    history = [{"step": 1, "loss": 2.0, "grad_norm": 0.5}, {"step": 2, "grad_norm": 99.0}]
    r.files[runs.TRAINER_STATE] = json.dumps({"log_history": [*history, {"step": 2}]})
    curve = runs.read_curve(r)
    assert curve["grad_norm"].tolist() == [0.5, 99.0]
    assert curve["eval_loss"].iloc[1] == 1.4


def test_the_thresholds_are_documented_in_the_report() -> None:
    for value in ("5%", "0.1", "10 x the run's median", "fewer than 4"):
        assert value in THRESHOLDS_MD
