"""configure -> train -> merge: params drive LlamaFactory, experiments rerun only what changed,
the served chat template is the trained one, and an interrupted training resumes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, Experiment, run, set_params
from tests.helpers import alive
from triage import records, training


def load_yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


# ------------------------------------------------------------------ configure (fast)


@pytest.fixture()
def configured(tmp_path: Path) -> callable:
    """Run the configure stage on the repo's params with overrides; return the train config."""

    def configure(overrides: dict[str, object]) -> tuple[dict, dict]:
        shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
        set_params(tmp_path / "params.yaml", overrides)
        (tmp_path / "models" / "base").mkdir(parents=True, exist_ok=True)
        source = {"model_name_or_path": "models/base"}
        (tmp_path / "models" / "base" / "source.json").write_text(json.dumps(source))
        run([sys.executable, "-m", "stages.configure"], tmp_path, env={"PYTHONPATH": str(REPO)})
        return (
            load_yaml(tmp_path / "configs" / "train.yaml"),
            load_yaml(tmp_path / "configs" / "export.yaml"),
        )

    return configure


def test_params_are_passed_to_llamafactory_verbatim(configured) -> None:
    params = load_yaml(REPO / "params.yaml")
    config, export = configured({})
    for key, value in params.items():
        if isinstance(value, dict) or value is None or key in ("val_size", "lora_alpha"):
            continue
        assert config[key] == value, key
    assert config["lora_alpha"] == 2 * params["lora_rank"]  # null = 2 x rank
    assert "val_size" not in config  # applied per ticket by prepare
    assert config["eval_dataset"] == "tickets_validation"
    assert config["dataset_dir"] == "data/prepared" and config["stage"] == "sft"
    assert export["adapter_name_or_path"] == "models/adapter"
    assert export["export_dir"] == "models/merged"
    assert export["default_system"] == params["default_system"]


def test_explicit_alpha_and_list_target(configured) -> None:
    config, _ = configured({"lora_rank": 16, "lora_alpha": 8, "lora_target": ["q_proj", "v_proj"]})
    assert (config["lora_rank"], config["lora_alpha"]) == (16, 8)
    assert config["lora_target"] == "q_proj,v_proj"


# ------------------------------------------------------------------ launch (fast)


def test_launch_on_cpu_adds_use_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(training, "gpu_count", lambda: 0)
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    monkeypatch.setattr(training, "cpu_has_bf16", lambda: False)
    cmd, env = training.command({"output_dir": "runs/train", "bf16": True}, {"nproc_per_node": 1})
    assert cmd[:3] == ["llamafactory-cli", "train", "configs/train.yaml"]
    assert "use_cpu=true" in cmd and "bf16=false" in cmd and "report_to=tensorboard" in cmd
    assert "flash_attn=disabled" in cmd  # auto: eager attention on a CPU
    assert "FORCE_TORCHRUN" not in env
    assert env["TENSORBOARD_LOGGING_DIR"] == "runs/train/tensorboard"
    assert env["GLIBC_TUNABLES"] == training.KEEP_HEAP  # malloc keeps freed memory on a CPU
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=2")
    assert training.command({"output_dir": "o"}, {})[1]["GLIBC_TUNABLES"].endswith("max=2")
    chosen = training.command({"output_dir": "runs/train", "flash_attn": "sdpa"}, {})[0]
    assert not any(arg.startswith("flash_attn=") for arg in chosen)  # a choice stays


def test_launch_on_several_gpus_uses_llamafactory_torchrun(monkeypatch) -> None:
    monkeypatch.setattr(training, "gpu_count", lambda: 8)
    monkeypatch.delenv("FORCE_TORCHRUN", raising=False)
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    cmd, env = training.command({"output_dir": "runs/train", "bf16": True}, {"nproc_per_node": 8})
    assert cmd == ["llamafactory-cli", "train", "configs/train.yaml", "report_to=tensorboard"]
    assert "GLIBC_TUNABLES" not in env
    assert env["FORCE_TORCHRUN"] == "1" and env["NPROC_PER_NODE"] == "8"


