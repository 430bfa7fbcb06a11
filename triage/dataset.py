"""The prepare stage's machinery: raw tickets -> checked tickets -> split -> records.

stages/prepare.py reads top to bottom; the work is here: reading CSV, JSONL or Parquet with
every cell as text (`read_input`), checking every row and turning it into a ticket
(`build_tickets`: one line naming file, row, id and column for each problem; duplicates),
splitting tickets, not records (`split_tickets`: stratified and seeded, whole groups with
`prepare.group_column`, every prefix of the training split stratified or label-balanced,
for LlamaFactory's `max_samples`),
refusing leakage across splits and counting near-duplicates, fixing each classification
task's label set (`label_sets`), and the records themselves (`make_records`, in the format
of triage/records.py). `check_params` checks the `prepare` and `tasks` sections up front.
"""

from __future__ import annotations

import codecs
import hashlib
import io
import json
import re
from pathlib import Path
from typing import Any

import pandas as pd

from triage.params import PipelineError, Prepare, Split, Task, validated
from triage.records import records_for_ticket

SPLITS = ("train", "validation", "test")
NOT_WORD = re.compile(r"[\W\d_]+")  # near-duplicate key: letters only, digits and punctuation out
# How LlamaFactory maps our record fields onto an alpaca example (the extra "id" and "task"
# fields are ignored by LlamaFactory and read by the evaluate stage).
ALPACA_COLUMNS = {
    "prompt": "instruction",
    "query": "input",
    "response": "output",
    "system": "system",
}


# ----------------------------------------------------------------------------- params


