"""Stage baseline: what a user would try before fine-tuning an LLM, on exactly the same split.

Each classification task gets TF-IDF word n-grams + logistic regression (scikit-learn),
fitted on the train split's ticket texts and scored on the test split (accuracy, macro-F1,
weighted-F1). Each generation task gets an extractive answer taken from the ticket itself
(its first line or first sentence), scored with ROUGE-1/2/L. The evaluate stage scores the
fine-tuned model the same way, so `metrics/baseline.json` is the bar it has to clear.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pandas as pd

from stages.common import PipelineError, load_params, run_main, write_json

PREPARED = Path("data/prepared")
METRICS = Path("metrics/baseline.json")
SUBJECT_LABEL = re.compile(r"^\s*subject\s*:\s*", re.IGNORECASE)  # "Subject: " of the template
SENTENCE_END = re.compile(r"(?<=[.!?])\s")


def read_split(name: str) -> pd.DataFrame:
    """One prepared split as a table of records (id, task, input, output)."""
    path = PREPARED / f"{name}.jsonl"
    if not path.is_file():
        raise PipelineError(f"{path}: not found (run the prepare stage first)")
    with path.open(encoding="utf-8") as f:
        records = [json.loads(line) for line in f if line.strip()]
    return pd.DataFrame(records, columns=["id", "task", "input", "output"])


def first_line(text: str) -> str:
    """The first non-empty line, without a leading "Subject:" label: the ticket's subject."""
    line = next((line for line in text.splitlines() if line.strip()), "")
    return SUBJECT_LABEL.sub("", line).strip()


def first_sentence(text: str) -> str:
    """The first sentence of the whole text (line breaks read as spaces): a lead-1 summary."""
    flat = SUBJECT_LABEL.sub("", " ".join(text.split()))
    return SENTENCE_END.split(flat, maxsplit=1)[0]


EXTRACTORS = {"first_line": first_line, "first_sentence": first_sentence}


def classify(train: pd.DataFrame, test: pd.DataFrame, params: dict[str, Any]) -> dict[str, float]:
    """TF-IDF + logistic regression, fitted on train, scored on test."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score
    from sklearn.pipeline import Pipeline

    vectorizer = TfidfVectorizer(
        ngram_range=(1, params["ngram_max"]), min_df=params["min_df"], sublinear_tf=True
    )
    classifier = LogisticRegression(C=params["C"], max_iter=params["max_iter"])
    model = Pipeline([("tfidf", vectorizer), ("logreg", classifier)])
    try:
        model.fit(train["input"], train["output"])
    except ValueError as e:  # e.g. one class only, or min_df pruned every term
        raise PipelineError(
            f"baseline: cannot fit on the train split: {e} (params.yaml baseline)"
        ) from e
    gold, predicted = test["output"], model.predict(test["input"])
    # Macro-F1 over the labels that occur in gold or predictions (sklearn's default).
    return {
        "accuracy": accuracy_score(gold, predicted),
        "macro_f1": f1_score(gold, predicted, average="macro", zero_division=0),
        "weighted_f1": f1_score(gold, predicted, average="weighted", zero_division=0),
    }


def summarise(test: pd.DataFrame, source: str) -> dict[str, float]:
    """An extractive summary from the ticket text, scored against the gold summary."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    extract = EXTRACTORS[source]
    scores = [
        scorer.score(gold, extract(text))
        for text, gold in zip(test["input"], test["output"], strict=True)
    ]
    return {
        name: sum(s[name].fmeasure for s in scores) / len(scores)
        for name in ("rouge1", "rouge2", "rougeL")
    }


def main() -> None:
    params = load_params()
    config, tasks = params["baseline"], params["tasks"]
    if config.get("summary_source") not in EXTRACTORS:
        raise PipelineError(
            f"params.yaml baseline.summary_source: unknown value {config.get('summary_source')!r} "
            f"(expected {' or '.join(EXTRACTORS)})"
        )
    labels_path = PREPARED / "labels.json"
    if not labels_path.is_file():
        raise PipelineError(f"{labels_path}: not found (run the prepare stage first)")
    labels = json.loads(labels_path.read_text(encoding="utf-8"))  # the classification tasks
    train, test = read_split("train"), read_split("test")

    metrics: dict[str, Any] = {}
    for name, task in tasks.items():
        train_task, test_task = train[train["task"] == name], test[test["task"] == name]
        # Params changed since the prepare run (by hand; DVC would have re-run it).
        stale = (task["kind"] == "classification") != (name in labels)
        if train_task.empty or test_task.empty or stale:
            raise PipelineError(f"{PREPARED}: task {name} is not as in params.yaml: run prepare")
        if task["kind"] == "classification":
            scores = classify(train_task, test_task, config)
        else:
            scores = summarise(test_task, config["summary_source"])
        metrics[name] = {k: round(float(v), 4) for k, v in scores.items()}
        print(f"baseline {name}: " + ", ".join(f"{k} {v:.3f}" for k, v in metrics[name].items()))
    metrics["test_tickets"] = int(test["id"].nunique())
    write_json(METRICS, metrics)


if __name__ == "__main__":
    run_main(main)