def test_live_log_follows_the_training_log(tmp_path: Path, monkeypatch) -> None:
    """DVCLive gets each line LlamaFactory completes while it trains; a half-written line waits."""
    monkeypatch.chdir(tmp_path)  # not a git or DVC repository: DVCLive only writes its files
    log = tmp_path / "trainer_log.jsonl"
    live = training.LiveLog(log, Path("live"))
    live.update()  # nothing logged yet
    first = {"current_steps": 5, "total_steps": 10, "loss": 2.0, "lr": 1e-3, "throughput": 300.0}
    second = json.dumps({"current_steps": 10, "total_steps": 10, "loss": 1.5, "lr": 5e-4})
    log.write_text(json.dumps(first) + "\n" + second[:20])
    live.update()
    summary = json.loads(Path("live/metrics.json").read_text())
    assert summary["step"] == 5
    assert summary["train"] == {"loss": 2.0, "learning_rate": 1e-3, "tokens_per_second": 300.0}
    with log.open("a") as f:
        f.write(second[20:] + "\n" + json.dumps({"current_steps": 10, "eval_loss": 1.7}) + "\n")
    live.end()
    summary = json.loads(Path("live/metrics.json").read_text())
    assert summary["step"] == 10 and summary["train"]["loss"] == 1.5
    assert summary["eval"] == {"loss": 1.7}
    losses = Path("live/plots/metrics/train/loss.tsv").read_text().splitlines()
    assert [row.split("\t") for row in losses] == [["step", "loss"], ["5", "2.0"], ["10", "1.5"]]
    assert not Path("dvc.yaml").exists()


def test_matmul_efficiency_is_per_device_peak_times_devices(monkeypatch) -> None:
    """Tokens/s of all GPUs together against one GPU's measured peak times the GPU count."""
    monkeypatch.setattr(training, "matmul_peak", lambda dtype, device: {"tflops": 100.0})
    one = training.matmul_efficiency(1000.0, 7_000_000_000, "bf16 mixed", "cuda")
    assert one["achieved_tflops"] == 28.0 and one["fraction_of_matmul_peak"] == 0.28
    eight = training.matmul_efficiency(8000.0, 7_000_000_000, "bf16 mixed", "cuda", 8)
    assert eight["matmul_peak_tflops"] == 800.0 and eight["fraction_of_matmul_peak"] == 0.28
    assert one["matmul_dtype"] == "bfloat16"
    unknown = training.matmul_efficiency(None, 7_000_000_000, "float32", "cpu")
    assert unknown["fraction_of_matmul_peak"] is None and unknown["matmul_dtype"] == "float32"


# ------------------------------------------------------------------ the tiny pipeline (slow)


@pytest.mark.slow
def test_train_outputs(tiny_workspace: Path) -> None:
    adapter = tiny_workspace / "models" / "adapter"
    adapter_config = json.loads((adapter / "adapter_config.json").read_text())
    assert adapter_config["r"] == 8 and adapter_config["lora_alpha"] == 16
    assert (adapter / "adapter_model.safetensors").is_file()
    assert any((adapter / "tensorboard").rglob("events.out.tfevents.*"))
    metrics = json.loads((tiny_workspace / "metrics" / "train.json").read_text())
    for key in (
        "train_loss",
        "eval_loss",
        "train_samples_per_second",
        "train_tokens_per_second",
        "trainable_parameters",
        "peak_rss_mb",
        "train_runtime_s",
        "global_steps",
    ):
        assert metrics[key] is not None and metrics[key] > 0, key
    assert metrics["ran_on"]["device"] == "cpu"
    assert metrics["ran_on"]["precision"] in ("float32", "bf16 mixed")
    assert set(metrics["ran_on"]["versions"]) == {"llamafactory", "torch", "transformers", "peft"}
    # rank 8 on q,k,v,o,gate,up,down of 2 layers (hidden 128, intermediate 256)
    per_layer = 8 * ((128 + 128) * 4 + (128 + 256) * 3)
    assert metrics["trainable_parameters"] == 2 * per_layer
    curve = (tiny_workspace / "metrics" / "train_loss.csv").read_text().splitlines()
    assert curve[0].startswith("step,loss,eval_loss") and len(curve) > 3
    # DVCLive followed the same log while it trained, and left dvc.yaml alone
    live = tiny_workspace / "metrics" / "dvclive"
    live_losses = (live / "plots" / "metrics" / "train" / "loss.tsv").read_text().splitlines()
    curve_losses = [row for row in curve[1:] if row.split(",")[1]]
    assert len(live_losses) - 1 == len(curve_losses)
    assert json.loads((live / "metrics.json").read_text())["step"] == int(curve[-1].split(",")[0])
    assert run(["git", "status", "--porcelain", "dvc.yaml"], tiny_workspace).stdout == ""
    # the run's matmul rate against the machine's measured peak in its dtype
    assert metrics["matmul_dtype"] == {"bf16 mixed": "bfloat16"}.get(
        metrics["ran_on"]["precision"], "float32"
    )
    assert metrics["matmul_peak_tflops"] > 0
    assert 0 < metrics["fraction_of_matmul_peak"] < 1
    assert not (tiny_workspace / "runs" / "train").exists()  # nothing left to resume
    merged = tiny_workspace / "models" / "merged"
    assert (merged / "model.safetensors").is_file() and (merged / "tokenizer.json").is_file()


