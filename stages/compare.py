"""Stage compare: the fine-tuned model beside its baselines, as one Markdown table.

Reads the metrics the other stages wrote (`metrics/eval.json`, `metrics/eval_base.json`,
`metrics/baseline.json`, `metrics/train.json`, `metrics/data.json`) and writes
`metrics/scores.md`: one row per model, what it was trained on, and each headline score with
its 95 % bootstrap interval over the test tickets. The README's results table is this file
(`make readme` copies it in), so no figure in it is typed by hand.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

from triage.files import run_main, write_text
from triage.params import PipelineError, load_params

OUT = Path("metrics/scores.md")
BEGIN, END = "<!-- scores:begin -->", "<!-- scores:end -->"


def read(path: str) -> dict[str, Any]:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise PipelineError(f"{path}: not found (run `dvc repro`)") from e


def cell(scores: dict[str, Any] | None, key: str) -> str:
    """A score with its interval: `0.801 [0.765, 0.834]`; `-` where the row has none."""
    if not scores or scores.get(key) is None:
        return "-"
    interval = scores.get(f"{key}_ci95")
    return f"{scores[key]:.3f}" + (f" [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else "")


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
    summary = params["baseline"]["summary_source"].replace("_", " ")
    rows = [
        (
            "LoRA, served by vLLM",
            f"{sample}, {epochs:g} epoch{'s' if epochs != 1 else ''}, "
            f"{train.get('train_runtime_s', 0) / 60:.1f} min",
            evaluation,
        ),
        (
            "TF-IDF + logistic regression",
            f"the same {lora_tickets} tickets",
            baseline["tfidf_lora_tickets"],
        ),
        (
            "TF-IDF + logistic regression",
            f"all {all_tickets} tickets",
            baseline["tfidf_all_tickets"],
        ),
        ("base model zero-shot, served by vLLM", "nothing (same prompt and constraint)", zero_shot),
        ("majority class", f"all {all_tickets} tickets", baseline["majority"]),
    ]
    names = {"macro_f1": "macro-F1", "accuracy": "accuracy", "rougeL": "ROUGE-L"}
    header = ["model", "trained on"] + [f"{task} {names[key]}" for task, key in columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for model, trained_on, scores in rows:
        values = [cell(scores.get(task), key) for task, key in columns]
        lines.append("| " + " | ".join([model, trained_on, *values]) + " |")
    return (
        "\n".join(lines)
        + f"\n\n{evaluation['test_tickets']} test tickets; [95 % bootstrap interval]. "
        + f"The baselines' summaries are the ticket's {summary} (extractive).\n"
    )


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
