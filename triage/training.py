"""The train stage's helpers: LlamaFactory's command line for this machine, running it as a
child that never outlives the stage, and reading its results back.

stages/train.py reads top to bottom; this is what it calls: the fingerprint that decides
whether checkpoints may be resumed, the checkpoints a crash left half-written, the command
(use_cpu, bf16 off where a CPU only emulates it, eager attention and glibc's malloc keeping
freed memory on a CPU, torchrun for several GPUs), `run_child` (SIGTERM/SIGHUP passed on,
PR_SET_PDEATHSIG), DVCLive following the log, and the metrics, loss curve, matmul
efficiency and description of the run from what LlamaFactory wrote. The benchmarks call the
same command and summary (bench/pipeline.py).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from triage.machine import cpu_has_bf16, matmul_peak
from triage.signals import die_with_parent, raise_terminated

CONFIG = Path("configs/train.yaml")  # rendered by the configure stage, run by LlamaFactory


def fingerprint(config_text: str) -> str:
    """Identity of a training run: config, dataset and base model descriptors."""
    h = hashlib.sha256(config_text.encode())
    files = sorted(Path("data/prepared").glob("*")) + sorted(Path("models/base").glob("*.json"))
    for path in files:
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def incomplete_checkpoints(output_dir: Path) -> list[Path]:
    """Checkpoints a crash cut short while they were written. The Trainer writes
    trainer_state.json after the weights, optimizer and RNG states, and resumes from the
    highest-numbered checkpoint whatever it holds: from one without a readable state it fails
    (FileNotFoundError) instead of taking the complete one before it."""
    partial = []
    for checkpoint in output_dir.glob("checkpoint-*"):
        try:
            json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            partial.append(checkpoint)
    return sorted(partial)


def gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def machine_overrides(config: dict[str, Any]) -> list[str]:
    """LlamaFactory arguments that depend on the machine, not on the experiment. Where no GPU
    is visible: `use_cpu=true`; `bf16=false` on a CPU that only emulates bfloat16 (several
    times slower than float32 there: same maths, more precision); and eager attention where
    `flash_attn` is auto, which on a CPU means PyTorch's SDPA, whose backward pass took 18 %
    of a training step (bench/results/train_profile_sdpa.json): plain matmul attention trained
    the same records faster in each of four alternating pairs, 1.18x and 1.09x by the medians
    of two comparisons (bench/results/train_options_{eager,sdpa}_attention.json).
    On a GPU, auto stays LlamaFactory's choice (FlashAttention-2 or SDPA)."""
    if gpu_count():
        return []
    overrides = ["use_cpu=true"]
    if config.get("bf16") and not cpu_has_bf16():
        overrides.append("bf16=false")
    if config.get("flash_attn", "auto") == "auto":
        overrides.append("flash_attn=disabled")
    return overrides


# glibc malloc: large blocks from the heap instead of fresh mmaps, and freed memory kept.
KEEP_HEAP = (
    "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736:glibc.malloc.top_pad=268435456"
)


def machine_env() -> dict[str, str]:
    """Environment for LlamaFactory that depends on the machine. On a CPU, glibc's malloc
    keeps freed memory in its heap (`GLIBC_TUNABLES`, unless already set): by default every
    large tensor of a step (the logits alone are ~120 MB) is a fresh mmap, page-faulted in
    anew. Kept, the page faults fell elevenfold and 60 steps with an evaluation trained 6-7 %
    faster in two alternating pairs (bench/results/malloc_eval.json), 30 steps without one
    0-2 % (bench/results/malloc_keep.json), for about 0.7 GB more peak memory. Not on a GPU,
    where a big model passes through host memory once while loading and the process should
    give it back."""
    if gpu_count() or "GLIBC_TUNABLES" in os.environ:
        return {}
    return {"GLIBC_TUNABLES": KEEP_HEAP}