def exp_file(ws: Path, rev: str, path: str) -> str:
    """A file of an experiment: git-tracked, or from the DVC cache through dvc.api."""
    code = f"import dvc.api; print(dvc.api.read({path!r}, repo='.', rev={rev!r}), end='')"
    return run([sys.executable, "-c", code], ws).stdout


@pytest.mark.slow
def test_exp_run_rank_reruns_only_configure_train_merge(
    tiny_workspace: Path, tiny_experiments: dict[str, Experiment]
) -> None:
    ran, rev = tiny_experiments["rank-16"].ran, tiny_experiments["rank-16"].rev
    assert ran == {"configure", "train", "merge"}
    config = yaml.safe_load(exp_file(tiny_workspace, rev, "configs/train.yaml"))
    assert (config["lora_rank"], config["lora_alpha"]) == (16, 32)
    adapter = json.loads(exp_file(tiny_workspace, rev, "models/adapter/adapter_config.json"))
    assert (adapter["r"], adapter["lora_alpha"]) == (16, 32)
    # the workspace itself is untouched
    assert load_yaml(tiny_workspace / "configs" / "train.yaml")["lora_rank"] == 8


@pytest.mark.slow
def test_exp_run_target_changes_adapter_modules(
    tiny_workspace: Path, tiny_experiments: dict[str, Experiment]
) -> None:
    rev = tiny_experiments["target-qv"].rev
    adapter = json.loads(exp_file(tiny_workspace, rev, "models/adapter/adapter_config.json"))
    assert sorted(adapter["target_modules"]) == ["q_proj", "v_proj"]


@pytest.mark.slow
def test_served_template_tokenises_as_training(tiny_workspace: Path, tmp_path: Path) -> None:
    """The prompt ids LlamaFactory trains on == the merged model's chat template, in both envs."""
    from llamafactory.data import get_dataset, get_template_and_fix_tokenizer
    from llamafactory.hparams import get_train_args
    from llamafactory.model import load_tokenizer

    config = load_yaml(tiny_workspace / "configs" / "train.yaml")
    config.update(
        dataset_dir=str(tiny_workspace / "data" / "prepared"),
        output_dir=str(tmp_path / "out"),
        report_to="none",
        use_cpu=True,
        model_name_or_path=str(tiny_workspace / "models" / "merged"),
        max_samples=6,
        bf16=False,
    )
    config.pop("eval_dataset", None)
    config["eval_strategy"] = "no"
    model_args, data_args, training_args, _, _ = get_train_args(config)
    tokenizer = load_tokenizer(model_args)["tokenizer"]
    template = get_template_and_fix_tokenizer(tokenizer, data_args)
    dataset = get_dataset(template, model_args, data_args, training_args, "sft", tokenizer)
    prepared = (tiny_workspace / "data" / "prepared" / "train.jsonl").read_text().splitlines()[:6]
    for example, record in zip(dataset["train_dataset"], map(json.loads, prepared), strict=True):
        trained_prompt = [
            i for i, lab in zip(example["input_ids"], example["labels"], strict=True) if lab == -100
        ]
        messages = records.messages(record)  # what the evaluate stage sends
        # in the serving environment (the transformers version vLLM uses)
        code = (
            "import json, sys; from transformers import AutoTokenizer; "
            f"t = AutoTokenizer.from_pretrained({str(tiny_workspace / 'models' / 'merged')!r}); "
            "print(json.dumps(t.apply_chat_template(json.load(sys.stdin), "
            "add_generation_prompt=True, tokenize=True, return_dict=True)['input_ids']))"
        )
        served = subprocess.run(
            [os.environ["TICKET_SERVE_PYTHON"], "-c", code],
            input=json.dumps(messages),
            capture_output=True,
            text=True,
            check=True,
            env={"PATH": os.environ["PATH"]},
        )
        assert json.loads(served.stdout) == trained_prompt
        assert record["system"] in tokenizer.decode(trained_prompt)


