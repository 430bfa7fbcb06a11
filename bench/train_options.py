"""What LlamaFactory's own speed options do to the train stage on this machine: sequence
packing (`packing`, and `neat_packing` without cross-attention between packed records),
`torch_compile`, and the frozen base weights stored in bfloat16 (`base_model.dtype`) where the
CPU computes bfloat16 natively, against the default.

Like for like: every option trains the same first BENCH_OPTION_RECORDS training records
(`max_samples`) once (`num_train_epochs=1`), so the same tokens go through the model and the
time is what differs; the options alternate, BENCH_REPEATS runs each (BENCH_OPTIONS=a,b runs
only those beside the default, into their own results file). Packing concatenates records
into sequences of `cutoff_len` tokens and pads the last one: LlamaFactory's token count then
includes that padding (and, without neat packing, marks it as attended), so tokens/s here is
the default's count of the records' own tokens divided by each option's training time.
Packing also changes the maths: with several records in each packed sequence an epoch takes
fewer optimizer steps (with one packed sequence per batch, about as many as the default),
and without neat packing each record attends to the records packed before it. The final
training loss of each run is recorded; it does not compare across options that change the
batches.

The default keeps the frozen weights in float32 and trains under bf16 autocast, which casts
every weight to bfloat16 at every matmul; weights stored in bfloat16 skip that, and also
keep the residual stream in bfloat16 instead of float32 (less precision: its scores are not
measured here).

`pure_bf16` (the frozen weights in bfloat16 and no autocast; PEFT still upcasts the adapters
to float32, so their matmuls run in float32) is refused by LlamaFactory on a CPU;
bench/pure_bf16.py lifts that refusal to measure it.

`torch_compile` compiles the forward and backward pass for each new batch shape: its first
run compiles from nothing, later ones reuse TorchInductor's on-disk cache (in /tmp), so its
runs differ by the compile time. A run that does not finish within BENCH_OPTION_TIMEOUT
seconds (default 600, the order of the default's whole training on a fast 2-core machine)
is recorded as not finished.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.common import WORK, repeats, save, spread
from bench.train_speed import LLAMAFACTORY, llamafactory_train, tree
from triage.machine import cpu_has_bf16

RECORDS = int(os.environ.get("BENCH_OPTION_RECORDS", "120"))
TIMEOUT = float(os.environ.get("BENCH_OPTION_TIMEOUT", "600"))
BF16_BASE = WORK / "base-bfloat16"
OPTIONS = {  # name: (what it is, LlamaFactory arguments)
    "default": ("the default", []),
    "packing": ("packing", ["packing=true"]),
    "packing_batch_1": (  # about as many optimizer steps as the default
        "packing, one packed sequence per batch",
        ["packing=true", "per_device_train_batch_size=1"],
    ),
    "neat_packing": ("neat packing", ["neat_packing=true"]),
    "bf16_base": ("frozen weights stored in bfloat16", [f"model_name_or_path={BF16_BASE}"]),
    "sdpa_attention": (  # PyTorch's CPU flash-attention backward is slow at these shapes
        "attention by PyTorch's SDPA (what `flash_attn: auto` meant on a CPU before the train "
        "stage chose eager there)",
        ["flash_attn=sdpa"],
    ),
    "batch_8": ("batches of 8 (half the optimizer steps)", ["per_device_train_batch_size=8"]),
    "batch_8_bf16_base": (
        "batches of 8, frozen weights stored in bfloat16",
        ["per_device_train_batch_size=8", f"model_name_or_path={BF16_BASE}"],
    ),
    "torch_compile": ("torch.compile", ["torch_compile=true"]),
    "pure_bf16": (  # LlamaFactory refuses it on a CPU: run through bench/pure_bf16.py
        "pure bf16: frozen weights in bfloat16, no autocast (PEFT keeps the adapters in float32)",
        ["pure_bf16=true", "bf16=false", f"model_name_or_path={BF16_BASE}"],
    ),
}
CLI = {"pure_bf16": (sys.executable, str(Path(__file__).with_name("pure_bf16.py")))}


def bf16_copy(base: Path) -> None:
    """The base model with its weights stored in bfloat16 (what `base_model.dtype: bfloat16`
    makes), tokenizer and chat template beside them."""
    import torch
    from transformers import AutoModelForCausalLM

    shutil.rmtree(BF16_BASE, ignore_errors=True)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16)
    model.save_pretrained(BF16_BASE)
    for path in base.iterdir():
        if not (BF16_BASE / path.name).exists():
            shutil.copy2(path, BF16_BASE / path.name)


def train_run(ws: Path, overrides: list[str], cli: tuple[str, ...]) -> dict[str, Any]:
    """One pass over the first RECORDS training records with `overrides`, trained by `cli`."""
    try:
        wall, out = llamafactory_train(
            ws, f"max_samples={RECORDS}", "num_train_epochs=1", *overrides, timeout=TIMEOUT, cli=cli
        )
    except subprocess.TimeoutExpired:
        return {"finished": False}
    results = json.loads((out / "all_results.json").read_text())
    state = json.loads((out / "trainer_state.json").read_text())
    return {
        "finished": True,
        "wall_s": round(wall, 1),
        "train_runtime_s": results["train_runtime"],
        "optimizer_steps": state["global_step"],
        "tokens_counted": state["num_input_tokens_seen"],
        "train_loss": round(results["train_loss"], 4),
    }


def summary(overrides: list[str], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """An option's runs: medians and spread, or that it did not finish."""
    if not all(r["finished"] for r in rows):
        return {"overrides": overrides, "finished": False, "timeout_s": TIMEOUT}
    return {
        "overrides": overrides,
        "finished": True,
        "runs": len(rows),
        "train_runtime_s": spread([r["train_runtime_s"] for r in rows]),
        "optimizer_steps": rows[0]["optimizer_steps"],
        "tokens_counted": rows[0]["tokens_counted"],
        "train_loss": rows[0]["train_loss"],
    }


