"""Training learns: the whole pipeline on a toy task a model can only solve by learning it.

Each toy ticket names its category's keyword ("invoice" for billing, "parcel" for shipping,
...). The tiny model starts random, so before training it answers one label for almost
everything (chance is a third); after `dvc repro` (LlamaFactory LoRA, merge, vLLM serving
with the label constraint) it must answer nearly every test ticket right. A pipeline that
trained on the wrong answers, dropped the adapter in the merge, or served another prompt
than it trained on fails here.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import dvc
from tests.test_prepare import make_tickets

TOY = {
    "prepare.input": "data/raw/toy.csv",
    "prepare.test_size": 0.2,
    "prepare.max_tickets": None,
    "val_size": 0.1,
    "max_samples": None,
    "tasks": {
        "category": {
            "kind": "classification",
            "column": "category",
            "labels": None,
            "instruction": "the ticket's category",
        }
    },
    "lora_rank": 16,
    "learning_rate": 5.0e-3,
    "num_train_epochs": 4.0,
    "warmup_ratio": 0.0,
    "eval_strategy": "no",
    "save_steps": 1000,
    "logging_steps": 5,
}


@pytest.mark.slow
def test_the_pipeline_learns_a_keyword_task(make_workspace, tiny_model: Path) -> None:
    ws = make_workspace("learn", {**TOY, "base_model.source": str(tiny_model)})
    tickets = make_tickets({"billing": 50, "shipping": 50, "account": 50}, long_rows=())
    (ws / "data" / "raw" / "toy.csv").write_text(tickets.to_csv(index=False))
    dvc(["repro"], ws)

    scores = json.loads((ws / "metrics" / "eval.json").read_text())["category"]
    majority = json.loads((ws / "metrics" / "baseline.json").read_text())["majority"]["category"]
    assert scores["n"] == 30 and majority["accuracy"] == pytest.approx(1 / 3, abs=0.01)
    assert scores["invalid_rate"] == 0
    assert scores["accuracy"] >= 0.9, scores
    loss = (ws / "metrics" / "train_loss.csv").read_text().splitlines()[1:]
    first, last = (float(row.split(",")[1]) for row in (loss[0], loss[-1]))
    assert last < first / 2  # the loss fell, not just the answers