@pytest.mark.slow
def test_interrupted_training_resumes_from_checkpoint(tiny_workspace: Path, tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    shutil.copytree(tiny_workspace, ws, symlinks=True)
    set_params(ws / "params.yaml", {"save_steps": 2})
    run([sys.executable, "-m", "stages.configure"], ws)
    total_steps = json.loads((ws / "metrics" / "train.json").read_text())["global_steps"]

    proc = subprocess.Popen(
        [sys.executable, "-m", "stages.train"],
        cwd=ws,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(ws)},
    )
    deadline = time.monotonic() + 600
    while not (ws / "runs" / "train" / "checkpoint-2" / "trainer_state.json").exists():
        assert proc.poll() is None and time.monotonic() < deadline, "no checkpoint written"
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)  # a crash, not a polite stop
    proc.wait()
    # a crash while a later checkpoint was being written: its state file never came
    partial = ws / "runs" / "train" / "checkpoint-100000"
    shutil.copytree(ws / "runs" / "train" / "checkpoint-2", partial)
    (partial / "trainer_state.json").unlink()

    out = run([sys.executable, "-m", "stages.train"], ws).stdout
    assert f"train: {partial.relative_to(ws)} was cut short while being written: removed" in out
    assert "train: resuming:" in out
    metrics = json.loads((ws / "metrics" / "train.json").read_text())
    assert metrics["resumed_from_checkpoint"] is True
    assert metrics["global_steps"] == total_steps
    steps = [
        json.loads(line)["current_steps"]
        for line in (ws / "models" / "adapter" / "trainer_log.jsonl").read_text().splitlines()
    ]
    # the log of the killed run is continued, not started over: step 1 was logged once
    assert steps.count(1) == 1 and max(steps) == total_steps


def wait_for(done, what: str, seconds: float = 120) -> None:
    """Poll until done() (a generous deadline: a deadlock, not a slow machine, fails)."""
    deadline = time.monotonic() + seconds
    while not done():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGKILL])
def test_llamafactory_never_outlives_the_train_stage(tmp_path: Path, signum: int) -> None:
    """The stage's child (here a stand-in that sleeps; the real CLI is started the same way)
    is stopped when the stage alone is sent SIGTERM/SIGHUP (a killed `dvc repro`), and by
    the kernel when the stage is killed outright."""
    pid_file = tmp_path / "child.pid"
    write_pid = f"open({str(pid_file)!r}, 'w').write(str(os.getpid()))"
    child = f"import os, time; {write_pid}; time.sleep(600)"
    stage = (
        "import os, sys; from triage.training import run_child; "
        f"sys.exit(run_child([sys.executable, '-c', {child!r}], dict(os.environ)))"
    )
    proc = subprocess.Popen([sys.executable, "-c", stage], cwd=REPO, start_new_session=True)
    wait_for(lambda: pid_file.exists() and pid_file.read_text(), "the child never started")
    child_pid = int(pid_file.read_text())
    try:
        os.kill(proc.pid, signum)  # the stage alone, not its process group
        proc.wait(timeout=120)
        assert proc.returncode != 0
        wait_for(lambda: not alive(child_pid), "the child outlived the stage")
    finally:
        if alive(child_pid):
            os.kill(child_pid, signal.SIGKILL)


@pytest.mark.parametrize(
    "override", ["lora_rank=32", "learning_rate=5e-4", "lora_target='q_proj,v_proj'"]
)
def test_one_exp_run_override_changes_one_line(tmp_path: Path, override: str) -> None:
    """params.yaml is in the form `dvc exp run -S` writes back (DVC's own round trip), so a
    pull request that changes one hyperparameter shows a one-line params diff."""
    from dvc.utils.hydra import apply_overrides

    copy = tmp_path / "params.yaml"
    shutil.copy(REPO / "params.yaml", copy)
    apply_overrides(str(copy), [override])
    before = (REPO / "params.yaml").read_text().splitlines()
    after = copy.read_text().splitlines()
    assert len(before) == len(after)
    changed = [(a, b) for a, b in zip(before, after, strict=True) if a != b]
    assert len(changed) == 1 and changed[0][1].startswith(override.split("=")[0] + ":")
