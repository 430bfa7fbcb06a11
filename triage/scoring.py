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


def round4(x: float | None) -> float | None:
    """A score as the metrics files hold it: 4 decimals (None stays None)."""
    return None if x is None else round(float(x), 4)


def bootstrap_interval(
    statistic: Callable[[np.ndarray], float], n: int, samples: int = BOOTSTRAP_SAMPLES
) -> list[float | None]:
    """95 % percentile interval of statistic(indices) over resamples of n items."""
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    values = [statistic(rng.integers(0, n, n)) for _ in range(samples)]
    low, high = np.percentile(values, [2.5, 97.5])
    return [round4(low), round4(high)]


def macro_f1_of_counts(confusion: np.ndarray, classes: np.ndarray | None = None) -> float:
    """Macro-F1 from a confusion matrix (rows gold, columns predicted), averaged over
    `classes`, or over the classes that occur in gold or predictions (sklearn's default)."""
    tp = np.diag(confusion).astype(float)
    gold, predicted = confusion.sum(axis=1), confusion.sum(axis=0)
    if classes is None:
        classes = np.flatnonzero((gold + predicted) > 0)
    denominator = gold + predicted
    f1 = np.divide(2 * tp, denominator, out=np.zeros_like(tp), where=denominator > 0)
    return float(f1[classes].mean()) if len(classes) else 0.0


def classification(
    gold: Sequence[str], predicted: Sequence[str], labels: Sequence[str] | None = None
) -> dict[str, Any]:
    """Accuracy, macro-F1 and weighted-F1, with bootstrap intervals of the first two.

    `labels` restricts the F1 averages to these classes (the evaluate stage passes the
    label set, so "(invalid)" is no class of its own); None means sklearn's default. The
    resamples count a confusion matrix each (numpy), equal to sklearn's F1 and much faster.
    """
    from sklearn.metrics import accuracy_score, f1_score

    names = sorted(set(gold) | set(predicted) | set(labels or []))
    index = {name: i for i, name in enumerate(names)}
    g = np.array([index[x] for x in gold])
    p = np.array([index[x] for x in predicted])
    k = len(names)
    classes = None if labels is None else np.array([index[x] for x in labels])

    def macro(idx: np.ndarray) -> float:
        counts = np.bincount(g[idx] * k + p[idx], minlength=k * k).reshape(k, k)
        return macro_f1_of_counts(counts, classes)

    def accuracy(idx: np.ndarray) -> float:
        return float((g[idx] == p[idx]).mean())

    return {
        "accuracy": round4(accuracy_score(gold, predicted)),
        "accuracy_ci95": bootstrap_interval(accuracy, len(g)),
        "macro_f1": round4(
            f1_score(gold, predicted, labels=labels, average="macro", zero_division=0)
        ),
        "macro_f1_ci95": bootstrap_interval(macro, len(g)),
        "weighted_f1": round4(
            f1_score(gold, predicted, labels=labels, average="weighted", zero_division=0)
        ),
    }


def rouge(gold: Sequence[str], predicted: Sequence[str]) -> dict[str, Any]:
    """ROUGE-1/2/L F-measure means, and the bootstrap interval of ROUGE-L."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    scores = [scorer.score(g, p) for g, p in zip(gold, predicted, strict=True)]
    per_item = {
        k: np.array([s[k].fmeasure for s in scores]) for k in ("rouge1", "rouge2", "rougeL")
    }
    metrics: dict[str, Any] = {k: round4(v.mean()) for k, v in per_item.items()}
    metrics["rougeL_ci95"] = bootstrap_interval(
        lambda idx: per_item["rougeL"][idx].mean(), len(scores)
    )
    return metrics


def paired_deltas(
    gold: Sequence[str], base: Sequence[str], head: Sequence[str], kind: str
) -> dict[str, dict[str, Any]]:
    """Base and head scores on the same tickets, and head minus base with a 95 % paired-
    bootstrap interval: each resample draws tickets and scores both models on the same draw,
    so how hard the drawn tickets are cancels out, and the interval is much narrower than the
    two scores' own intervals side by side. A change whose interval excludes 0 is beyond
    noise. `kind`: classification (accuracy, macro-F1) or generation (ROUGE-L)."""
    metrics: dict[str, Callable[[np.ndarray, np.ndarray], float]]
    if kind == "classification":
        names = sorted(set(gold) | set(base) | set(head))
        index = {name: i for i, name in enumerate(names)}
        k = len(names)
        g = np.array([index[x] for x in gold])
        b, h = (np.array([index[x] for x in answers]) for answers in (base, head))

        def macro(p: np.ndarray, idx: np.ndarray) -> float:
            counts = np.bincount(g[idx] * k + p[idx], minlength=k * k).reshape(k, k)
            return macro_f1_of_counts(counts)

        metrics = {
            "accuracy": lambda p, idx: float((p[idx] == g[idx]).mean()),
            "macro_f1": macro,
        }
    else:
        from rouge_score import rouge_scorer

        scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
        b, h = (
            np.array([scorer.score(x, y)["rougeL"].fmeasure for x, y in zip(gold, a, strict=True)])
            for a in (base, head)
        )
        metrics = {"rougeL": lambda p, idx: float(p[idx].mean())}
    everything = np.arange(len(gold))
    result = {}
    for name, metric in metrics.items():

        def delta(idx: np.ndarray, metric=metric) -> float:
            return metric(h, idx) - metric(b, idx)

        result[name] = {
            "base": round4(metric(b, everything)),
            "head": round4(metric(h, everything)),
            "delta": round4(delta(everything)),
            "delta_ci95": bootstrap_interval(delta, len(gold)),
        }
    return result
