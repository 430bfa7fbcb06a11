"""Stage prepare: raw tickets -> validated, split, LlamaFactory-ready instruction records.

Reads `prepare.input` (CSV, JSONL or Parquet; which column is what comes from params.yaml,
so another export needs a params change only), checks every row, splits the *tickets* into
train / validation / test (stratified on `prepare.stratify`, else on the first
classification task; seeded; whole groups of `prepare.group_column` if set) and writes
alpaca records to `data/prepared/` (one per ticket answering every task, or one per
(ticket, task): `prepare.records`, see triage/records.py),
with the `dataset_info.json` LlamaFactory reads. The reading, checking, splitting and
record-writing machinery is triage/dataset.py. Splitting tickets rather than records keeps
every task of a ticket on one side, so no test ticket was seen in training under another
instruction.

A problem the user can fix stops the stage with one line naming the file, the row (and id)
and the column, before anything is written: the outputs of the last good run stay as they
were, and a first run leaves nothing behind.
"""

from __future__ import annotations

from pathlib import Path

from triage.dataset import (
    SPLITS,
    build_tickets,
    check_class_sizes,
    check_leakage,
    check_params,
    data_metrics,
    dataset_info,
    groups_per_split,
    label_records,
    label_sets,
    make_records,
    near_duplicates,
    read_input,
    split_tickets,
    targets_seen_in_train,
    to_jsonl,
)
from triage.files import atomic_dir, run_main, write_json, write_text
from triage.params import load_params

OUT = Path("data/prepared")
METRICS = Path("metrics/data.json")


def main() -> None:
    params = load_params()
    prep, tasks = check_params(params)
    path = Path(prep["input"])

    frame = read_input(path)
    tickets, answers, dropped = build_tickets(frame, path, prep, tasks)
    stratify_on = prep.get("stratify") or next(
        (n for n, t in tasks.items() if t["kind"] == "classification"), None
    )
    strata = None if stratify_on is None else answers[stratify_on]
    if strata is not None:
        column = tasks[stratify_on]["column"]
        check_class_sizes(strata, tickets, path, column, prep["min_per_class"])

    balance = answers[prep["balance"]] if prep.get("balance") else None
    val_size = params.get("val_size", 0)
    groups = tickets["group"] if prep.get("group_column") else None
    split = split_tickets(strata, len(tickets), prep, val_size, params["seed"], balance, groups)
    left_out = len(tickets) - len(split)  # by max_tickets, or the rest of the validation groups
    tickets, answers = tickets.loc[split.index].assign(split=split), answers.loc[split.index]
    check_leakage(tickets, path, prep["text_columns"])
    labels = label_sets(tickets, answers, tasks, path)

    layout = prep.get("records", "ticket")
    records = make_records(tickets, answers, tasks, labels, params["default_system"], layout)
    train_labels = label_records(tickets, answers, tasks, labels, params["default_system"], layout)

    # Everything is validated: only now replace the outputs (the data first, then metrics).
    with atomic_dir(OUT) as tmp:
        for s in SPLITS:
            write_text(tmp / f"{s}.jsonl", to_jsonl(records[s]))
        write_text(tmp / "train_labels.jsonl", to_jsonl(train_labels))
        write_json(tmp / "dataset_info.json", dataset_info())
        write_json(tmp / "labels.json", labels)
    metrics = data_metrics(frame, tickets, answers, records, labels)
    metrics["records"]["train_labels"] = len(train_labels)
    metrics["duplicates_dropped"] = dropped
    metrics["tickets"]["left_out"] = left_out
    metrics["near_duplicates"] = near_duplicates(tickets)
    metrics["targets_seen_in_train"] = targets_seen_in_train(tickets, answers, tasks)
    if groups is not None:
        metrics["groups"] = groups_per_split(tickets)
    write_json(METRICS, metrics)
    print(
        f"prepare: {len(tickets)} tickets -> "
        + " / ".join(f"{s} {metrics['tickets'][s]}" for s in SPLITS)
        + f"; {metrics['records']['total']} records ({len(tasks)} tasks); "
        f"{metrics['truncated_texts']} texts truncated to {prep['max_chars']} chars"
    )


if __name__ == "__main__":
    run_main(main)
