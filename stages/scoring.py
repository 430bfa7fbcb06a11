"""Scores shared by the baseline and the evaluate stage, with bootstrap intervals.

Both stages score with these functions, so a model and its baselines are measured the same
way: accuracy and F1 (scikit-learn; macro-F1 over the labels that occur in gold or
predictions, sklearn's default), ROUGE-1/2/L F-measure (rouge-score, stemmed), and a 95 %
percentile-bootstrap interval over test tickets for each headline score. Each task has one
answer per test ticket, so resampling answers resamples tickets.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

BOOTSTRAP_SAMPLES = 1000
BOOTSTRAP_SEED = 0  # fixed: the same predictions always get the same interval


def r4(x: float | None) -> float | None:
    return None if x is None else round(float(x), 4)


def bootstrap_interval(
    statistic: Callable[[np.ndarray], float], n: int, samples: int = BOOTSTRAP_SAMPLES
) -> list[float | None]:
    """95 % percentile interval of statistic(indices) over resamples of n items."""
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    values = [statistic(rng.integers(0, n, n)) for _ in range(samples)]
    low, high = np.percentile(values, [2.5, 97.5])
    return [r4(low), r4(high)]


def classification(
    gold: Sequence[str], predicted: Sequence[str], labels: Sequence[str] | None = None
) -> dict[str, Any]:
    """Accuracy, macro-F1 and weighted-F1, with bootstrap intervals of the first two.

    `labels` restricts the F1 averages to these classes (the evaluate stage passes the
    label set, so "(invalid)" is no class of its own); None means sklearn's default.
    """
    from sklearn.metrics import accuracy_score, f1_score

    g, p = np.asarray(gold, dtype=object), np.asarray(predicted, dtype=object)

    def macro(idx: np.ndarray) -> float:
        return f1_score(g[idx], p[idx], labels=labels, average="macro", zero_division=0)

    def accuracy(idx: np.ndarray) -> float:
        return float((g[idx] == p[idx]).mean())

    everything = np.arange(len(g))
    return {
        "accuracy": r4(accuracy_score(g, p)),
        "accuracy_ci95": bootstrap_interval(accuracy, len(g)),
        "macro_f1": r4(macro(everything)),
        "macro_f1_ci95": bootstrap_interval(macro, len(g)),
        "weighted_f1": r4(f1_score(g, p, labels=labels, average="weighted", zero_division=0)),
    }


def rouge(gold: Sequence[str], predicted: Sequence[str]) -> dict[str, Any]:
    """ROUGE-1/2/L F-measure means, and the bootstrap interval of ROUGE-L."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    scores = [scorer.score(g, p) for g, p in zip(gold, predicted, strict=True)]
    per_item = {
        k: np.array([s[k].fmeasure for s in scores]) for k in ("rouge1", "rouge2", "rougeL")
    }
    metrics: dict[str, Any] = {k: r4(v.mean()) for k, v in per_item.items()}
    metrics["rougeL_ci95"] = bootstrap_interval(
        lambda idx: per_item["rougeL"][idx].mean(), len(scores)
    )
    return metrics
