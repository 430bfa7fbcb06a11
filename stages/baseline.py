"""Stage baseline: what a user would try before fine-tuning an LLM, on exactly the same split.

Each classification task gets TF-IDF word n-grams + logistic regression (scikit-learn),
fitted on training ticket texts and scored on the test split, twice: on every training
ticket (`tfidf_all_tickets`), and on exactly the tickets the LoRA model trains on, the
first `max_samples` records of the training split (`tfidf_lora_tickets`), so that the
model is compared like for like. `majority` always answers the most frequent training
label. Each generation task gets an extractive answer taken from the ticket itself (its
first line or first sentence), scored with ROUGE-1/2/L. Scores and their bootstrap
intervals come from triage/scoring.py, as the evaluate stage's do. Each TF-IDF row's answer
to every test ticket goes to `data/baseline/predictions.jsonl` (committed, like the evaluate
stage's), so that the compare stage can pair the two on the same tickets.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pandas as pd

from triage import scoring
from triage.files import run_main, write_json, write_text
from triage.params import PipelineError, load_params
from triage.prepared import check_tasks, read_labels, read_split

METRICS = Path("metrics/baseline.json")
PREDICTIONS = Path("data/baseline/predictions.jsonl")
SUBJECT_LABEL = re.compile(r"^\s*subject\s*:\s*", re.IGNORECASE)  # "Subject: " of the template
SENTENCE_END = re.compile(r"(?<=[.!?])\s")


def task_rows(records: list[dict[str, Any]]) -> pd.DataFrame:
    """(id, task, input, output) per task a record answers, whatever the record layout."""
    rows = [
        {"id": r["id"], "task": name, "input": r["input"], "output": r["answers"][name]}
        for r in records
        for name in r["tasks"]
    ]
    return pd.DataFrame(rows, columns=["id", "task", "input", "output"])


def first_line(text: str) -> str:
    """The first non-empty line, without a leading "Subject:" label: the ticket's subject."""
    line = next((line for line in text.splitlines() if line.strip()), "")
    return SUBJECT_LABEL.sub("", line).strip()


def first_sentence(text: str) -> str:
    """The first sentence of the whole text (line breaks read as spaces): a lead-1 summary."""
    flat = SUBJECT_LABEL.sub("", " ".join(text.split()))
    return SENTENCE_END.split(flat, maxsplit=1)[0]


EXTRACTORS = {"first_line": first_line, "first_sentence": first_sentence}


def tfidf(train: pd.DataFrame, test: pd.DataFrame, params: dict[str, Any]) -> list[str]:
    """TF-IDF + logistic regression, fitted on train: its answers to the test tickets."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
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
            f"baseline: cannot fit on {train['id'].nunique()} training tickets: {e} "
            "(params.yaml baseline, max_samples)"
        ) from e
    return model.predict(test["input"]).tolist()


def majority(train: pd.DataFrame, test: pd.DataFrame) -> dict[str, Any]:
    """The most frequent training label for every test ticket."""
    label = train["output"].value_counts().index[0]
    return scoring.classification(test["output"].tolist(), [label] * len(test))


def extractive(test: pd.DataFrame, source: str) -> list[str]:
    """An extractive summary of each test ticket, taken from its text."""
    return [EXTRACTORS[source](t) for t in test["input"]]


def main() -> None:
    params = load_params()
    config, tasks = params["baseline"], params["tasks"]
    if config.get("summary_source") not in EXTRACTORS:
        raise PipelineError(
            f"params.yaml baseline.summary_source: unknown value {config.get('summary_source')!r} "
            f"(expected {' or '.join(EXTRACTORS)})"
        )
    labels = read_labels()  # the classification tasks
    train_records = read_split("train")
    train, test = task_rows(train_records), task_rows(read_split("test"))
    # Params changed since the prepare run (by hand; DVC would have re-run it).
    check_tasks(tasks, set(train["task"]) & set(test["task"]), labels)
    # LlamaFactory trains on the first max_samples records of the training file
    lora_ids = {r["id"] for r in train_records[: params.get("max_samples") or None]}
    lora_train = train[train["id"].isin(lora_ids)]

    rows: dict[str, dict[str, Any]] = {"tfidf_all_tickets": {}, "tfidf_lora_tickets": {}}
    rows["majority"] = {}
    predictions = []
    for name, task in tasks.items():
        train_task, test_task = train[train["task"] == name], test[test["task"] == name]
        gold = test_task["output"].tolist()
        if task["kind"] == "classification":
            answers = {
                "tfidf_all_tickets": tfidf(train_task, test_task, config),
                "tfidf_lora_tickets": tfidf(
                    lora_train[lora_train["task"] == name], test_task, config
                ),
            }
            for row, predicted in answers.items():
                rows[row][name] = scoring.classification(gold, predicted)
            rows["majority"][name] = majority(train_task, test_task)
        else:  # extractive: needs no training, the same for both TF-IDF rows
            summaries = extractive(test_task, config["summary_source"])
            answers = dict.fromkeys(("tfidf_all_tickets", "tfidf_lora_tickets"), summaries)
            rows["tfidf_all_tickets"][name] = rows["tfidf_lora_tickets"][name] = scoring.rouge(
                gold, summaries
            )
        for row, predicted in answers.items():
            predictions += [
                {"id": i, "task": name, "model": row, "gold": g, "predicted": p}
                for i, g, p in zip(test_task["id"], gold, predicted, strict=True)
            ]
    for row, scores in rows.items():
        for name, s in scores.items():
            shown = ("macro_f1", "accuracy") if "macro_f1" in s else ("rougeL", "rouge1")
            print(f"baseline {row} {name}: " + ", ".join(f"{k} {s[k]:.3f}" for k in shown))
    rows["tfidf_all_tickets"]["train_tickets"] = int(train["id"].nunique())
    rows["tfidf_lora_tickets"]["train_tickets"] = len(lora_ids)
    lines = [json.dumps(row, ensure_ascii=False) + "\n" for row in predictions]
    write_text(PREDICTIONS, "".join(lines))
    write_json(METRICS, {**rows, "test_tickets": int(test["id"].nunique())})


if __name__ == "__main__":
    run_main(main)
