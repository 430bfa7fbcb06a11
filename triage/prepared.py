"""The prepared data as the later stages read it: the splits and label sets in data/prepared/.

The prepare stage writes them (triage/dataset.py). The baseline and evaluate stages read them
here, and check them against params.yaml `tasks` the same way: params changed by hand since
the prepare run (DVC would have rerun it) stop a stage with one line, instead of scoring
tasks that are not the ones asked for.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from triage.params import PipelineError

PREPARED = Path("data/prepared")


def read_split(name: str) -> list[dict[str, Any]]:
    """One prepared split's records (`train`, `validation` or `test`), in file order."""
    path = PREPARED / f"{name}.jsonl"
    if not path.is_file():
        raise PipelineError(f"{path}: not found (run the prepare stage first)")
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def read_labels() -> dict[str, list[str]]:
    """The label set of each classification task (labels.json)."""
    labels_path = PREPARED / "labels.json"
    if not labels_path.is_file():
        raise PipelineError(f"{labels_path}: not found (run the prepare stage first)")
    return json.loads(labels_path.read_text(encoding="utf-8"))


def check_tasks(tasks: dict[str, Any], present: set[str], labels: dict[str, list[str]]) -> None:
    """Every task of params.yaml has records (`present`: the tasks the records read answer)
    and a label set exactly if it is a classification task: else prepare must run again."""
    for name, task in tasks.items():
        stale = (task["kind"] == "classification") != (name in labels)
        if name not in present or stale:
            raise PipelineError(f"{PREPARED}: task {name} is not as in params.yaml: run prepare")


def read_inputs(tasks: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, list[str]]]:
    """The test records and the label sets, checked against the tasks of params.yaml."""
    records = read_split("test")
    labels = read_labels()
    present = {name for r in records for name in r["tasks"]}
    check_tasks(tasks, present, labels)
    unknown = present - set(tasks)
    if unknown:
        raise PipelineError(f"{PREPARED}: task {sorted(unknown)[0]} is not in params.yaml tasks")
    return records, labels
