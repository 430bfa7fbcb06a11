"""Stage compare: the fine-tuned model beside its baselines, as Markdown tables.

Reads the metrics and per-ticket predictions the other stages wrote and writes
`metrics/scores.md`: one row per model, what it was trained on, and each headline score with
its 95 % bootstrap interval; then the LoRA model minus each TF-IDF row on the same tickets
with a paired-bootstrap interval (two scores' own intervals can overlap while their paired
difference is clear of zero). The README's table is this file (`make readme`), so no figure
in it is typed by hand.
"""

from __future__ import annotations

import argparse
import io
import json
import re
from pathlib import Path
from typing import Any

import pandas as pd

from triage.files import run_main, write_text
from triage.params import PipelineError, load_params
from triage.scoring import paired_deltas

OUT = Path("metrics/scores.md")
# per-ticket answers of the served LoRA model and of the TF-IDF rows
PREDICTIONS = ("data/eval/predictions.jsonl", "data/baseline/predictions.jsonl")
HEADLINE = {"classification": "macro_f1", "generation": "rougeL"}
NAMES = {"macro_f1": "macro-F1", "accuracy": "accuracy", "rougeL": "ROUGE-L"}
BEGIN, END = "<!-- scores:begin -->", "<!-- scores:end -->"


def read(path: str) -> Any:
    """A metrics file (JSON), or a predictions file (JSON lines) as a DataFrame."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError as e:
        raise PipelineError(f"{path}: not found (run `dvc repro`)") from e
    jsonl = path.endswith(".jsonl")
    return pd.read_json(io.StringIO(text), lines=True, dtype=False) if jsonl else json.loads(text)


def cell(scores: dict[str, Any] | None, key: str) -> str:
    """A score with its interval: `0.801 [0.765, 0.834]`; `-` where the row has none."""
    if not scores or scores.get(key) is None:
        return "-"
    interval = scores.get(f"{key}_ci95")
    return f"{scores[key]:.3f}" + (f" [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else "")


def md_row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def md_head(header: list[str]) -> list[str]:
    return [md_row(header), "|" + "---|" * len(header)]


def table(params: dict[str, Any]) -> str:
    evaluation, baseline = read("metrics/eval.json"), read("metrics/baseline.json")
    zero_shot = read("metrics/eval_base.json")
    train, data = read("metrics/train.json"), read("metrics/data.json")
    tasks = params["tasks"]
    columns = [
        (name, key)
        for name, task in tasks.items()
        for key in (("macro_f1", "accuracy") if task["kind"] == "classification" else ("rougeL",))
    ]
    all_tickets = data["tickets"]["train"]
    lora_tickets = baseline["tfidf_lora_tickets"]["train_tickets"]
    epochs = params.get("num_train_epochs")
    balance = (params.get("prepare") or {}).get("balance")
    sample = f"{lora_tickets} tickets" + (f" balanced on {balance}" if balance else "")
    sample += f", {epochs:g} epoch{'s' if epochs != 1 else ''}"
    minutes = train.get("train_runtime_s", 0) / 60
    summary = params["baseline"]["summary_source"].replace("_", " ")
    tfidf_rows = {
        "tfidf_lora_tickets": f"the same {lora_tickets} tickets",
        "tfidf_all_tickets": f"all {all_tickets} tickets",
    }
    rows = [
        ("LoRA, served by vLLM", f"{sample}, {minutes:.1f} min", evaluation),
        *(("TF-IDF + logistic regression", on, baseline[row]) for row, on in tfidf_rows.items()),
        ("base model zero-shot, served by vLLM", "nothing (same prompt and constraint)", zero_shot),
        ("majority class", f"all {all_tickets} tickets", baseline["majority"]),
    ]
    lines = md_head(["model", "trained on"] + [f"{task} {NAMES[key]}" for task, key in columns])
    for model, trained_on, scores in rows:
        lines.append(md_row([model, trained_on, *(cell(scores.get(t), k) for t, k in columns)]))
    lora, tfidf = (read(path) for path in PREDICTIONS)
    return (
        "\n".join(lines)
        + f"\n\n{evaluation['test_tickets']} test tickets; [95 % bootstrap interval]. "
        + f"The baselines' summaries are the ticket's {summary} (extractive).\n\n"
        + paired(tasks, lora, tfidf, tfidf_rows)
    )


def delta_cell(pairs: pd.DataFrame, kind: str) -> str:
    """LoRA (`predicted_x`) minus the baseline (`predicted_y`) on the same tickets."""
    if pairs.empty:
        return "-"
    head = pairs["predicted_x"].fillna("").tolist()  # no answer (an error) scores as wrong
    base = pairs["predicted_y"].tolist()
    d = paired_deltas(pairs["gold"].tolist(), base, head, kind)[HEADLINE[kind]]
    low, high = d["delta_ci95"]
    return f"{d['delta']:+.3f} [{low:+.3f}, {high:+.3f}]" + ("" if low <= 0 <= high else " *")


def paired(
    tasks: dict[str, Any], lora: pd.DataFrame, baseline: pd.DataFrame, trained_on: dict[str, str]
) -> str:
    """The LoRA model minus each TF-IDF row, per task's headline score, on the test tickets
    both answered (same id, task and gold answer), with a 95 % paired-bootstrap interval."""
    header = ["LoRA minus", *(f"{t} {NAMES[HEADLINE[k['kind']]]}" for t, k in tasks.items())]
    lines = md_head(header)
    tickets = lora["id"].nunique()
    for row, description in trained_on.items():
        both = lora.merge(baseline[baseline["model"] == row], on=["id", "task", "gold"])
        tickets = min(tickets, both["id"].nunique())
        cells = [delta_cell(both[both["task"] == t], k["kind"]) for t, k in tasks.items()]
        lines.append(md_row([f"TF-IDF, {description}", *cells]))
    note = f"On the {tickets} test tickets both answered; [95 % paired bootstrap]; `*`: the"
    return "\n".join(lines) + f"\n\n{note} interval excludes 0 (beyond noise).\n"


def splice(readme: Path, text: str) -> None:
    """Replace what stands between the score markers of the README."""
    content = readme.read_text(encoding="utf-8")
    pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.DOTALL)
    if not pattern.search(content):
        raise PipelineError(f"{readme}: no {BEGIN} ... {END} markers")
    write_text(readme, pattern.sub(lambda _: f"{BEGIN}\n{text}{END}", content))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readme", type=Path, help="also copy the table into this README")
    args = parser.parse_args()
    text = table(load_params())
    write_text(OUT, text)
    if args.readme:
        splice(args.readme, text)
    print(text)


if __name__ == "__main__":
    run_main(main)
