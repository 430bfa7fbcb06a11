"""Two runs' answers paired ticket by ticket: is a change in a headline score beyond noise?

Both runs' committed `data/eval/predictions.jsonl` are matched on (ticket, task) with the same
gold answer, and `triage.scoring.paired_deltas` resamples those tickets (paired bootstrap).
"""

from __future__ import annotations

import json
from typing import Any

from triage.runs import PREDICTIONS, Run


def read_predictions(text: str | None) -> dict[tuple[str, str], tuple[str, str]]:
    """(ticket id, task) -> (gold, predicted) from a predictions.jsonl text."""
    rows = [json.loads(line) for line in (text or "").splitlines() if line.strip()]
    return {(r["id"], r["task"]): (r["gold"], r["predicted"] or "") for r in rows}


def paired_scores(
    before: dict[tuple[str, str], tuple[str, str]],
    after: dict[tuple[str, str], tuple[str, str]],
    kinds: dict[str, str],
) -> list[tuple[str, str, int, dict[str, Any]]]:
    """(task, score, tickets, paired_deltas entry) for each headline score, on the test tickets
    both prediction sets answered with the same gold answer."""
    from triage.scoring import paired_deltas  # numpy and rouge-score: the CI job installs both

    rows = []
    for task in dict.fromkeys(t for _, t in after):
        keys = [k for k in after if k[1] == task and k in before and before[k][0] == after[k][0]]
        if not keys:
            continue
        gold = [after[k][0] for k in keys]
        answers = [before[k][1] for k in keys], [after[k][1] for k in keys]
        for metric, d in paired_deltas(gold, *answers, kinds.get(task, "classification")).items():
            rows.append((task, metric, len(keys), d))
    return rows


def verdict(d: dict[str, Any]) -> str:
    low, high = d["delta_ci95"]
    return "beyond noise" if low > 0 or high < 0 else "within noise"


Pairing = list[tuple[str, str, int, dict[str, Any]]]  # paired_scores' rows


def pair_with_reference(
    reference: Run, runs: list[Run], kinds: dict[str, str], states: dict[str, str | None]
) -> dict[str, Pairing]:
    """{run: paired_scores against the reference} for each evaluated run with predictions
    (none where the reference has none): computed once, read by the summary and the
    ticket-by-ticket section."""
    before = {} if states[reference.name] else read_predictions(reference.read(PREDICTIONS))
    pairings = {}
    for run in runs:
        after = {} if states[run.name] else read_predictions(run.read(PREDICTIONS))
        if before and after:
            pairings[run.name] = paired_scores(before, after, kinds)
    return pairings
