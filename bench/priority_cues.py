"""Does the model read the priority cue? Priority answers on test tickets that state their impact.

The embedded generator (`data/make_tickets.py`) writes, in about half of the tickets, one
sentence that states how bad it is ("No rush on this.", "Please treat this as an emergency."),
one list per priority level. A bag of words picks those sentences up; this counts, on the
committed test predictions, how often the gold priority and the model's answer follow the
cue, and the model's priority answers by its own category answer, so the README can say
where the priority gap comes from. Embedded data only.

    python -m bench.priority_cues [data/eval/predictions.jsonl] -> bench/results/priority_cues.json
"""

from __future__ import annotations

import csv
import importlib.util
import json
import sys
from pathlib import Path

from triage.files import write_json
from triage.machine import ROOT


def generator():
    """The embedded data's generator module (data/ is not a package)."""
    spec = importlib.util.spec_from_file_location("make_tickets", ROOT / "data" / "make_tickets.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(predictions: Path) -> dict:
    gen = generator()
    # A cue's fixed opening (some end in a slot such as "{company}"), by its level's label.
    cues = {cue.split("{")[0]: gen.LEVELS[level] for level, cs in enumerate(gen.CUES) for cue in cs}
    with (ROOT / "data" / "raw" / "tickets.csv").open(encoding="utf-8") as f:
        bodies = {row["id"]: row["body"] for row in csv.DictReader(f)}
    counts = dict.fromkeys(("tickets", "with_cue", "gold_follows_cue", "answer_follows_cue"), 0)
    counts |= {"correct_with_cue": 0, "correct_without_cue": 0}
    rows = [json.loads(line) for line in predictions.read_text(encoding="utf-8").splitlines()]
    # the model's priority answers by its own category answer: a shortcut shows as one column
    category = {r["id"]: r["predicted"] for r in rows if r["task"] == "category"}
    by_category: dict[str, dict[str, int]] = {}
    for row in rows:
        if row["task"] != "priority":
            continue
        if row["id"] in category:
            answers = by_category.setdefault(str(category[row["id"]]), {})
            answers[str(row["predicted"])] = answers.get(str(row["predicted"]), 0) + 1
        counts["tickets"] += 1
        stated = [label for cue, label in cues.items() if cue in bodies[row["id"]]]
        right = row["predicted"] == row["gold"]
        if not stated:
            counts["correct_without_cue"] += right
            continue
        counts["with_cue"] += 1
        counts["correct_with_cue"] += right
        counts["gold_follows_cue"] += row["gold"] == stated[0]
        counts["answer_follows_cue"] += row["predicted"] == stated[0]
    return {
        "predictions": str(predictions.relative_to(ROOT)),
        **counts,
        "priority_answers_by_category_answer": by_category,
    }


if __name__ == "__main__":
    path = Path(sys.argv[1] if len(sys.argv) > 1 else "data/eval/predictions.jsonl").resolve()
    result = main(path)
    write_json(ROOT / "bench" / "results" / "priority_cues.json", result)
    print(json.dumps(result, indent=2))
