"""Stage train: `llamafactory-cli train configs/train.yaml`, then publish the adapter and metrics.

LlamaFactory writes checkpoints to `runs/train/` (the config's output_dir), outside DVC's
outputs: DVC deletes a stage's outputs before running it, which would throw away the
checkpoints an interrupted run needs. LlamaFactory resumes from the last checkpoint there on
its own; this stage only makes sure those checkpoints belong to the same config and data
(a fingerprint file), and starts afresh otherwise. On success the adapter, its logs and
TensorBoard events move to `models/adapter/`, and the metrics and loss curve to `metrics/`.

Machine-dependent settings are added on the command line, not stored in the config:
`use_cpu=true` where no GPU is visible (bf16 on a CPU needs it; `bf16=false` on a CPU without
native bfloat16, where emulation is several times slower), `report_to=tensorboard`,
and LlamaFactory's own torchrun launch (FORCE_TORCHRUN, NPROC_PER_NODE) for several GPUs.

LlamaFactory never outlives this stage: it shares the stage's process group (a Ctrl-C at
the terminal, or a kill of the group, reaches both), SIGTERM or SIGHUP to the stage alone
(a killed `dvc repro`, a CI timeout) is passed on to it before the stage exits, and if the
stage dies outright the kernel sends it SIGTERM (PR_SET_PDEATHSIG). Checkpoints stay for
resuming.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import math
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from triage.files import atomic_dir, run_main, write_json, write_text
from triage.machine import cpu_has_bf16
from triage.params import PipelineError, load_params
from triage.signals import raise_terminated

CONFIG = Path("configs/train.yaml")
ADAPTER = Path("models/adapter")
METRICS = Path("metrics/train.json")
LOSS_PLOT = Path("metrics/train_loss.csv")
FINGERPRINT = "pipeline_fingerprint.txt"
KEEP = (  # what LlamaFactory leaves in output_dir that belongs with the adapter
    "adapter_config.json", "adapter_model.safetensors", "trainer_log.jsonl", "trainer_state.json",
    "all_results.json", "train_results.json", "eval_results.json", "README.md",
)  # fmt: skip


def fingerprint(config_text: str) -> str:
    """Identity of a training run: config, dataset and base model descriptors."""
    h = hashlib.sha256(config_text.encode())
    files = sorted(Path("data/prepared").glob("*")) + sorted(Path("models/base").glob("*.json"))
    for path in files:
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def command(config: dict[str, Any], launch: dict[str, Any]) -> tuple[list[str], dict[str, str]]:
    """The LlamaFactory command line and environment for this machine."""
    cmd = ["llamafactory-cli", "train", str(CONFIG)]
    env = dict(os.environ)
    output_dir = Path(config["output_dir"])
    env["TENSORBOARD_LOGGING_DIR"] = str(output_dir / "tensorboard")
    env.setdefault("DISABLE_VERSION_CHECK", "0")
    if gpu_count() == 0:
        cmd.append("use_cpu=true")
        if config.get("bf16") and not cpu_has_bf16():
            # emulated bf16 is several times slower than fp32 there; same maths, more precision
            cmd.append("bf16=false")
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
    trainable = trainable_parameters(output_dir / "adapter_model.safetensors")
    metrics["trainable_parameters"] = trainable
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in metrics.items()}


def what_ran(config: dict[str, Any], cmd: list[str]) -> dict[str, Any]:
    """Device, precision and library versions of this run: the same params train differently
    on a GPU, on a CPU with native bfloat16 and on one without."""
    from importlib.metadata import version

    gpus = gpu_count()
    if "bf16=false" in cmd or not config.get("bf16"):
        precision = "fp16" if config.get("fp16") else "float32"
    else:
        precision = "bf16 mixed"
    return {
        "device": f"cuda x{gpus}" if gpus else "cpu",
        "precision": precision,
        "versions": {p: version(p) for p in ("llamafactory", "torch", "transformers", "peft")},
    }


def trainable_parameters(adapter: Path) -> int:
    """Count the LoRA parameters from the saved adapter (exact, independent of the logs)."""
    from safetensors import safe_open

    with safe_open(adapter, framework="pt") as f:
        return sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())  # noqa: SIM118


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the stage's process dies (Linux)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def run_child(cmd: list[str], env: dict[str, str], grace_s: float = 30.0) -> int:
    """Run `cmd` and return its exit code. If this process is interrupted (KeyboardInterrupt,
    or SIGTERM/SIGHUP turned into `Terminated`), the child gets SIGTERM, then SIGKILL after
    grace_s, and is reaped before the exception goes on."""

    linux = sys.platform.startswith("linux")
    proc = subprocess.Popen(cmd, env=env, preexec_fn=_die_with_parent if linux else None)
    handlers = {s: signal.signal(s, raise_terminated) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        return proc.wait()
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


def main() -> None:
    params = load_params()
    config_text = CONFIG.read_text(encoding="utf-8")
    config = yaml.safe_load(config_text)
    output_dir = Path(config["output_dir"])

    # Resume only a run of this very config and data; anything else starts from scratch.
    current = fingerprint(config_text)
    marker = output_dir / FINGERPRINT
    if output_dir.exists() and (not marker.exists() or marker.read_text() != current):
        shutil.rmtree(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    marker.write_text(current)
    resumed = any(output_dir.glob("checkpoint-*"))

    cmd, env = command(config, params.get("train", {}))
    print(("train: resuming: " if resumed else "train: ") + " ".join(cmd), flush=True)
    started = time.monotonic()
    try:
        returncode = run_child(cmd, env)
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM/SIGHUP (Terminated)
        signum = getattr(e, "signum", signal.SIGINT)
        print(
            f"error: interrupted ({signal.Signals(signum).name}); llamafactory-cli stopped, "
            f"checkpoints kept in {output_dir} for resuming",
            file=sys.stderr,
        )
        sys.exit(128 + signum)
    if returncode != 0:
        raise PipelineError(
            f"llamafactory-cli train exited with code {returncode} "
            f"(checkpoints kept in {output_dir} for resuming)"
        )
    runtime = time.monotonic() - started
    peak_rss_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024

    metrics = summarise(output_dir, runtime, peak_rss_mb)
    metrics["resumed_from_checkpoint"] = resumed
    metrics["ran_on"] = what_ran(config, cmd)
    with atomic_dir(ADAPTER) as tmp:
        for name in KEEP:
            if (output_dir / name).exists():
                shutil.copy2(output_dir / name, tmp / name)
        if (output_dir / "tensorboard").exists():
            shutil.copytree(output_dir / "tensorboard", tmp / "tensorboard")
    write_text(LOSS_PLOT, loss_curve(output_dir / "trainer_log.jsonl").to_csv(index=False))
    write_json(METRICS, metrics)
    shutil.rmtree(output_dir)  # done: nothing left to resume
    print(f"train: {json.dumps(metrics)}")


if __name__ == "__main__":
    run_main(main)
