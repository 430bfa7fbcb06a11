"""Tests of the prepare stage, run the way DVC runs it: `python -m stages.prepare` in a folder
holding a params.yaml and the raw tickets, with the repository on PYTHONPATH.

Every check of bad input has its own small bad file; each must stop the stage with exit code
1 and one line naming the file, the row (and id) and the column, and leave no output behind.
"""

from __future__ import annotations

import importlib.util
import io
import json
import random
import re
import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from tests.helpers import (
    PARAMS,
    PRIORITIES,
    REPO,
    TASKS,
    make_params,
    make_tickets,
    prepare_in,
)

OUTPUTS = ("train.jsonl", "validation.jsonl", "test.jsonl", "dataset_info.json", "labels.json")
SPLITS = ("train", "validation", "test")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def outputs(folder: Path) -> dict[str, bytes]:
    """Every output file of a prepare run, by name."""
    files = {name: folder / "data" / "prepared" / name for name in OUTPUTS}
    files["data.json"] = folder / "metrics" / "data.json"
    return {name: path.read_bytes() for name, path in files.items()}


# ----------------------------------------------------------------------------- bad input


def edited(**cells: dict[int, str]) -> pd.DataFrame:
    """The default tickets with some cells changed: column={data row: value, ...}."""
    frame = make_tickets()
    for column, values in cells.items():
        for row, value in values.items():
            frame.loc[row - 1, column] = value
    return frame


def threads(count: int = 20, empty_row: int | None = None) -> pd.DataFrame:
    """The default tickets with a `thread` column of `count` values; one left blank."""
    frame = make_tickets().assign(thread=[f"thread-{i % count}" for i in range(60)])
    if empty_row is not None:
        frame.loc[empty_row - 1, "thread"] = " "
    return frame


def csv_bytes(frame: pd.DataFrame) -> bytes:
    return frame.to_csv(index=False).encode("utf-8")


