"""Training throughput of the train stage, before and after the learning default, against
this machine's measured matrix-multiply peak.

"Before" is the project at BENCH_TRAIN_BEFORE (default: the commit before the default that
learns: one record per (ticket, task) with long prompts, batches of 4 x 2 padded to their
longest record, LoRA dropout 0.1, activation checkpointing). "After" is the working tree.
Each is prepared and configured by its own stages, then trained by its own rendered config
for the same number of optimizer steps (BENCH_TRAIN_STEPS, default 15) with the machine
settings the train stage adds, alternating before/after BENCH_REPEATS times. Tokens are
counted without padding (`include_num_input_tokens_seen: non_padding`) on both sides.

The peak is the best of torch.matmul at the model's shapes and at 2048^2, float32 and
bfloat16; the useful work of a LoRA step is counted as 4 x parameters x tokens (forward,
and backward through the frozen weights to the adapters; recomputation not counted).

The ratio differs by CPU (AMX, AVX-512 BF16 without AMX, no native bf16): a run on another
kind of machine is kept as `train_speed_<machine>.json` beside `train_speed.json`, and the
report renders each.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from bench.common import ROOT, WORK, base_parameters, repeats, save, spread, timed
from bench.pipeline import copy_repo
from triage.machine import cpu_has_bf16, matmul_peak
from triage.training import machine_env, machine_overrides

BEFORE = os.environ.get("BENCH_TRAIN_BEFORE", "4ac7663")
STEPS = int(os.environ.get("BENCH_TRAIN_STEPS", "15"))


def gemm_peak() -> dict[str, Any]:
    """Best TFLOP/s of torch.matmul per dtype (triage.machine.matmul_peak, as the train stage).

    bfloat16 is measured only where the CPU computes it natively: emulated, these shapes
    take more than ten minutes, and the train stage computes in float32 there anyway.
    """
    dtypes = ("float32", "bfloat16") if cpu_has_bf16() else ("float32",)
    return {dtype: matmul_peak(dtype) for dtype in dtypes}


def tree(label: str, rev: str | None) -> Path:
    """The project at `rev` (None: the working tree) in a scratch folder, sharing models/base."""
    dest = WORK / f"train-{label}"
    if rev is None:
        copy_repo(dest)
    else:
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir(parents=True)
        archive = subprocess.run(["git", "archive", rev], cwd=ROOT, capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    (dest / "models").mkdir(exist_ok=True)
    (dest / "models" / "base").symlink_to(ROOT / "models" / "base")
    env = {**os.environ, "PYTHONPATH": str(dest)}
    for stage in ("prepare", "configure"):
        timed(["python", "-m", f"stages.{stage}"], cwd=dest, env=env)
    return dest


LLAMAFACTORY = ("llamafactory-cli", "train")


def llamafactory_train(
    ws: Path, *overrides: str, timeout: float | None = None, cli: tuple[str, ...] = LLAMAFACTORY
) -> tuple[float, Path]:
    """`llamafactory-cli train` (or `cli`) of the tree's config with the machine settings the
    train stage adds, no evaluation, no checkpoints, plus `overrides`; (wall seconds, its
    output_dir)."""
    out = ws / "runs" / "bench-train"
    shutil.rmtree(out, ignore_errors=True)
    config = yaml.safe_load((ws / "configs" / "train.yaml").read_text())
    cmd = [*cli, "configs/train.yaml", f"output_dir={out}",
           "eval_strategy='no'", "save_strategy='no'", "report_to=none",
           "include_num_input_tokens_seen=non_padding", *machine_overrides(config)]  # fmt: skip
    env = {**os.environ, "DISABLE_VERSION_CHECK": "1", **machine_env()}
    wall, _ = timed([*cmd, *overrides], cwd=ws, env=env, timeout=timeout)
    return wall, out


def train_once(ws: Path, *overrides: str) -> dict[str, float]:
    """One LlamaFactory run of the tree's config for STEPS steps, as the train stage runs it."""
    config = yaml.safe_load((ws / "configs" / "train.yaml").read_text())
    wall, out = llamafactory_train(ws, f"max_steps={STEPS}", *overrides)
    results = json.loads((out / "all_results.json").read_text())
    state = json.loads((out / "trainer_state.json").read_text())
    runtime = results["train_runtime"]
    samples = STEPS * config["per_device_train_batch_size"] * config["gradient_accumulation_steps"]
    per_ticket = 1 if (yaml.safe_load((ws / "params.yaml").read_text())["prepare"].get(
        "records", "task") == "ticket") else 3  # fmt: skip
    return {
        "wall_s": wall,
        "train_runtime_s": runtime,
        "tokens_per_s": state["num_input_tokens_seen"] / runtime,
        "records_per_s": samples / runtime,
        "tickets_per_s": samples / per_ticket / runtime,
    }


def main() -> None:
    WORK.mkdir(parents=True, exist_ok=True)
    n = repeats()
    print(f"bench train: {STEPS} steps, {n} runs each of {BEFORE} and the working tree", flush=True)
    trees = {"before": tree("before", BEFORE), "after": tree("after", None)}
    runs: dict[str, list[dict[str, float]]] = {"before": [], "after": []}
    for _ in range(n):
        for label, ws in trees.items():
            # before: the train stage then left flash_attn auto, PyTorch's SDPA on a CPU
            runs[label].append(train_once(ws, *(["flash_attn=sdpa"] if label == "before" else [])))
            print(f"  {label}: {runs[label][-1]}", flush=True)
    head = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT,
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    results: dict[str, Any] = {
        "steps": STEPS,
        "repeats": n,
        "before_rev": BEFORE,
        "after_rev": head,
    }
    for label, rows in runs.items():
        results[label] = {key: spread([r[key] for r in rows]) for key in rows[0]}
    med = {k: results[k]["tokens_per_s"]["median"] for k in runs}
    results["tokens_per_s_ratio"] = round(med["after"] / med["before"], 2)
    results["tickets_per_s_ratio"] = round(
        results["after"]["tickets_per_s"]["median"] / results["before"]["tickets_per_s"]["median"],
        2,
    )
    peak = gemm_peak()
    dtype = "bfloat16" if cpu_has_bf16() else "float32"  # what the train stage computes in
    params = base_parameters()
    achieved = 4 * params * med["after"] / 1e12 if params else None
    results["gemm_peak"] = peak
    results["train_dtype"] = dtype
    results["fraction_of_peak"] = round(achieved / peak[dtype]["tflops"], 3) if achieved else None
    results["achieved_tflops"] = round(achieved, 4) if achieved else None
    ratios = (
        f"tokens/s x{results['tokens_per_s_ratio']}, tickets/s x{results['tickets_per_s_ratio']}"
    )
    print(f"  {ratios}, {results['fraction_of_peak']} of the {dtype} matmul peak")
    save("train_speed", results)


if __name__ == "__main__":
    main()
