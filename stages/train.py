"""Stage train: `llamafactory-cli train configs/train.yaml`, then publish the adapter and metrics.

LlamaFactory writes checkpoints to `runs/train/` (the config's output_dir), outside DVC's
outputs: DVC deletes a stage's outputs before running it, which would throw away the
checkpoints an interrupted run needs. LlamaFactory resumes from the last checkpoint there on
its own; this stage only makes sure those checkpoints belong to the same config and data
(a fingerprint file), and starts afresh otherwise, and removes a checkpoint that a crash cut
short while it was written (LlamaFactory would try to resume from it and fail). On success
the adapter, its logs and TensorBoard events move to `models/adapter/`, and the metrics and
loss curve to `metrics/`. While it trains, the stage follows LlamaFactory's log into DVCLive
(`metrics/dvclive/`), so `dvc exp show` and `dvc plots show` see the run as it goes. After it,
the stage measures this machine's matmul peak (about a second) and reports the run's rate as
a fraction of it.

Machine-dependent settings are added on the command line, not stored in the config:
`use_cpu=true` where no GPU is visible (bf16 on a CPU needs it; `bf16=false` on a CPU without
native bfloat16, where emulation is several times slower; eager attention for `flash_attn:
auto`, faster than PyTorch's SDPA on a CPU), `report_to=tensorboard`,
and LlamaFactory's own torchrun launch (FORCE_TORCHRUN, NPROC_PER_NODE) for several GPUs.

LlamaFactory never outlives this stage: it shares the stage's process group (a Ctrl-C at
the terminal, or a kill of the group, reaches both), SIGTERM or SIGHUP to the stage alone
(a killed `dvc repro`, a CI timeout) is passed on to it before the stage exits, and if the
stage dies outright the kernel sends it SIGTERM (PR_SET_PDEATHSIG). Checkpoints stay for
resuming. (The helpers: triage/training.py.)
"""

from __future__ import annotations

import json
import resource
import shutil
import signal
import sys
import time
from pathlib import Path

import yaml

from triage.files import atomic_dir, run_main, write_json, write_text
from triage.params import PipelineError, load_params
from triage.training import (
    CONFIG,
    LiveLog,
    command,
    fingerprint,
    incomplete_checkpoints,
    loss_curve,
    matmul_efficiency,
    parameter_count,
    run_child,
    summarise,
    what_ran,
)

ADAPTER = Path("models/adapter")
METRICS = Path("metrics/train.json")
LOSS_PLOT = Path("metrics/train_loss.csv")
LIVE = Path("metrics/dvclive")
FINGERPRINT = "pipeline_fingerprint.txt"
KEEP = (  # what LlamaFactory leaves in output_dir that belongs with the adapter
    "adapter_config.json", "adapter_model.safetensors", "trainer_log.jsonl", "trainer_state.json",
    "all_results.json", "train_results.json", "eval_results.json", "README.md",
)  # fmt: skip


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
    for partial in incomplete_checkpoints(output_dir):
        print(f"train: {partial} was cut short while being written: removed", flush=True)
        shutil.rmtree(partial)
    resumed = any(output_dir.glob("checkpoint-*"))

    cmd, env = command(config, params.get("train", {}))
    print(("train: resuming: " if resumed else "train: ") + " ".join(cmd), flush=True)
    live = LiveLog(output_dir / "trainer_log.jsonl", LIVE)
    started = time.monotonic()
    try:
        returncode = run_child(cmd, env, every=live.update)
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
    live.end()
    metrics["resumed_from_checkpoint"] = resumed
    metrics["ran_on"] = ran_on = what_ran(config, cmd)
    on_gpu = ran_on["device"].startswith("cuda")
    gpus = int(params.get("train", {}).get("nproc_per_node") or 1) if on_gpu else 1
    parameters = parameter_count(Path(config["model_name_or_path"]))
    tokens_per_s = metrics.get("train_tokens_per_second")
    metrics |= matmul_efficiency(
        tokens_per_s, parameters, ran_on["precision"], "cuda" if on_gpu else "cpu", gpus
    )
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