def parquet_bytes(frame: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return buffer.getvalue()


def jsonl_with_line(number: int, line: str) -> bytes:
    lines = make_tickets().to_json(orient="records", lines=True).splitlines()
    lines[number - 1] = line
    return ("\n".join(lines) + "\n").encode("utf-8")


def same_text_tickets() -> pd.DataFrame:
    """All 30 billing tickets say the same (up to case and spacing): some must cross splits."""
    frame = make_tickets()
    billing = frame.index[frame["category"] == "billing"]
    frame.loc[billing, "subject"] = ["Invoice  WRONG", "invoice wrong"] * (len(billing) // 2)
    frame.loc[billing, "body"] = "Please fix my invoice.\n"
    return frame


def latin1_on_row(row: int) -> bytes:
    """A CSV whose data row `row` (file line row + 1) holds a Latin-1 byte."""
    lines = csv_bytes(make_tickets(long_rows=())).split(b"\n")
    lines[row] = lines[row].replace(b"Hello", b"H\xe9llo")
    return b"\n".join(lines)


def case(name: str, data: bytes | None, expected: str | re.Pattern[str], prepare=None, **top):
    """One bad-input case: input bytes (None: no file), params overrides, expected message."""
    return pytest.param(data, make_params(prepare, **top), expected, id=name)


CSV = csv_bytes(make_tickets())
# Rows a and b hold tickets T..a and T..b (\1, \3), in two different splits (\2, not \2).
LEAKAGE = re.compile(
    r"tickets\.csv: rows (\d+) \(id T0*\1, (\w+)\) and (\d+) \(id T0*\3, (?!\2)\w+\), "
    r"columns 'subject', 'body': the same ticket text is in two splits \(leakage\)"
)
ERROR_CASES = [
    case("missing_file", None, "tickets.csv: input file not found (params.yaml prepare.input)"),
    case(
        "unknown_extension",
        CSV,
        "tickets.xlsx: unknown input format '.xlsx' (expected .csv, .jsonl or .parquet)",
        {"input": "tickets.xlsx"},
    ),
    case(
        "corrupt_parquet",
        parquet_bytes(make_tickets())[:300],
        "tickets.parquet: not a readable Parquet file (",
        {"input": "tickets.parquet"},
    ),
    case(
        "ragged_csv",
        CSV.replace(b"\nT0004,", b"\nT0004,extra,", 1),
        "tickets.csv: not a readable CSV file (Error tokenizing data. C error: "
        "Expected 6 fields in line 5, saw 7)",
    ),
    case(
        "jsonl_not_json",
        jsonl_with_line(3, '{"id": "T0003", "subject": '),
        "tickets.jsonl: line 3: not valid JSON (Expecting value)",
        {"input": "tickets.jsonl"},
    ),
    case(
        "jsonl_not_object",
        jsonl_with_line(4, '["T0004", "a list"]'),
        "tickets.jsonl: line 4: expected a JSON object, got list",
        {"input": "tickets.jsonl"},
    ),
    case(
        "missing_column",
        csv_bytes(make_tickets().drop(columns="priority")),
        "tickets.csv: column 'priority' not found (params.yaml tasks.priority.column); "
        "available columns: id, subject, body, category, summary",
    ),
    case(
        "empty_text",
        csv_bytes(edited(subject={5: " "}, body={5: ""})),
        "tickets.csv: row 5 (id T0005), columns 'subject', 'body': empty ticket text",
    ),
    case(
        "missing_label",
        csv_bytes(edited(category={7: ""}, summary={9: " "})),
        "tickets.csv: row 7 (id T0007), column 'category': empty label for task category "
        "(and 1 more)",
    ),
    case(
        "missing_target_text",
        csv_bytes(edited(summary={8: ""})),
        "tickets.csv: row 8 (id T0008), column 'summary': empty target text for task summary",
    ),
    case(
        "label_outside_set",
        csv_bytes(edited(priority={9: "critical"})),
        "tickets.csv: row 9 (id T0009), column 'priority': label 'critical' of task priority "
        "is not one of low, medium, high, urgent (params.yaml tasks.priority.labels)",
    ),
    case(
        "duplicate_id",
        csv_bytes(edited(id={12: "T0003"})),
        "tickets.csv: rows 3 and 12, column 'id': duplicate id T0003",
    ),
    case("leakage", csv_bytes(same_text_tickets()), LEAKAGE),
    case(
        "duplicate_text_without_id_column",
        csv_bytes(edited(subject={3: "x", 12: "x"}, body={3: "s", 12: "s"}).drop(columns="id")),
        re.compile(
            r"tickets\.csv: rows 3 and 12, the ticket text \(no id column\): duplicate id "
            r"T[0-9a-f]{12} \(prepare\.duplicates: drop keeps the first\)"
        ),
        {"id_column": None},
    ),
    case(
        "unknown_duplicates_policy",
        CSV,
        "params.yaml prepare.duplicates: Input should be 'error' or 'drop', got 'keep'",
        {"duplicates": "keep"},
    ),
    case(
        "missing_group_column",
        CSV,
        "tickets.csv: column 'thread' not found (params.yaml prepare.group_column)",
        {"group_column": "thread"},
    ),
    case(
        "empty_group",
        csv_bytes(threads(empty_row=6)),
        "tickets.csv: row 6 (id T0006), column 'thread': empty group (prepare.group_column)",
        {"group_column": "thread"},
    ),
    case(
        "too_few_groups",
        csv_bytes(threads(count=3)),
        "cannot cut prepare.test_size = 0.2 by prepare.group_column from 60 tickets: "
        "3 groups, at least 5 needed",
        {"group_column": "thread"},
    ),
    case(
        "not_utf8",
        latin1_on_row(4),
        "tickets.csv: line 5: not valid UTF-8 (byte 0xe9); re-export the file as UTF-8",
    ),
    case(
        "class_too_small",
        csv_bytes(make_tickets({"billing": 30, "shipping": 20, "account": 2})),
        "column 'category': class 'account' of task category has 2 tickets, "
        "fewer than prepare.min_per_class = 3",
    ),
    case(
        "bad_task_kind",
        CSV,
        "params.yaml tasks.priority.kind: Input should be 'classification' or 'generation', "
        "got 'regression'",
        tasks=TASKS | {"priority": TASKS["priority"] | {"kind": "regression"}},
    ),
    case(
        "unknown_placeholder",
        CSV,
        "params.yaml prepare.text_template: unknown placeholder {text} "
        "(placeholders are the text_columns: subject, body)",
        {"text_template": "{subject}\n{text}"},
    ),
]


@pytest.mark.parametrize(("data", "params", "expected"), ERROR_CASES)
def test_bad_input_stops_with_one_clear_line_and_no_output(
    tmp_path: Path, data: bytes | None, params: dict[str, Any], expected: str | re.Pattern[str]
) -> None:
    result = prepare_in(tmp_path, data, params)
    assert result.returncode == 1, result.stderr
    message = result.stderr.strip()
    assert message.startswith("error: ") and "\n" not in message, message
    if isinstance(expected, re.Pattern):
        assert expected.search(message), message
    else:
        assert expected in message
    assert not (tmp_path / "data" / "prepared").exists()
    assert not (tmp_path / "metrics" / "data.json").exists()
    assert not list(tmp_path.glob("data/.prepared.tmp-*"))


# ----------------------------------------------------------------------------- good input


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One prepare run on the default tickets, shared by the tests that only read it."""
    folder = tmp_path_factory.mktemp("prepared")
    result = prepare_in(folder, make_tickets())
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("prepare: 60 tickets -> train 42 / validation 6 / test 12")
    return folder


def split_records(folder: Path) -> dict[str, list[dict[str, Any]]]:
    return {s: read_jsonl(folder / "data" / "prepared" / f"{s}.jsonl") for s in SPLITS}


def metrics_of(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "metrics" / "data.json").read_text(encoding="utf-8"))


def test_failed_run_leaves_previous_outputs_unchanged(prepared: Path, tmp_path: Path) -> None:
    folder = shutil.copytree(prepared, tmp_path / "copy")
    assert prepare_in(folder, csv_bytes(edited(category={3: ""}))).returncode == 1
    assert outputs(folder) == outputs(prepared)


def test_split_is_by_ticket_with_every_task(prepared: Path) -> None:
    records = split_records(prepared)
    ids = {s: [r["id"] for r in recs] for s, recs in records.items()}
    assert not (set(ids["train"]) & set(ids["validation"]) or set(ids["train"]) & set(ids["test"]))
    assert not set(ids["validation"]) & set(ids["test"])
    assert [len(ids[s]) for s in SPLITS] == [42, 6, 12]  # test 20 %, validation 10 % of all
    for recs in records.values():  # one record per ticket, answering every task
        assert all(r["tasks"] == list(TASKS) for r in recs)
    assert ids["train"] != sorted(ids["train"])  # shuffled, not in input order
    metrics = metrics_of(prepared)
    tickets = {"train": 42, "validation": 6, "test": 12, "total": 60, "left_out": 0}
    assert metrics["tickets"] == tickets
    assert metrics["records"] == {
        "train": 42, "validation": 6, "test": 12, "total": 60, "train_labels": 42,
    }  # fmt: skip


def test_label_records_are_the_training_tickets_answering_only_labels(prepared: Path) -> None:
    train = split_records(prepared)["train"]
    labels_only = read_jsonl(prepared / "data" / "prepared" / "train_labels.jsonl")
    assert [r["id"] for r in labels_only] == [r["id"] for r in train]  # same order: max_samples
    for full, short in zip(train, labels_only, strict=True):
        assert short["tasks"] == ["category", "priority"]
        assert short["input"] == full["input"] and short["system"] == full["system"]
        assert short["output"] == "\n".join(full["output"].splitlines()[:2])
        assert "summary" not in short["instruction"]


def test_a_ticket_record_answers_every_task_one_line_each(prepared: Path) -> None:
    folder = prepared / "data" / "prepared"
    record = read_jsonl(folder / "train.jsonl")[0]
    raw = make_tickets().set_index("id").loc[record["id"]]
    assert record["system"] == PARAMS["default_system"]
    assert record["instruction"] == (
        "category: Classify the ticket. Categories: account, billing, shipping.\n"
        "priority: one of low, medium, high, urgent\n"
        "summary: one line"
    )
    assert record["input"] == f"Subject: {raw['subject']}\n\n{raw['body']}"
    answers = {"category": raw["category"], "priority": raw["priority"], "summary": raw["summary"]}
    assert record["answers"] == answers
    assert record["output"] == "\n".join(f"{k}: {v}" for k, v in answers.items())


def test_every_prefix_of_the_training_split_is_stratified(tmp_path: Path) -> None:
    """LlamaFactory's max_samples takes the first N records: each class in its share."""
    tickets = make_tickets({"billing": 60, "shipping": 30, "account": 10}, long_rows=())
    assert prepare_in(tmp_path, tickets).returncode == 0
    train = [r["answers"]["category"] for r in split_records(tmp_path)["train"]]
    share = {c: train.count(c) / len(train) for c in ("billing", "shipping", "account")}
    for n in (10, 20, 35):
        for category, p in share.items():
            assert abs(train[:n].count(category) - p * n) <= 1.5, (n, category, train[:n])


def test_balance_makes_every_prefix_label_balanced(tmp_path: Path) -> None:
    """prepare.balance: priority: the first N training tickets hold each priority equally
    often (while it lasts), and the categories still in their shares within that."""
    tickets = make_tickets({"billing": 60, "shipping": 30, "account": 10}, long_rows=())
    rng = random.Random(1)
    tickets["priority"] = rng.choices(PRIORITIES, weights=(2, 5, 3, 1), k=len(tickets))
    params = make_params({"balance": "priority"})
    assert prepare_in(tmp_path, tickets, params).returncode == 0
    train = [r["answers"]["priority"] for r in split_records(tmp_path)["train"]]
    for n in (8, 16, 24):
        counts = [train[:n].count(p) for p in PRIORITIES]
        assert max(counts) - min(counts) <= 1, (n, counts)
    assert sorted(train) == sorted(  # the same tickets, in another order
        r["answers"]["priority"] for r in split_records(prepare_in_copy(tmp_path, tickets))["train"]
    )
    bad = make_params({"balance": "summary"})
    result = prepare_in(tmp_path / "bad", tickets, bad)
    assert result.returncode == 1
    assert "prepare.balance: 'summary' is not a classification task" in result.stderr


def test_stratify_names_the_task_that_splits_whatever_the_answer_order(tmp_path: Path) -> None:
    """prepare.stratify keeps the split when the tasks (the answer lines) are reordered."""
    tickets = make_tickets()
    assert prepare_in(tmp_path / "default", tickets).returncode == 0
    priority_first = make_params({"stratify": "category"})
    priority_first["tasks"] = {n: TASKS[n] for n in ("priority", "category", "summary")}
    assert prepare_in(tmp_path / "reordered", tickets, priority_first).returncode == 0
    default, reordered = (split_records(tmp_path / n) for n in ("default", "reordered"))
    for split in ("train", "validation", "test"):
        assert [r["id"] for r in reordered[split]] == [r["id"] for r in default[split]]
    assert reordered["test"][0]["output"].startswith("priority: ")
    bad = prepare_in(tmp_path / "bad", tickets, make_params({"stratify": "summary"}))
    assert bad.returncode == 1
    assert "prepare.stratify: 'summary' is not a classification task" in bad.stderr


def prepare_in_copy(tmp_path: Path, tickets: pd.DataFrame) -> Path:
    """The same tickets prepared without prepare.balance, in a folder beside."""
    folder = tmp_path / "unbalanced"
    assert prepare_in(folder, tickets).returncode == 0
    return folder


def test_task_layout_has_a_record_per_ticket_and_task(tmp_path: Path) -> None:
    result = prepare_in(tmp_path, make_tickets(), make_params({"records": "task"}))
    assert result.returncode == 0, result.stderr
    records = split_records(tmp_path)
    for recs in records.values():
        by_ticket = pd.DataFrame(recs).groupby("id", sort=False)["tasks"].sum()
        assert all(tasks == list(TASKS) for tasks in by_ticket)  # a ticket's records together
    record = records["train"][0]
    assert set(record) == {"id", "tasks", "answers", "system", "instruction", "input", "output"}
    assert record["tasks"] == ["category"]
    assert record["instruction"] == "Classify the ticket. Categories: account, billing, shipping."
    assert record["output"] == record["answers"]["category"]
    assert metrics_of(tmp_path)["records"] == {
        "train": 126, "validation": 18, "test": 36, "total": 180, "train_labels": 84,
    }  # fmt: skip
    # the same split as the ticket layout
    ticket_layout = tmp_path / "ticket"
    assert prepare_in(ticket_layout, make_tickets()).returncode == 0
    ids = [r["id"] for r in split_records(ticket_layout)["test"]]
    assert [r["id"] for r in records["test"][:: len(TASKS)]] == ids


def test_unknown_record_layout_is_an_error(tmp_path: Path) -> None:
    result = prepare_in(tmp_path, make_tickets(), make_params({"records": "row"}))
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "error: params.yaml prepare.records: Input should be 'ticket' or 'task', got 'row'"
    )
    assert not (tmp_path / "data").exists()


def test_dataset_info_maps_the_alpaca_columns(prepared: Path) -> None:
    info = json.loads((prepared / "data" / "prepared" / "dataset_info.json").read_text())
    assert set(info) == {
        "tickets_train", "tickets_validation", "tickets_test", "tickets_train_labels",
    }  # fmt: skip
    assert info["tickets_test"] == {
        "file_name": "test.jsonl",
        "formatting": "alpaca",
        "columns": {
            "prompt": "instruction",
            "query": "input",
            "response": "output",
            "system": "system",
        },
    }


def test_overlong_text_is_truncated_and_counted(prepared: Path) -> None:
    assert metrics_of(prepared)["truncated_texts"] == 2
    records = [r for recs in split_records(prepared).values() for r in recs]
    long = {"T0002", "T0005"}  # make_tickets' long_rows
    assert all(len(r["input"]) == 400 for r in records if r["id"] in long)
    assert all(len(r["input"]) < 400 for r in records if r["id"] not in long)


def test_split_is_stratified(prepared: Path) -> None:
    records = split_records(prepared)
    overall = make_tickets()["category"].value_counts(normalize=True)
    for s in ("train", "test"):
        gold = pd.Series([r["answers"]["category"] for r in records[s]])
        share = gold.value_counts(normalize=True).reindex(overall.index, fill_value=0)
        assert (share - overall).abs().max() <= 0.05, (s, share.to_dict())
    test_counts = metrics_of(prepared)["label_counts"]["category"]["test"]
    assert test_counts == {"account": 2, "billing": 6, "shipping": 4}


def test_same_input_same_bytes_and_seed_changes_split(prepared: Path, tmp_path: Path) -> None:
    assert prepare_in(tmp_path / "again", make_tickets()).returncode == 0
    assert outputs(tmp_path / "again") == outputs(prepared)
    assert prepare_in(tmp_path / "seed7", make_tickets(), make_params(seed=7)).returncode == 0
    test_ids = [{r["id"] for r in split_records(f)["test"]} for f in (prepared, tmp_path / "seed7")]
    assert test_ids[0] != test_ids[1]


def test_parquet_gives_the_same_outputs_as_csv(prepared: Path, tmp_path: Path) -> None:
    result = prepare_in(tmp_path, make_tickets(), make_params({"input": "tickets.parquet"}))
    assert result.returncode == 0, result.stderr
    assert outputs(tmp_path) == outputs(prepared)


def test_max_tickets_takes_a_stratified_sample(tmp_path: Path) -> None:
    result = prepare_in(tmp_path, make_tickets(), make_params({"max_tickets": 30}))
    assert result.returncode == 0, result.stderr
    metrics = metrics_of(tmp_path)
    assert metrics["input_rows"] == 60
    tickets = {"train": 21, "validation": 3, "test": 6, "total": 30, "left_out": 30}
    assert metrics["tickets"] == tickets  # the 30 not sampled are counted as left out
    per_split = metrics["label_counts"]["category"].values()
    kept = {label: sum(counts[label] for counts in per_split) for label in ("account", "billing")}
    assert kept == {"account": 5, "billing": 15}  # half of 10 and of 30


def test_other_export_shape_runs_by_params_alone(tmp_path: Path) -> None:
    """A JSONL export with other column names, integer ids and two other tasks."""
    teams = {"billing": "payments", "shipping": "logistics", "account": "identity"}
    frame = make_tickets().rename(
        columns={"subject": "title", "body": "description", "summary": "reply"}
    )
    frame = frame.assign(ticket_id=range(1001, 1061), team=frame["category"].map(teams))
    frame = frame[["ticket_id", "title", "description", "team", "reply"]]
    tasks = {
        "team": {
            "kind": "classification",
            "column": "team",
            "labels": None,
            "instruction": "Route to one team of: {labels}.",
        },
        "reply": {"kind": "generation", "column": "reply", "instruction": "Draft a reply."},
    }
    prepare = {
        "input": "export.jsonl",
        "id_column": "ticket_id",
        "text_columns": ["title", "description"],
        "text_template": "Title: {title}\n{description}",
    }
    result = prepare_in(tmp_path, frame, make_params(prepare, tasks=tasks))
    assert result.returncode == 0, result.stderr
    folder = tmp_path / "data" / "prepared"
    labels = json.loads((folder / "labels.json").read_text())
    assert labels == {"team": ["identity", "logistics", "payments"]}
    records = [r for s in SPLITS for r in read_jsonl(folder / f"{s}.jsonl")]
    assert len(records) == 60
    assert {r["id"] for r in records} == {str(i) for i in range(1001, 1061)}
    first = records[0]
    assert first["tasks"] == ["team", "reply"]
    assert first["instruction"] == (
        "team: Route to one team of: identity, logistics, payments.\nreply: Draft a reply."
    )
    assert first["input"].startswith("Title: ") and "\nHello, ticket" in first["input"]
    assert first["answers"]["team"] in labels["team"]


def test_llamafactory_loads_the_prepared_dataset(
    prepared: Path, tiny_model: Path, tmp_path: Path
) -> None:
    """LlamaFactory's own loader reads data/prepared as is, and trains on the gold answers."""
    from llamafactory.data import get_dataset, get_template_and_fix_tokenizer
    from llamafactory.hparams import get_train_args
    from llamafactory.model import load_tokenizer

    model_args, data_args, training_args, _, _ = get_train_args(
        {
            "model_name_or_path": str(tiny_model),
            "stage": "sft",
            "do_train": True,
            "finetuning_type": "lora",
            "template": "smollm2",
            "dataset": "tickets_train,tickets_train_labels",
            "dataset_dir": str(prepared / "data" / "prepared"),
            "cutoff_len": 1024,
            "output_dir": str(tmp_path / "out"),
            "cache_dir": str(tmp_path / "cache"),
            "overwrite_cache": True,
            "report_to": "none",
        }
    )
    tokenizer = load_tokenizer(model_args)["tokenizer"]
    template = get_template_and_fix_tokenizer(tokenizer, data_args)
    dataset = get_dataset(template, model_args, data_args, training_args, "sft", tokenizer)
    train = dataset["train_dataset"]
    gold = read_jsonl(prepared / "data" / "prepared" / "train.jsonl")
    labels_only = read_jsonl(prepared / "data" / "prepared" / "train_labels.jsonl")
    assert len(train) == len(gold) + len(labels_only) == 84  # both datasets, concatenated

    prompt = tokenizer.decode(train[0]["input_ids"])
    answer = tokenizer.decode([t for t in train[0]["labels"] if t != -100])  # what is learnt
    assert gold[0]["system"] in prompt and gold[0]["instruction"] in prompt
    assert gold[0]["input"] in prompt
    assert gold[0]["output"] in answer and gold[0]["input"] not in answer
    short = tokenizer.decode([t for t in train[len(gold)]["labels"] if t != -100])
    assert labels_only[0]["output"] in short and "summary" not in short


def test_no_id_column_numbers_tickets_by_their_text(tmp_path: Path) -> None:
    """Ids made from the text: the same tickets get the same ids in any row order."""
    frame = make_tickets(long_rows=()).drop(columns="id")
    params = make_params({"id_column": None})
    ids = []
    for name, rows in (("sorted", frame), ("shuffled", frame.sample(frac=1, random_state=1))):
        assert prepare_in(tmp_path / name, rows, params).returncode == 0
        records = [r for s in split_records(tmp_path / name).values() for r in s]
        ids.append({r["input"]: r["id"] for r in records})
    assert ids[0] == ids[1] and len(set(ids[0].values())) == len(frame)
    assert all(re.fullmatch(r"T[0-9a-f]{12}", i) for i in ids[0].values())


def test_duplicates_drop_keeps_the_first_and_counts(tmp_path: Path) -> None:
    frame = make_tickets(long_rows=())
    copies = frame.iloc[[3, 7]].assign(id=["X1", "X2"])  # same text, other ids
    again = frame.iloc[[5]]  # same id
    data = pd.concat([frame, copies, again], ignore_index=True)
    result = prepare_in(tmp_path, data, make_params({"duplicates": "drop"}))
    assert result.returncode == 0, result.stderr
    metrics = metrics_of(tmp_path)
    assert metrics["input_rows"] == 63 and metrics["duplicates_dropped"] == 3
    assert metrics["tickets"]["total"] == 60
    ids = {r["id"] for s in split_records(tmp_path).values() for r in s}
    assert "X1" not in ids and "X2" not in ids  # the first copy stays


def test_near_duplicates_across_splits_are_counted(prepared: Path) -> None:
    """make_tickets' bodies differ only in their numbers: many test tickets repeat a
    training ticket up to digits, and data.json says how many."""
    near = metrics_of(prepared)["near_duplicates"]
    records = split_records(prepared)
    strip = lambda text: " ".join(re.sub(r"[\W\d_]+", " ", text.casefold()).split())  # noqa: E731
    train = {strip(r["input"]) for r in records["train"]}
    expected = sum(strip(r["input"]) in train for r in records["test"])
    assert near["test_in_train"] == expected > 0
    assert set(near) == {"validation_in_train", "test_in_train"}
    # make_tickets' summaries come from 12 topics: every test summary was seen in training
    seen = metrics_of(prepared)["targets_seen_in_train"]
    assert seen == {"summary": len(records["test"])}


def test_group_column_keeps_each_group_on_one_side(tmp_path: Path) -> None:
    """prepare.group_column: whole groups (here 20 threads of three tickets, a thread's
    tickets alike up to their numbers) go to one split, stratified, and data.json counts
    them; without it the same tickets split one by one and threads cross the split."""
    frame = make_tickets({"billing": 40, "shipping": 40, "account": 40}, long_rows=())
    frame["thread"] = [f"{c}-{i // 3}" for i, c in enumerate(sorted(frame["category"]))]
    frame = frame.sort_values("category", kind="stable").reset_index(drop=True)
    frame["id"] = [f"T{n:04d}" for n in range(1, len(frame) + 1)]
    thread_of = dict(zip(frame["id"], frame["thread"], strict=True))
    sides = {}
    for name, group_column in (("grouped", "thread"), ("ungrouped", None)):
        params = make_params({"group_column": group_column})
        assert prepare_in(tmp_path / name, frame, params).returncode == 0
        split_of = {r["id"]: s for s, rs in split_records(tmp_path / name).items() for r in rs}
        sides[name] = pd.Series(split_of).groupby(pd.Series(thread_of)).nunique()
    assert (sides["grouped"] == 1).all()
    assert (sides["ungrouped"] > 1).any()
    metrics = metrics_of(tmp_path / "grouped")
    assert metrics["groups"]["in_two_splits"] == 0
    assert sum(metrics["groups"][s] for s in SPLITS) == frame["thread"].nunique()
    assert all(count > 0 for count in metrics["label_counts"]["category"]["test"].values())
    assert "groups" not in metrics_of(tmp_path / "ungrouped")


def test_val_groups_draws_validation_from_several_held_out_groups(tmp_path: Path) -> None:
    """prepare.val_groups: the validation tickets come a few from each of several groups that
    are not trained on, instead of one whole group; the rest of those groups is left out."""
    frame = make_tickets({"billing": 80, "shipping": 80, "account": 80}, long_rows=())
    frame["thread"] = [f"{c}-{i // 6}" for i, c in enumerate(sorted(frame["category"]))]
    frame = frame.sort_values("category", kind="stable").reset_index(drop=True)
    frame["id"] = [f"T{n:04d}" for n in range(1, len(frame) + 1)]
    thread_of = dict(zip(frame["id"], frame["thread"], strict=True))
    top = {"val_size": 0.05}  # 12 of 240 tickets: two whole threads without val_groups
    params = make_params({"group_column": "thread", "val_groups": 6}, **top)
    assert prepare_in(tmp_path, frame, params).returncode == 0
    split_of = {r["id"]: s for s, rs in split_records(tmp_path).items() for r in rs}
    threads = pd.Series(thread_of).loc[list(split_of)]
    sides = pd.Series(split_of).groupby(threads).nunique()
    assert (sides == 1).all()  # a validation thread has no ticket in training
    validation = threads[pd.Series(split_of) == "validation"]
    assert len(validation) == 12
    assert validation.nunique() >= 4 and validation.value_counts().max() <= 3  # spread out
    metrics = metrics_of(tmp_path)
    assert metrics["tickets"]["left_out"] == len(frame) - len(split_of) > 0
    assert metrics["tickets"]["total"] == len(split_of)
    assert metrics["groups"]["validation"] == validation.nunique()


def test_the_worked_example_export_prepares_by_its_params_file(tmp_path: Path) -> None:
    """README's worked example: data/make_export.py's help-desk export (no id column,
    resubmitted tickets, another routing label, long replies) runs through prepare with
    configs/examples/helpdesk_export.params.yaml and nothing else changed."""
    spec = importlib.util.spec_from_file_location("make_export", REPO / "data/make_export.py")
    make_export = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_export)
    tickets = pd.read_csv(REPO / "data/raw/tickets.csv", keep_default_na=False)
    export = make_export.make_export(tickets, seed=7)
    assert "id" not in export.columns
    params = yaml.safe_load((REPO / "configs/examples/helpdesk_export.params.yaml").read_text())
    prepare = params["prepare"]
    result = prepare_in(tmp_path, export, params)
    assert result.returncode == 0, result.stderr

    metrics = metrics_of(tmp_path)
    # every resubmission differs from its first copy only in case and whitespace: all dropped
    assert metrics["input_rows"] == len(export) and metrics["duplicates_dropped"] > 50
    assert metrics["duplicates_dropped"] == len(export) - len(tickets)
    assert metrics["tickets"]["total"] == prepare["max_tickets"]
    records = [r for s in split_records(tmp_path).values() for r in s]
    assert all(re.fullmatch(r"T[0-9a-f]{12}", r["id"]) for r in records)
    assert records[0]["tasks"] == ["team", "reply"]
    assert min(len(r["answers"]["reply"].split()) for r in records) > 90  # long answers
    labels = json.loads((tmp_path / "data/prepared/labels.json").read_text())
    assert labels == {"team": sorted(set(make_export.TEAMS.values()))}