def command(config: dict[str, Any], launch: dict[str, Any]) -> tuple[list[str], dict[str, str]]:
    """The LlamaFactory command line and environment for this machine."""
    cmd = ["llamafactory-cli", "train", str(CONFIG)]
    env = {**os.environ, **machine_env()}
    output_dir = Path(config["output_dir"])
    env["TENSORBOARD_LOGGING_DIR"] = str(output_dir / "tensorboard")
    env.setdefault("DISABLE_VERSION_CHECK", "0")
    cmd += machine_overrides(config)
    cmd.append("report_to=tensorboard")
    nproc = int(launch.get("nproc_per_node") or 1)
    if nproc > 1:  # LlamaFactory's own torchrun launcher (DeepSpeed via `deepspeed:` in params)
        env["FORCE_TORCHRUN"] = "1"
        env["NPROC_PER_NODE"] = str(nproc)
    return cmd, env


def loss_curve(log_path: Path) -> pd.DataFrame:
    """trainer_log.jsonl -> step, loss, eval_loss (DVC plots need CSV/JSON/TSV)."""
    rows = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    frame = pd.DataFrame(rows)
    cols = [c for c in ("current_steps", "loss", "eval_loss", "lr", "grad_norm") if c in frame]
    frame = frame[cols].rename(columns={"current_steps": "step", "lr": "learning_rate"})
    return frame.groupby("step", as_index=False).first()


def summarise(output_dir: Path, runtime_s: float, peak_rss_mb: float) -> dict[str, Any]:
    results = json.loads((output_dir / "all_results.json").read_text())
    state = json.loads((output_dir / "trainer_state.json").read_text())
    losses = [e["loss"] for e in state["log_history"] if "loss" in e]
    evals = [e["eval_loss"] for e in state["log_history"] if "eval_loss" in e]
    adapter_cfg = json.loads((output_dir / "adapter_config.json").read_text())
    metrics = {
        "train_loss": results.get("train_loss"),
        "final_logged_loss": losses[-1] if losses else None,
        "eval_loss": results.get("eval_loss", evals[-1] if evals else None),
        "train_runtime_s": results.get("train_runtime"),
        "train_samples_per_second": results.get("train_samples_per_second"),
        "train_steps_per_second": results.get("train_steps_per_second"),
        "stage_runtime_s": round(runtime_s, 1),
        "peak_rss_mb": round(peak_rss_mb, 1),
        "global_steps": state.get("global_step"),
        "lora_rank": adapter_cfg.get("r"),
        "lora_alpha": adapter_cfg.get("lora_alpha"),
    }
    tokens = state.get("num_input_tokens_seen") or results.get("num_input_tokens_seen")
    if tokens and results.get("train_runtime"):
        metrics["train_tokens_per_second"] = round(tokens / results["train_runtime"], 1)
    trainable = parameter_count(output_dir / "adapter_model.safetensors")
    metrics["trainable_parameters"] = trainable
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in metrics.items()}


class LiveLog:
    """LlamaFactory's trainer_log.jsonl, followed while it trains and logged to DVCLive.

    DVCLive writes `metrics.json` (the latest values) and a TSV per metric under `plots/`, so
    `dvc exp show` and `dvc plots show` see the loss, eval loss, learning rate and tokens/s of
    a run while it trains. The stage owns the `Live` instead of `report_to=dvclive`: that
    callback creates `Live()` with its defaults, which rewrite the project's dvc.yaml at every
    step and log every TrainingArguments field as a param.
    """

    FIELDS = {"loss": "train/loss", "lr": "train/learning_rate",
              "throughput": "train/tokens_per_second", "eval_loss": "eval/loss"}  # fmt: skip

    def __init__(self, log_path: Path, live_dir: Path) -> None:
        from dvclive import Live

        self.log_path, self.read = log_path, 0
        self.live = Live(dir=str(live_dir), dvcyaml=False, save_dvc_exp=False)

    def update(self) -> None:
        """Log the lines LlamaFactory completed since the last call (a half-written last line
        waits for the next)."""
        if not self.log_path.exists():
            return
        with self.log_path.open("rb") as f:
            f.seek(self.read)
            new = f.read()
        new = new[: new.rfind(b"\n") + 1]
        self.read += len(new)
        for line in new.decode().splitlines():
            row = json.loads(line) if line.strip() else {}
            logged = {name: row[key] for key, name in self.FIELDS.items() if key in row}
            if not logged:
                continue
            self.live.step = row["current_steps"]
            for name, value in logged.items():
                self.live.log_metric(name, value)
            self.live.next_step()

    def end(self) -> None:
        self.update()
        self.live.end()


