"""Scores and bootstrap intervals: the counted macro-F1 equals scikit-learn's, and the
interval says how far a score on this many test tickets can move."""

from __future__ import annotations

import random

import numpy as np
import pytest
from sklearn.metrics import f1_score

from triage import scoring

LABELS = ["low", "medium", "high", "urgent"]


def test_counted_macro_f1_equals_sklearn() -> None:
    rng = random.Random(0)
    for n in (5, 40, 300):
        gold = [rng.choice(LABELS) for _ in range(n)]
        predicted = [rng.choice(LABELS[:3]) for _ in range(n)]  # one class never predicted
        names = sorted(set(gold) | set(predicted))
        index = {x: i for i, x in enumerate(names)}
        counts = np.zeros((len(names), len(names)), dtype=int)
        for a, b in zip(gold, predicted, strict=True):
            counts[index[a], index[b]] += 1
        expected = f1_score(gold, predicted, average="macro", zero_division=0)
        assert scoring.macro_f1_of_counts(counts) == pytest.approx(expected)
        subset = np.array([index[x] for x in ["low", "high"] if x in index])
        expected = f1_score(gold, predicted, labels=["low", "high"], average="macro")
        assert scoring.macro_f1_of_counts(counts, subset) == pytest.approx(expected)


def test_intervals_contain_the_score_and_narrow_with_more_tickets() -> None:
    rng = random.Random(1)

    def scores(n: int) -> dict:
        gold = [rng.choice(LABELS) for _ in range(n)]
        predicted = [g if rng.random() < 0.7 else rng.choice(LABELS) for g in gold]
        return scoring.classification(gold, predicted)

    small, large = scores(60), scores(2000)
    for s in (small, large):
        for key in ("accuracy", "macro_f1"):
            low, high = s[f"{key}_ci95"]
            assert low <= s[key] <= high
    width = {name: s["macro_f1_ci95"][1] - s["macro_f1_ci95"][0] for name, s in
             (("small", small), ("large", large))}  # fmt: skip
    assert width["large"] < width["small"] / 3  # ~ 1 / sqrt(n): 60 -> 2000 tickets is 5.8x
    assert scoring.classification(["a", "b"], ["a", "b"]) == scoring.classification(
        ["a", "b"], ["a", "b"]
    )  # seeded: the same predictions always get the same interval


def test_rouge_interval() -> None:
    gold = ["refund for order 12", "parcel lost in transit", "password reset fails"]
    perfect = scoring.rouge(gold, gold)
    assert perfect["rougeL"] == 1.0 and perfect["rougeL_ci95"] == [1.0, 1.0]
    mixed = scoring.rouge(gold, ["refund for order 12", "nothing alike", "password fails"])
    low, high = mixed["rougeL_ci95"]
    assert 0 <= low < mixed["rougeL"] < high <= 1