def check_params(params: dict[str, Any]) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Check the `prepare` and `tasks` sections up front (triage/params.py's schema, then what
    spans sections), so a typo fails in a second.

    Returns the prepare section (with `text_template` filled in) and the tasks.
    """
    prep = validated(Prepare, params.get("prepare"), "prepare")
    tasks = params.get("tasks")
    if not isinstance(tasks, dict) or not tasks:
        raise PipelineError("params.yaml tasks: expected a mapping of task name -> task")
    for name, task in tasks.items():
        validated(Task, task, f"tasks.{name}")
    for key in ("stratify", "balance"):  # params that name a classification task
        name = getattr(prep, key)
        if name is not None and (tasks.get(name) or {}).get("kind") != "classification":
            raise PipelineError(
                f"params.yaml prepare.{key}: {name!r} is not a classification task of tasks"
            )
    split = validated(Split, params, "")
    if prep.test_size + split.val_size >= 1:
        raise PipelineError("params.yaml prepare.test_size + val_size: nothing left to train on")
    return {**params["prepare"], "text_template": prep.text_template}, tasks


def stop_if(problems: list[str]) -> None:
    """Raise the first problem as one line, saying how many more there are."""
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise PipelineError(problems[0] + more)


# ----------------------------------------------------------------------------- reading


def as_text(value: Any) -> str:
    """A cell as a string: missing -> '', so every format reads like the CSV does."""
    if value is None or value is pd.NA or (isinstance(value, float) and value != value):
        return ""
    return value if isinstance(value, str) else str(value)


def decode_utf8(path: Path) -> str:
    """The file as text; a bad byte is reported by line, which is how an editor finds it."""
    data = path.read_bytes()
    if data.startswith(codecs.BOM_UTF8):  # spreadsheet exports often start with one
        data = data[len(codecs.BOM_UTF8) :]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise PipelineError(
            f"{path}: line {line}: not valid UTF-8 (byte 0x{data[e.start]:02x}); "
            "re-export the file as UTF-8"
        ) from e


def read_input(path: Path) -> pd.DataFrame:
    """Read the raw tickets by extension, every cell as a string (ids like 007 stay 007)."""
    if not path.is_file():
        raise PipelineError(f"{path}: input file not found (params.yaml prepare.input)")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        try:
            frame = pd.read_parquet(path)
        except Exception as e:  # pyarrow raises several types for a damaged file
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise PipelineError(f"{path}: not a readable Parquet file ({reason})") from e
    elif suffix == ".csv":
        try:
            frame = pd.read_csv(io.StringIO(decode_utf8(path)), dtype=str, keep_default_na=False)
        except (pd.errors.ParserError, pd.errors.EmptyDataError) as e:
            reason = str(e).strip().splitlines()[0]
            raise PipelineError(f"{path}: not a readable CSV file ({reason})") from e
    elif suffix == ".jsonl":
        rows = []
        # split("\n"), not splitlines(): JSON strings may hold U+2028 and friends raw.
        for number, line in enumerate(decode_utf8(path).split("\n"), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise PipelineError(f"{path}: line {number}: not valid JSON ({e.msg})") from e
            if not isinstance(row, dict):
                kind = type(row).__name__
                raise PipelineError(f"{path}: line {number}: expected a JSON object, got {kind}")
            rows.append(row)
        frame = pd.DataFrame(rows)
    else:
        raise PipelineError(
            f"{path}: unknown input format {suffix or '(no extension)'!r} "
            "(expected .csv, .jsonl or .parquet)"
        )
    frame.columns = [str(c) for c in frame.columns]
    return frame.map(as_text).reset_index(drop=True)


# ----------------------------------------------------------------------------- checking


def where(path: Path, row: int, ticket_id: str, columns: str | list[str]) -> str:
    """The place of a problem, as every message starts: file, data row (1-based), id, column."""
    columns = [columns] if isinstance(columns, str) else columns
    named = ", ".join(f"'{c}'" for c in columns)
    ident = f" (id {ticket_id})" if ticket_id else ""
    return f"{path}: row {row}{ident}, column{'s' if len(columns) > 1 else ''} {named}"


def build_tickets(
    frame: pd.DataFrame, path: Path, prep: dict[str, Any], tasks: dict[str, dict[str, Any]]
) -> tuple[pd.DataFrame, pd.DataFrame, int]:
    """Check every row and turn it into a ticket: (tickets, answers, duplicates dropped),
    tickets and answers aligned by index.

    tickets has row (1-based), id (`prepare.id_column`, or made from the text), group
    (`prepare.group_column`'s value, or None), text
    (rendered, truncated), key (whitespace- and case-normalised full text, to find the same
    ticket twice), near_key (letters only: the same ticket with other numbers or
    punctuation) and truncated; answers has one column per task. A second ticket with the
    id or text of an earlier one is an error, or with `prepare.duplicates: drop` left out.
    """
    if frame.empty:
        raise PipelineError(f"{path}: no tickets")
    id_column, text_columns = prep.get("id_column"), prep["text_columns"]
    group_column = prep.get("group_column")
    needed = {c: "prepare.text_columns" for c in text_columns}
    if id_column is not None:
        needed = {id_column: "prepare.id_column"} | needed
    if group_column is not None:
        needed |= {group_column: "prepare.group_column"}
    needed |= {task["column"]: f"tasks.{name}.column" for name, task in tasks.items()}
    missing = [c for c in needed if c not in frame.columns]
    stop_if(
        [
            f"{path}: column '{c}' not found (params.yaml {needed[c]}); "
            f"available columns: {', '.join(frame.columns)}"
            for c in missing
        ]
    )

    drop = prep.get("duplicates", "error") == "drop"
    problems: list[str] = []
    first_row_of: dict[str, int] = {}  # id -> row, and normalised text -> row
    tickets, answers, dropped = [], [], 0
    for row, record in enumerate(frame.to_dict("records"), start=1):
        parts = {c: record[c].strip() for c in text_columns}
        text = prep["text_template"].format_map(parts).strip()
        key = " ".join(text.split()).casefold()
        # no id column: an id from the text itself, the same however the export is sorted
        ticket_id = record[id_column].strip() if id_column else text_id(key)
        first = first_row_of.get(ticket_id) or first_row_of.get("\0" + key)
        if first is not None and drop:  # a second copy (same id or same text): keep the first
            dropped += 1
            continue
        if not ticket_id:
            problems.append(f"{where(path, row, '', id_column)}: empty id")
        elif ticket_id in first_row_of:
            column = f"column '{id_column}'" if id_column else "the ticket text (no id column)"
            problems.append(
                f"{path}: rows {first_row_of[ticket_id]} and {row}, {column}: "
                f"duplicate id {ticket_id} (prepare.duplicates: drop keeps the first)"
            )
        else:
            first_row_of[ticket_id] = row
        first_row_of.setdefault("\0" + key, row)
        if not any(parts.values()):
            problems.append(f"{where(path, row, ticket_id, text_columns)}: empty ticket text")
        group = record[group_column].strip() if group_column else None
        if group == "":
            problems.append(
                f"{where(path, row, ticket_id, group_column)}: empty group (prepare.group_column)"
            )
        answer = {}
        for name, task in tasks.items():
            value = record[task["column"]].strip()
            labels = task.get("labels")
            if not value:
                what = "label" if task["kind"] == "classification" else "target text"
                problems.append(
                    f"{where(path, row, ticket_id, task['column'])}: empty {what} for task {name}"
                )
            elif labels is not None and value not in map(str, labels):
                problems.append(
                    f"{where(path, row, ticket_id, task['column'])}: label {value!r} "
                    f"of task {name} is not one of {', '.join(map(str, labels))} "
                    f"(params.yaml tasks.{name}.labels)"
                )
            answer[name] = value
        tickets.append(
            {
                "row": row,
                "id": ticket_id,
                "group": group,
                "text": text[: prep["max_chars"]],
                "key": key,
                "near_key": NOT_WORD.sub(" ", key).strip(),
                "truncated": len(text) > prep["max_chars"],
            }
        )
        answers.append(answer)
    stop_if(problems)
    return pd.DataFrame(tickets), pd.DataFrame(answers, columns=list(tasks)), dropped


def text_id(key: str) -> str:
    """A ticket id made from its normalised text (prepare.id_column: null)."""
    return "T" + hashlib.sha256(key.encode()).hexdigest()[:12]


def check_class_sizes(
    labels: pd.Series, tickets: pd.DataFrame, path: Path, column: str, minimum: int
) -> None:
    """Every class of the stratifying task needs enough tickets to appear in every split."""
    counts = labels.value_counts()
    stop_if(
        [
            f"{path}: rows {', '.join(map(str, tickets.loc[labels == label, 'row']))}, "
            f"column '{column}': "
            f"class {label!r} of task {labels.name} has {count} ticket{'s' if count > 1 else ''}, "
            f"fewer than prepare.min_per_class = {minimum}"
            for label, count in sorted(counts[counts < minimum].items())
        ]
    )


# ----------------------------------------------------------------------------- splitting


def split_tickets(
    strata: pd.Series | None,
    n: int,
    prep: dict[str, Any],
    val_size: float,
    seed: int,
    balance: pd.Series | None = None,
    groups: pd.Series | None = None,
) -> pd.Series:
    """The split of each ticket kept (by index), in the order the records will be written.

    Stratified (if there is a classification task) and seeded; val_size is a fraction of
    all tickets, so it is rescaled for the second cut, from what the test cut left. Tickets
    left out by max_tickets are dropped. Within a split the order is a seeded shuffle, not the
    input's: LlamaFactory's `max_samples` keeps the *first* N records of a dataset, and that
    should be a sample of every class even if the export is sorted by category (the training
    split is in `stratified_order`, then in `balanced_order` of the `balance` labels).

    With `groups` (`prepare.group_column`) the test and validation cuts take whole groups
    (`group_cut`), so no group has tickets on two sides; the max_tickets sample does not.
    """
    from sklearn.model_selection import train_test_split  # imported here: errors above come fast

    def cut(index: pd.Index, size: float | int, what: str) -> tuple[pd.Index, pd.Index]:
        stratify = None if strata is None else strata.loc[index]
        if groups is not None and isinstance(size, float):
            return group_cut(index, size, stratify, groups.loc[index], seed, what)
        try:
            return train_test_split(index, test_size=size, stratify=stratify, random_state=seed)
        except ValueError as e:  # e.g. fewer test tickets than classes
            task = f" stratified on task {strata.name}" if strata is not None else ""
            raise PipelineError(f"cannot cut {what} from {len(index)} tickets{task}: {e}") from e

    index = pd.RangeIndex(n)
    max_tickets = prep.get("max_tickets")
    if max_tickets is not None and max_tickets < n:
        index, _ = cut(index, n - max_tickets, f"a sample of prepare.max_tickets = {max_tickets}")
    rest, test = cut(index, prep["test_size"], f"prepare.test_size = {prep['test_size']}")
    train, validation = rest, rest[:0]
    if val_size > 0 and groups is not None and prep.get("val_groups"):
        count = max(1, round(val_size * len(index)))
        train, validation = sampled_group_cut(rest, count, prep["val_groups"], strata, groups, seed)
    elif val_size > 0:
        train, validation = cut(rest, val_size / (1 - prep["test_size"]), f"val_size = {val_size}")
    if strata is not None:
        train = stratified_order(strata.loc[train], seed)
    if balance is not None:
        train = balanced_order(balance.loc[train], seed)
    members = zip(SPLITS, (train, validation, test), strict=True)
    return pd.concat([pd.Series(name, index=ids, dtype=str) for name, ids in members])


def group_cut(
    index: pd.Index,
    size: float,
    strata: pd.Series | None,
    groups: pd.Series,
    seed: int,
    what: str,
) -> tuple[pd.Index, pd.Index]:
    """(rest, cut) with whole groups in the cut, about `size` of the tickets, stratified.

    scikit-learn's StratifiedGroupKFold into round(1 / size) folds (shuffled, seeded); the
    first fold is the cut. Its share is 1 / round(1 / size), and a group too large for it
    makes it larger: a group split approximates the fraction, it cannot hit it.
    """
    import warnings

    import numpy as np
    from sklearn.model_selection import StratifiedGroupKFold

    folds = max(2, round(1 / size))
    if groups.nunique() < folds:
        raise PipelineError(
            f"cannot cut {what} by prepare.group_column from {len(index)} tickets: "
            f"{groups.nunique()} groups, at least {folds} needed"
        )
    labels = np.zeros(len(index)) if strata is None else strata.to_numpy()
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():  # a class with fewer groups than folds: still a split
        warnings.filterwarnings("ignore", message="The least populated class")
        rest, taken = next(splitter.split(np.zeros(len(index)), labels, groups.to_numpy()))
    return index[rest], index[taken]


def sampled_group_cut(
    index: pd.Index,
    count: int,
    n_groups: int,
    strata: pd.Series | None,
    groups: pd.Series,
    seed: int,
) -> tuple[pd.Index, pd.Index]:
    """(train, validation): `count` validation tickets drawn evenly from about `n_groups`
    whole groups held out of training (`prepare.val_groups`).

    A validation split of whole groups holds few of them (2 % of the embedded tickets is
    one template), so its loss speaks for one case; drawing a few tickets from each of several
    held-out groups makes it speak for several without growing the evaluation. The rest of
    those groups' tickets are neither trained on nor scored (counted in metrics/data.json).
    The groups come from StratifiedGroupKFold (as the test cut); within them the tickets are
    taken round-robin over the groups from a seeded shuffle, so every prefix is spread evenly.
    """
    groups = groups.loc[index]
    folds = max(2, round(groups.nunique() / n_groups))
    what = f"validation from prepare.val_groups = {n_groups} groups"
    stratify = None if strata is None else strata.loc[index]
    train, held = group_cut(index, 1 / folds, stratify, groups, seed, what)
    shuffled = groups.loc[held].sample(frac=1, random_state=seed)
    turn = shuffled.groupby(shuffled, sort=False).cumcount()
    return train, turn.sort_values(kind="stable").index[:count]


def stratified_order(strata: pd.Series, seed: int) -> pd.Index:
    """The tickets in an order whose every prefix is a stratified sample.

    LlamaFactory's `max_samples` trains on the first N records: with this order those hold
    each class in its share of the split (a rare class is not left out by chance). Each
    ticket gets the position (k + u) / n_class for the k-th ticket of its class in a seeded
    shuffle, u uniform in [0, 1); sorting by position interleaves the classes evenly.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    shuffled = strata.sample(frac=1, random_state=seed)
    rank = shuffled.groupby(shuffled, sort=False).cumcount()
    size = shuffled.map(shuffled.value_counts())
    position = (rank + rng.random(len(shuffled))) / size
    return position.sort_values(kind="stable").index


def balanced_order(labels: pd.Series, seed: int) -> pd.Index:
    """The tickets (in the order given) reordered so that every prefix holds each label
    equally often, as long as the label has tickets left (`prepare.balance`).

    With `max_samples` this trains on a label-balanced sample: a rare label (an urgent
    ticket) is seen as often as a common one, so the model does not learn to answer the
    common label whenever it is unsure, which is what costs macro-F1. The k-th ticket of
    each label gets position k + u, u uniform in [0, 1); within a label the given order
    (stratified on the first classification task) is kept.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    rank = labels.groupby(labels, sort=False).cumcount()
    return (rank + rng.random(len(labels))).sort_values(kind="stable").index


def check_leakage(tickets: pd.DataFrame, path: Path, text_columns: list[str]) -> None:
    """The same ticket text on two sides of the split would score memorisation as skill."""
    problems = []
    for _, group in tickets.sort_values("row").groupby("key", sort=False):
        crossing = group[group["split"] != group["split"].iloc[0]]
        if len(crossing):
            a, b = group.iloc[0], crossing.iloc[0]
            problems.append(
                f"{path}: rows {a.row} (id {a.id}, {a.split}) and {b.row} (id {b.id}, {b.split}), "
                f"columns {', '.join(repr(c) for c in text_columns)}: the same ticket text is in "
                "two splits (leakage); remove the duplicate tickets"
            )
    stop_if(problems)  # groups come in order of their first row


def near_duplicates(tickets: pd.DataFrame) -> dict[str, int]:
    """Validation and test tickets whose text, without case, digits and punctuation, is also
    a training ticket's: a score on them measures recall of a template, not generalisation.
    Counted, not refused (real queues repeat themselves); `metrics/data.json` shows it."""
    seen = set(tickets.loc[tickets["split"] == "train", "near_key"])
    in_train = tickets["near_key"].isin(seen)
    return {
        f"{split}_in_train": int(in_train[tickets["split"] == split].sum())
        for split in ("validation", "test")
    }


def groups_per_split(tickets: pd.DataFrame) -> dict[str, int]:
    """Distinct groups (prepare.group_column) per split, and how many sit in two splits
    (0 by construction: the count is there so that a reviewer need not take it on trust)."""
    sides = tickets.groupby("group")["split"].nunique()
    per_split = tickets.groupby("split")["group"].nunique()
    return {s: int(per_split.get(s, 0)) for s in SPLITS} | {"in_two_splits": int((sides > 1).sum())}


def targets_seen_in_train(
    tickets: pd.DataFrame, answers: pd.DataFrame, tasks: dict[str, dict[str, Any]]
) -> dict[str, int]:
    """Per generation task, test tickets whose target text (case and spacing aside) is also a
    training ticket's target: on those a high ROUGE can be recall of a seen answer."""
    counts = {}
    for name, task in tasks.items():
        if task["kind"] != "generation":
            continue
        target = answers[name].map(lambda text: " ".join(str(text).split()).casefold())
        seen = set(target[tickets["split"] == "train"])
        counts[name] = int(target[tickets["split"] == "test"].isin(seen).sum())
    return counts


def label_sets(
    tickets: pd.DataFrame, answers: pd.DataFrame, tasks: dict[str, dict[str, Any]], path: Path
) -> dict[str, list[str]]:
    """Each classification task's labels: as declared, or those of the training split, sorted.

    An inferred set is what the model is taught, so a label seen only in validation or
    test could never be answered: that is an error asking to declare the set.
    """
    sets, problems = {}, []
    train = tickets["split"] == "train"
    for name, task in tasks.items():
        if task["kind"] != "classification":
            continue
        if task.get("labels") is not None:
            sets[name] = [str(v) for v in task["labels"]]
            continue
        sets[name] = sorted(answers.loc[train, name].unique())
        for i in sorted(answers.index[~answers[name].isin(sets[name])]):
            t = tickets.loc[i]
            problems.append(
                f"{where(path, t.row, t.id, task['column'])}: label {answers.at[i, name]!r} "
                f"of task {name} ({t.split} split) is not in the training split, "
                "so it can not be learnt; "
                f"list the labels in params.yaml tasks.{name}.labels"
            )
    stop_if(problems)
    return sets


# ----------------------------------------------------------------------------- writing


def make_records(
    tickets: pd.DataFrame,
    answers: pd.DataFrame,
    tasks: dict[str, dict[str, Any]],
    labels: dict[str, list[str]],
    system: str,
    layout: str,
) -> dict[str, list[dict[str, Any]]]:
    """The records of every ticket (triage/records.py), by split, in ticket order."""
    records: dict[str, list[dict[str, Any]]] = {s: [] for s in SPLITS}
    for t in tickets.itertuples():
        gold = {name: str(answers.at[t.Index, name]) for name in tasks}
        records[t.split] += records_for_ticket(t.id, t.text, gold, tasks, labels, system, layout)
    return records


def label_records(
    tickets: pd.DataFrame,
    answers: pd.DataFrame,
    tasks: dict[str, dict[str, Any]],
    labels: dict[str, list[str]],
    system: str,
    layout: str,
) -> list[dict[str, Any]]:
    """The training tickets again, in the same order, answering only the classification tasks.

    Written as the dataset `tickets_train_labels`: listed beside `tickets_train` in
    params.yaml `dataset`, it gives the labels a second pass without the generated text,
    whose ~25 answer tokens per record otherwise outweigh a label's one or two in the loss.
    """
    classification = {n: t for n, t in tasks.items() if t["kind"] == "classification"}
    train = tickets[tickets["split"] == "train"]
    return make_records(train, answers, classification, labels, system, layout)["train"]


def data_metrics(
    frame: pd.DataFrame,
    tickets: pd.DataFrame,
    answers: pd.DataFrame,
    records: dict[str, list[dict[str, Any]]],
    labels: dict[str, list[str]],
) -> dict[str, Any]:
    """What `dvc metrics diff` should show when the data or the split changes."""
    per_split = tickets["split"].value_counts()
    return {
        "input_rows": len(frame),
        "tickets": {s: int(per_split.get(s, 0)) for s in SPLITS} | {"total": len(tickets)},
        "records": {s: len(records[s]) for s in SPLITS}
        | {"total": sum(map(len, records.values()))},
        "truncated_texts": int(tickets["truncated"].sum()),
        "label_sets": labels,
        "label_counts": {  # every label of the set, zeros included, so the keys stay stable
            name: {
                s: answers.loc[tickets["split"] == s, name]
                .value_counts()
                .reindex(labels[name], fill_value=0)
                .astype(int)
                .to_dict()
                for s in SPLITS
            }
            for name in labels
        },
    }


def to_jsonl(records: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def dataset_info() -> dict[str, Any]:
    """LlamaFactory's dataset_info.json: one alpaca dataset per split, `tickets_<split>`,
    and `tickets_train_labels` (the training tickets answering only their labels)."""
    return {
        f"tickets_{s}": {
            "file_name": f"{s}.jsonl",
            "formatting": "alpaca",
            "columns": ALPACA_COLUMNS,
        }
        for s in (*SPLITS, "train_labels")
    }
