"""Scores shared by the baseline and the evaluate stage, with bootstrap intervals.

Both stages score with these functions, so a model and its baselines are measured the same
way: accuracy and F1 (scikit-learn; macro-F1 over the labels that occur in gold or
predictions, sklearn's default), ROUGE-1/2/L F-measure (rouge-score, stemmed), and a 95 %
percentile-bootstrap interval over test tickets for each headline score. Each task has one
answer per test ticket, so resampling answers resamples tickets.

The evaluate stage's served answers are scored here too (`score`): a reply answering several
tasks is split into its lines (`per_task`), an answer outside the label set counts as
`(invalid)` and a failed request as `(error)`; `overall` gives latency and throughput, and
`write_confusion` and `prediction_rows` write the confusion plots and per-ticket predictions.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from triage.files import write_text
from triage.records import parse_answer

if TYPE_CHECKING:  # the client (openai) is no import of the baseline stage or the PR report
    from triage.client import Outcome

BOOTSTRAP_SAMPLES = 1000
BOOTSTRAP_SEED = 0  # fixed: the same predictions always get the same interval
INVALID = "(invalid)"  # an answer outside the label set
ERROR = "(error)"  # no answer: the request failed or timed out


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


# ----------------------------------------------------------------------------- served answers


def per_task(
    records: list[dict[str, Any]], outcomes: list[Outcome]
) -> tuple[list[dict[str, Any]], list[Outcome]]:
    """One (id, task, gold) row and one outcome per task of every record, in record order.

    A reply that answers several tasks is split into its lines. If it was cut at max_tokens
    (finish_reason "length"), the last task it reached is the one cut, and the tasks after
    it have no answer; the tasks before it finished.
    """
    rows, split = [], []
    for rec, outcome in zip(records, outcomes, strict=True):
        names = rec["tasks"]
        answers = parse_answer(outcome.content, names)
        reached = [i for i, n in enumerate(names) if answers[n] is not None]
        cut_at = reached[-1] if reached else 0  # the first task the cut reply did not finish
        for i, name in enumerate(names):
            finish = outcome.finish_reason
            if finish == "length" and i < cut_at:
                finish = "stop"
            rows.append({"id": rec["id"], "task": name, "output": rec["answers"][name]})
            split.append(dataclasses.replace(outcome, content=answers[name], finish_reason=finish))
    return rows, split


def shown_label(outcome: Outcome, label_set: set[str]) -> str:
    """What the confusion matrix shows as predicted: the label, (invalid) or (error)."""
    if outcome.error is not None:
        return ERROR
    answer = (outcome.content or "").strip()
    return answer if answer in label_set and outcome.finish_reason != "length" else INVALID


def score_classification(gold: list[str], shown: list[str], labels: list[str]) -> dict[str, Any]:
    """Scores as the baseline stage computes them (`classification`); an invalid answer or an
    error counts as wrong (it lowers its gold class's recall) and in invalid_rate.

    Macro-F1 averages over the labels that occur in gold or in the (valid) predictions,
    sklearn's default, so a model without invalid answers is scored exactly like the
    baseline; the (invalid)/(error) markers are not classes of their own.
    """
    from sklearn.metrics import classification_report

    label_set = set(labels)
    present = [x for x in labels if x in set(gold) | set(shown)]
    present += sorted(set(gold) - label_set)  # gold outside the label set: stale labels.json
    report = classification_report(gold, shown, labels=present, output_dict=True, zero_division=0)
    for key in ("accuracy", "micro avg"):  # whichever sklearn adds: accuracy is reported above
        report.pop(key, None)
    return {
        "n": len(gold),
        **classification(gold, shown, labels=present),
        "invalid_rate": round4(sum(s not in label_set for s in shown) / len(shown)),
        "errors": sum(s == ERROR for s in shown),
        "classification_report": {
            label: {k: round4(v) for k, v in row.items()} for label, row in report.items()
        },
    }


def score_generation(gold: list[str], outcomes: list[Outcome]) -> dict[str, Any]:
    """ROUGE-1/2/L as stages/baseline.py computes them; a failed request scores 0."""
    answers = [(o.content or "").strip() for o in outcomes]
    metrics: dict[str, Any] = {"n": len(gold), **rouge(gold, answers)}
    metrics["error_rate"] = round4(sum(o.error is not None for o in outcomes) / len(outcomes))
    metrics["errors"] = sum(o.error is not None for o in outcomes)
    # answers cut at evaluate.max_tokens: if this is high, raise max_tokens
    metrics["truncated_rate"] = round4(
        sum(o.finish_reason == "length" for o in outcomes) / len(outcomes)
    )
    return metrics


def percentile(values: list[float], q: float) -> float | None:
    import numpy as np

    return round4(float(np.percentile(values, q))) if values else None


def score(
    records: list[dict[str, Any]],
    outcomes: list[Outcome],
    tasks: dict[str, Any],
    labels: dict[str, list[str]],
) -> tuple[dict[str, Any], dict[str, list[dict[str, str]]]]:
    """Metrics per task, and the confusion rows (actual, predicted) per classification task."""
    metrics: dict[str, Any] = {}
    confusion: dict[str, list[dict[str, str]]] = {}
    for name, task in tasks.items():
        idx = [i for i, r in enumerate(records) if r["task"] == name]
        gold = [str(records[i]["output"]) for i in idx]
        if task["kind"] == "classification":
            shown = [shown_label(outcomes[i], set(labels[name])) for i in idx]
            metrics[name] = score_classification(gold, shown, labels[name])
            confusion[name] = [
                {"actual": a, "predicted": p} for a, p in zip(gold, shown, strict=True)
            ]
        else:
            metrics[name] = score_generation(gold, [outcomes[i] for i in idx])
    metrics["test_tickets"] = len({r["id"] for r in records})
    return metrics, confusion


def overall(outcomes: list[Outcome], wall_s: float, startup_s: float | None) -> dict[str, Any]:
    ok = [o.latency_s for o in outcomes if o.error is None and o.latency_s is not None]
    tokens = sum(o.output_tokens for o in outcomes)
    errors = sum(o.error is not None for o in outcomes)
    return {
        "requests": len(outcomes),
        "errors": errors,
        "error_rate": round4(errors / len(outcomes)),
        "retried_requests": sum(o.attempts > 1 for o in outcomes),
        # latency of the successful requests (queueing at the server and retries included)
        "latency_p50_s": percentile(ok, 50),
        "latency_p95_s": percentile(ok, 95),
        "latency_p99_s": percentile(ok, 99),
        "requests_per_second": round4(len(outcomes) / wall_s),
        "output_tokens": tokens,
        "output_tokens_per_second": round4(tokens / wall_s),
        "wall_time_s": round4(wall_s),  # sending every request, server start-up excluded
        "server_startup_s": round4(startup_s),  # null when evaluate.base_url is used
    }


def write_confusion(folder: Path, task: str, rows: list[dict[str, str]], labels: list[str]) -> None:
    """<task>.csv for DVC's confusion template and <task>.png (scikit-learn's display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay

    lines = ["actual,predicted"] + [f"{r['actual']},{r['predicted']}" for r in rows]
    write_text(folder / f"{task}.csv", "\n".join(lines) + "\n")
    actual = [r["actual"] for r in rows]
    predicted = [r["predicted"] for r in rows]
    order = labels + [x for x in (INVALID, ERROR) if x in predicted]
    order += sorted(set(actual) - set(order))
    size = max(5.0, 0.55 * len(order) + 2.5)
    fig, ax = plt.subplots(figsize=(size, size))
    ConfusionMatrixDisplay.from_predictions(
        actual, predicted, labels=order, ax=ax, xticks_rotation="vertical", colorbar=False
    )
    ax.set_title(f"{task} (test split, n={len(rows)})")
    fig.tight_layout()
    fig.savefig(folder / f"{task}.png", dpi=100, metadata={"Software": None})
    plt.close(fig)


def prediction_rows(records: list[dict[str, Any]], outcomes: list[Outcome]) -> str:
    lines = []
    for record, o in zip(records, outcomes, strict=True):
        row = {
            "id": record["id"],
            "task": record["task"],
            "gold": record["output"],
            "predicted": o.content.strip() if o.content is not None else None,
            "latency_s": round4(o.latency_s),
            "error": o.error,
            "finish_reason": o.finish_reason,
            "output_tokens": o.output_tokens,
        }
        lines.append(json.dumps(row, ensure_ascii=False))
    return "\n".join(lines) + "\n"


def split_reports(metrics: dict[str, Any]) -> dict[str, Any]:
    """Take scikit-learn's per-class report out of each classification task's metrics: it
    goes to a file of its own, so that `dvc metrics diff` shows the headlines only."""
    return {
        name: m.pop("classification_report")
        for name, m in metrics.items()
        if isinstance(m, dict) and "classification_report" in m
    }


def summary_lines(metrics: dict[str, Any], tasks: dict[str, Any]) -> list[str]:
    """The evaluation in a few console lines: each task's headlines, then speed and errors."""
    lines = []
    for name, task in tasks.items():
        keys = ("accuracy", "macro_f1", "invalid_rate") if task["kind"] == "classification" else (
            "rouge1", "rouge2", "rougeL", "truncated_rate"
        )  # fmt: skip
        lines.append(f"evaluate {name}: " + ", ".join(f"{k} {metrics[name][k]:.3f}" for k in keys))
    o = metrics["overall"]
    lines.append(
        f"evaluate: {o['requests']} requests in {o['wall_time_s']:.1f} s "
        f"({o['requests_per_second']:.2f} req/s, {o['output_tokens_per_second']:.1f} output tok/s, "
        f"p50 {o['latency_p50_s']} s, p95 {o['latency_p95_s']} s), {o['errors']} errors"
    )
    return lines