def matmul_efficiency(
    tokens_per_s: float | None,
    parameters: int | None,
    precision: str,
    device: str,
    devices: int = 1,
) -> dict[str, Any]:
    """The run's matmul rate against this machine's matmul peak in the dtype it computed in
    (one device measured, times `devices`: the GPUs training together; a CPU is one device).

    A LoRA step's useful work is counted as 4 x parameters x tokens: the forward pass (2) and
    the backward pass through the frozen weights to the adapters (2); the adapters' own
    gradients are small, activation recomputation is not useful work.
    """
    dtype = {"bf16 mixed": "bfloat16", "fp16": "float16"}.get(precision, "float32")
    peak = matmul_peak(dtype, device)["tflops"] * devices
    achieved = 4 * parameters * tokens_per_s / 1e12 if tokens_per_s and parameters else None
    return {
        "matmul_dtype": dtype,
        "matmul_peak_tflops": round(peak, 3),
        "achieved_tflops": round(achieved, 4) if achieved else None,
        "fraction_of_matmul_peak": round(achieved / peak, 3) if achieved else None,
    }


def what_ran(config: dict[str, Any], cmd: list[str]) -> dict[str, Any]:
    """Device, precision and library versions of this run: the same params train differently
    on a GPU, on a CPU with native bfloat16 and on one without."""
    from importlib.metadata import version

    gpus = gpu_count()
    if "bf16=false" in cmd or not config.get("bf16"):
        precision = "fp16" if config.get("fp16") else "float32"
    else:
        precision = "bf16 mixed"
    attention = "eager" if "flash_attn=disabled" in cmd else config.get("flash_attn", "auto")
    return {
        "device": f"cuda x{gpus}" if gpus else "cpu",
        "precision": precision,
        "attention": attention,
        "versions": {p: version(p) for p in ("llamafactory", "torch", "transformers", "peft")},
    }


def parameter_count(path: Path) -> int | None:
    """Parameters in a safetensors file, or in all of a folder's (exact, read from the headers;
    tied weights are stored once). None where there are none (a hub id)."""
    from safetensors import safe_open

    files = sorted(path.glob("*.safetensors")) if path.is_dir() else [path]
    if not files or not files[0].exists():
        return None
    total = 0
    for file in files:
        with safe_open(file, framework="pt") as f:
            total += sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())  # noqa: SIM118
    return total


def run_child(
    cmd: list[str],
    env: dict[str, str],
    grace_s: float = 30.0,
    every: Callable[[], None] | None = None,
    every_s: float = 10.0,
) -> int:
    """Run `cmd` and return its exit code, calling `every` each `every_s` seconds while it
    runs and once after. If this process is interrupted (KeyboardInterrupt, or SIGTERM/SIGHUP
    turned into `Terminated`), the child gets SIGTERM, then SIGKILL after grace_s, and is
    reaped before the exception goes on."""

    proc = subprocess.Popen(cmd, env=env, preexec_fn=die_with_parent)
    handlers = {s: signal.signal(s, raise_terminated) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        while True:
            try:
                returncode = proc.wait(every_s if every else None)
            except subprocess.TimeoutExpired:
                every()  # type: ignore[misc]  # only reached with `every`
                continue
            if every:
                every()
            return returncode
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
