"""Where a training step of the default goes: torch.profiler over LlamaFactory's own training.

LlamaFactory trains the rendered config (`configs/train.yaml`) in this process, through its
Python entry point (`llamafactory.train.tuner.run_exp`, what `llamafactory-cli train` calls)
with the machine settings the train stage adds (on a CPU: eager attention, glibc's malloc
keeping freed memory; BENCH_PROFILE_ATTENTION=sdpa profiles what `flash_attn: auto` meant
before), no evaluation, no checkpoints. A callback profiles optimizer steps BENCH_PROFILE_SKIP+1 ..
BENCH_PROFILE_SKIP+BENCH_PROFILE_STEPS (the first steps warm up). Each op's self time (time
in the op itself, not in the ops it calls) is summed into a handful of groups: what a
matmul-bound step could shrink and what it could not. Results go to train_profile.json, or
train_profile_<attention>.json with BENCH_PROFILE_ATTENTION.

A second profiler counts each matrix multiply's FLOPs (`with_flops`) over the next
BENCH_PROFILE_STEPS steps (counting slows the small ops, so it does not time): divided by those
steps' tokens they are the step's real GEMM work per token (with the adapters, their weight
gradients and attention, which 4 x parameters leaves out); times the timed
steps' tokens and divided by their GEMMs' own time, the rate the GEMMs ran at (attention's
batched matmuls grow with the square of a record's length, a few percent of the work here).
With this machine's measured matmul peak that gives the ceiling a step could reach if it did
nothing but its GEMMs at the peak: how far faster code could take this model, rank and data.

    python -m bench.train_profile    # in a tree with models/base and data/prepared (dvc repro)
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from typing import Any

import yaml

from bench.common import ROOT, WORK, base_parameters, save
from triage.machine import matmul_peak
from triage.training import machine_env, machine_overrides

SKIP = int(os.environ.get("BENCH_PROFILE_SKIP", "5"))
STEPS = int(os.environ.get("BENCH_PROFILE_STEPS", "5"))
GROUPS = [  # (group, pattern on the op name), first match wins
    ("matrix multiplies", r"^aten::(mm|addmm|bmm|matmul|linear|baddbmm)$"),
    ("attention", r"scaled_dot_product|flash_attention|_efficient_attention"),
    ("log-softmax and loss over the vocabulary", r"log_softmax|nll_loss|cross_entropy"),
    ("dtype and layout copies", r"^aten::(copy_|_to_copy|to|contiguous|clone|t|transpose)$"),
    ("optimizer (AdamW) and gradient clipping", r"_foreach_|adam|clip_grad|norm$"),
    ("elementwise", r"^aten::(mul|add|sub|div|pow|rsqrt|mean|silu|neg|cat|sum|fill_|zero_)"),
]


def group_of(op: str) -> str:
    return next((name for name, pattern in GROUPS if re.search(pattern, op)), "other ops")


def main() -> None:
    if extra := machine_env():  # the allocator setting acts only from a process's start
        os.execve(sys.executable, [sys.executable, "-m", "bench.train_profile"],
                  {**os.environ, **extra})  # fmt: skip
    import torch
    from llamafactory.train.tuner import run_exp
    from transformers import TrainerCallback

    os.chdir(ROOT)  # the config's paths are relative to the project
    shutil.rmtree(WORK / "train-profile", ignore_errors=True)  # LlamaFactory wants it new
    args = yaml.safe_load((ROOT / "configs" / "train.yaml").read_text())
    args.update(
        output_dir=str(WORK / "train-profile"), eval_strategy="no", save_strategy="no",
        report_to="none", max_steps=SKIP + 2 * STEPS, include_num_input_tokens_seen="non_padding",
    )  # fmt: skip
    for override in machine_overrides(args):  # as the train stage adds them
        key, value = override.split("=", 1)
        args[key] = yaml.safe_load(value)
    if os.environ.get("BENCH_PROFILE_ATTENTION"):  # e.g. sdpa: the step before eager attention
        args["flash_attn"] = os.environ["BENCH_PROFILE_ATTENTION"]
    cpu = [torch.profiler.ProfilerActivity.CPU]
    # timing: steps SKIP+1 .. SKIP+STEPS; counting FLOPs records every op's shapes, which slows
    # the small ops, so it profiles the next STEPS steps on its own
    windows = {"timing": torch.profiler.profile(activities=cpu),
               "counting": torch.profiler.profile(activities=cpu, with_flops=True)}  # fmt: skip
    starts = {"timing": SKIP, "counting": SKIP + STEPS}
    tokens: dict[str, int] = {}  # non-padding tokens in each window

    class Profile(TrainerCallback):
        def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            for name, start in starts.items():
                if state.global_step == start:
                    tokens[name] = -state.num_input_tokens_seen
                    windows[name].start()

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            for name, start in starts.items():
                if state.global_step == start + STEPS:
                    windows[name].stop()
                    tokens[name] += state.num_input_tokens_seen

    run_exp(args, callbacks=[Profile()])
    ops = windows["timing"].key_averages()
    total = sum(e.self_cpu_time_total for e in ops)
    groups: dict[str, float] = {}
    for e in ops:
        groups[group_of(e.key)] = groups.get(group_of(e.key), 0.0) + e.self_cpu_time_total
    top = sorted(ops, key=lambda e: e.self_cpu_time_total, reverse=True)[:15]
    counted = windows["counting"].key_averages()
    gemm_flops = sum(e.flops for e in counted if group_of(e.key) == "matrix multiplies")
    flops_per_token = gemm_flops / tokens["counting"]
    gemm_s = sum(e.self_cpu_time_total for e in ops if group_of(e.key) == "matrix multiplies") / 1e6
    dtype = "bfloat16" if args.get("bf16") else "float32"
    peak = matmul_peak(dtype)["tflops"]
    attention = os.environ.get("BENCH_PROFILE_ATTENTION")
    save("train_profile" + (f"_{attention}" if attention else ""), {
        "config": "configs/train.yaml",
        "steps_profiled": STEPS,
        "after_warmup_steps": SKIP,
        "dtype": "bfloat16 autocast" if dtype == "bfloat16" else "float32",
        "attention": {"disabled": "eager"}.get(args["flash_attn"], args["flash_attn"]),
        "op_seconds_per_step": round(total / 1e6 / STEPS, 3),
        "tokens_per_step": tokens["timing"] / STEPS,
        "gemm_gflop_per_token": round(flops_per_token / 1e9, 3),
        "parameters": base_parameters(),
        "gemm_tflops": round(flops_per_token * tokens["timing"] / gemm_s / 1e12, 3),
        "matmul_peak_tflops": peak,
        "matmul_dtype": dtype,
        "tokens_per_s_profiled": round(tokens["timing"] / (total / 1e6), 1),
        "tokens_per_s_at_peak": round(peak * 1e12 / flops_per_token, 1),
        "share_by_group": {k: round(v / total, 3) for k, v in sorted(
            groups.items(), key=lambda kv: -kv[1])},
        "top_ops": [{"op": e.key, "share": round(e.self_cpu_time_total / total, 3),
                     "calls_per_step": e.count // STEPS} for e in top],
    })  # fmt: skip


if __name__ == "__main__":
    main()
