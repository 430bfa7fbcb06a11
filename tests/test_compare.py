"""The compare stage's paired table: the fine-tuned model minus a baseline on the same tickets."""

from __future__ import annotations

import pandas as pd

from stages.compare import paired

TASKS = {
    "category": {"kind": "classification"},
    "summary": {"kind": "generation"},
}


def answers(gold: list[str], predicted: list[str], task: str, **extra: str) -> pd.DataFrame:
    ids = [f"T{i}" for i in range(len(gold))]
    return pd.DataFrame({"id": ids, "task": task, "gold": gold, "predicted": predicted, **extra})


def test_a_clear_gain_is_marked_and_equal_answers_are_not() -> None:
    gold = ["billing", "shipping"] * 30
    wrong = ["shipping", "billing"] * 30
    summaries = [f"refund for order {i}" for i in range(60)]
    lora = pd.concat([answers(gold, gold, "category"), answers(summaries, summaries, "summary")])
    baseline = pd.concat(
        [
            answers(gold, gold[:30] + wrong[30:], "category", model="half_right"),
            answers(summaries, summaries, "summary", model="half_right"),
            answers(gold, gold, "category", model="same"),
            answers(summaries, summaries, "summary", model="same"),
        ]
    )
    table = paired(TASKS, lora, baseline, {"half_right": "half right", "same": "the same"})
    lines = table.splitlines()
    assert lines[0] == "| LoRA minus | category macro-F1 | summary ROUGE-L |"
    gain, level = lines[2], lines[3]
    assert gain.startswith("| TF-IDF, half right | +0.500 [")  # macro-F1 1 against 1/2
    assert gain.split(" | ")[1].endswith("*")  # the interval excludes 0
    assert gain.endswith("| +0.000 [+0.000, +0.000] |")  # the same summaries
    assert level == "| TF-IDF, the same | +0.000 [+0.000, +0.000] | +0.000 [+0.000, +0.000] |"
    assert "On the 60 test tickets both answered" in table


def test_only_tickets_both_answered_with_the_same_gold_are_paired() -> None:
    gold = ["billing", "shipping"] * 10
    lora = answers(gold, gold, "category")
    other_gold = answers(["refund"] * 20, gold, "category", model="b")
    baseline = pd.concat([answers(gold[:12], gold[:12], "category", model="b"), other_gold[12:]])
    table = paired({"category": TASKS["category"]}, lora, baseline, {"b": "b"})
    assert "On the 12 test tickets both answered" in table
    # a failed request (no answer) counts as a wrong answer, not as a missing ticket
    failed = answers(gold, [None] * 20, "category")
    table = paired(
        {"category": TASKS["category"]},
        failed,
        answers(gold, gold, "category", model="b"),
        {"b": "b"},
    )
    assert "| TF-IDF, b | -1.000 [-1.000, -1.000] * |" in table