def main() -> None:
    WORK.mkdir(parents=True, exist_ok=True)
    ws = tree("after", None)
    chosen = os.environ.get("BENCH_OPTIONS")  # e.g. "bf16_base": only it beside the default
    wanted = ("default", *chosen.split(",")) if chosen else tuple(OPTIONS)
    options = {name: option for name, option in OPTIONS.items() if name in wanted}
    on_bf16_base = [name for name, (_, args) in options.items() if f"{BF16_BASE}" in str(args)]
    if not cpu_has_bf16():  # emulated bfloat16 is several times slower: never used there
        for name in on_bf16_base:
            options.pop(name)
    elif on_bf16_base:
        bf16_copy(ws / "models" / "base")
    n = repeats()
    trials: dict[str, list[dict[str, Any]]] = {name: [] for name in options}
    for trial in range(n):  # alternating, so drift of the machine spreads over all options
        for name, (_, overrides) in options.items():
            if trial and not all(t["finished"] for t in trials[name]):
                continue  # a run that timed out once is not worth another timeout
            print(f"bench train options: {name} {' '.join(overrides)}", flush=True)
            trials[name].append(train_run(ws, overrides, CLI.get(name, LLAMAFACTORY)))
            print(f"  {name}: {trials[name][-1]}", flush=True)
    runs = {name: summary(options[name][1], rows) for name, rows in trials.items()}
    tokens = runs["default"]["tokens_counted"]  # the records' own tokens, no padding
    default_s = runs["default"]["train_runtime_s"]["median"]
    for run in runs.values():
        if run["finished"]:
            run["tokens_per_s"] = round(tokens / run["train_runtime_s"]["median"], 1)
            run["vs_default"] = round(default_s / run["train_runtime_s"]["median"], 3)
    name = "train_options" + ("_" + "_".join(sorted(chosen.split(","))) if chosen else "")
    save(name, {"records": RECORDS, "record_tokens": tokens, "repeats": n, "runs": runs})


if __name__ == "__main__":
    main()
