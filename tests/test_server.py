"""The vLLM server lifecycle: one-line errors with the log tail, and no process left behind.

Fast tests fail before a server is spawned (missing model, port taken, bad params). The slow
ones spawn vLLM from the serving environment with the tiny random model; only the SIGINT
test waits for a full start (30-90 s here). "No process left" is checked two ways: the
server's process group (the API process leads it; EngineCore and workers are in it) has no
live member, and no process carries the owner marker the server's environment gets
(`TICKET_VLLM_OWNER`), which children inherit even if they left the group.

The helpers shared with tests/test_evaluate.py (mini workspaces, process scans, the stage as
a subprocess) are in tests/helpers.py.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from tests.helpers import (
    REPO,
    SERVE,
    alive,
    default_signal_dispositions,
    leaked_shm,
    mini_workspace,
    owned_processes,
    run_evaluate,
    server_pid,
    stage_env,
    task_records,
)
from triage.params import PipelineError
from triage.server import OWNER_ENV, VLLMServer, group_pids

# ----------------------------------------------------------------------------- helpers


def command(pid: int) -> str:
    """A process's command line ("" if it is gone); vLLM renames its engine VLLM::EngineCore."""
    try:
        return " ".join(psutil.Process(pid).cmdline()).strip()
    except psutil.Error:
        return ""


class Stage:
    """`python -m stages.evaluate` running in the background; its output read line by line."""

    def __init__(self, ws: Path, **env: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "stages.evaluate"],
            cwd=ws, env=stage_env(**env), text=True,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            preexec_fn=default_signal_dispositions,
        )  # fmt: skip
        self.lines: queue.Queue[str] = queue.Queue()
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        for stream, sink in ((self.proc.stdout, self.stdout), (self.proc.stderr, self.stderr)):
            threading.Thread(target=self._pump, args=(stream, sink), daemon=True).start()

    def _pump(self, stream, sink: list[str]) -> None:
        for line in stream:
            sink.append(line)
            if sink is self.stdout:
                self.lines.put(line)

    def wait_for(self, text: str, timeout: float) -> str:
        """The first stdout line containing `text` (fails if the stage exits first)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.5)
            except queue.Empty:
                if self.proc.poll() is not None:
                    break
                continue
            if text in line:
                return line
        raise AssertionError(f"no {text!r} in the stage output:\n{self.output()}")

    def finish(self, timeout: float) -> int:
        rc = self.proc.wait(timeout=timeout)
        time.sleep(0.2)  # let the pump threads read the last lines
        return rc

    def output(self) -> str:
        return "".join(self.stdout) + "--- stderr\n" + "".join(self.stderr)[-4000:]


def error_lines(stderr: str) -> list[str]:
    """stderr from the `error: ` line on (the progress bar's lines come before it)."""
    lines = stderr.replace("\r", "\n").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("error: "))
    return lines[start:]


def fake_model(folder: Path) -> Path:
    """A folder that passes the "is there a model" check (enough for errors before a spawn)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text("{}")
    return folder


# A "server" that ignores SIGTERM, as does a child it spawns (as vLLM's API process does
# while its engine starts): only SIGKILL stops them.
_STUBBORN_CHILD = (
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"
)
_STUBBORN = (
    "import subprocess, sys; "
    f"subprocess.Popen([sys.executable, '-c', {_STUBBORN_CHILD!r}]); exec({_STUBBORN_CHILD!r})"
)


class StubbornServer(VLLMServer):
    """The lifecycle of VLLMServer around a stand-in that never becomes healthy."""

    def command(self) -> list[str]:
        return [sys.executable, "-c", _STUBBORN]


def wait_until(predicate, timeout: float) -> float:
    """Seconds until predicate() held (fails after timeout)."""
    started = time.monotonic()
    while not predicate():
        assert time.monotonic() - started < timeout, "timed out"
        time.sleep(0.1)
    return time.monotonic() - started


# ----------------------------------------------------------------------------- fast


def test_command_comes_from_params(tmp_path: Path) -> None:
    server = VLLMServer(fake_model(tmp_path / "m"), {**SERVE, "port": 8123}, tmp_path / "log")
    cmd = server.command()
    assert cmd[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    flags = dict(zip(cmd[3::2], cmd[4::2], strict=False))
    assert flags["--model"] == str((tmp_path / "m").resolve())
    assert flags["--host"] == "127.0.0.1" and flags["--port"] == "8123"
    assert flags["--max-model-len"] == "1024" and flags["--max-num-seqs"] == "8"
    assert flags["--served-model-name"] == SERVE["served_model_name"]
    assert "--enforce-eager" in cmd and "--enable-prefix-caching" in cmd
    assert server.api_key not in " ".join(cmd)  # the key travels in the environment
    env = server.env()
    assert env["VLLM_API_KEY"] == server.api_key
    assert env["VLLM_CPU_KVCACHE_SPACE"] == str(SERVE["cpu_kvcache_space_gib"])
    assert env[OWNER_ENV] == str(os.getpid())
    off = VLLMServer(tmp_path / "m", {**SERVE, "enable_prefix_caching": False}, tmp_path / "l")
    assert "--no-enable-prefix-caching" in off.command()
    default = VLLMServer(tmp_path / "m", {**SERVE, "cpu_num_of_reserved_cpu": None}, tmp_path)
    assert "VLLM_CPU_NUM_OF_RESERVED_CPU" not in default.env()  # null: vLLM's own choice
    extra = {
        "cpu_num_of_reserved_cpu": 0,
        "extra_args": ["--structured-outputs-config.backend", "guidance"],
    }
    tuned = VLLMServer(tmp_path / "m", {**SERVE, **extra}, tmp_path / "l")
    assert tuned.env()["VLLM_CPU_NUM_OF_RESERVED_CPU"] == "0"
    assert tuned.command()[-2:] == extra["extra_args"]


def test_an_adapter_is_served_on_the_base_model_under_the_served_name(tmp_path: Path) -> None:
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"r": 24, "peft_type": "LORA"}))
    template = tmp_path / "chat_template.jinja"
    server = VLLMServer(fake_model(tmp_path / "m"), SERVE, tmp_path / "log", adapter, template)
    cmd = server.command()
    flags = dict(zip(cmd[3::2], cmd[4::2], strict=False))
    name = SERVE["served_model_name"]
    assert flags["--served-model-name"] == f"{name}-base"  # requests for `name` get the LoRA
    assert cmd[cmd.index("--lora-modules") + 1] == f"{name}={adapter.resolve()}"
    assert cmd[cmd.index("--max-lora-rank") + 1] == "32"  # the next rank vLLM accepts
    assert "--enable-lora" in cmd
    assert cmd[cmd.index("--chat-template") + 1] == str(template.resolve())
    (adapter / "adapter_config.json").write_text(json.dumps({"r": 1024}))
    with pytest.raises(PipelineError, match="rank 1024 is above vLLM's largest"):
        server.command()
    (adapter / "adapter_config.json").unlink()
    with pytest.raises(PipelineError, match="adapter_config.json: not a PEFT LoRA adapter"):
        server.start()  # before anything is spawned
    assert server.proc is None


def test_bf16_is_served_as_float32_where_the_cpu_only_emulates_it(monkeypatch) -> None:
    from triage import server

    monkeypatch.setattr(server.shutil, "which", lambda name: None)  # no GPU
    monkeypatch.setattr(server, "cpu_has_bf16", lambda: False)
    assert server.serving_dtype("bfloat16") == "float32"
    assert server.serving_dtype("float16") == "float16"
    monkeypatch.setattr(server, "cpu_has_bf16", lambda: True)
    assert server.serving_dtype("bfloat16") == "bfloat16"
    monkeypatch.setattr(server.shutil, "which", lambda name: "/usr/bin/nvidia-smi")
    monkeypatch.setattr(server, "cpu_has_bf16", lambda: False)
    assert server.serving_dtype("bfloat16") == "bfloat16"  # a GPU computes bf16


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("max_num_seqs", 0),
        ("port", 70000),
        ("startup_timeout_s", "soon"),
        ("cpu_num_of_reserved_cpu", -1),
    ],
)
def test_bad_serve_params_fail_in_one_line(tmp_path: Path, key: str, value: object) -> None:
    with pytest.raises(PipelineError, match=f"params.yaml serve.{key}"):
        VLLMServer(tmp_path, {**SERVE, key: value}, tmp_path / "log")


def test_stop_kills_what_ignores_sigterm(tmp_path: Path) -> None:
    params = {**SERVE, "startup_timeout_s": 2, "shutdown_timeout_s": 1}
    server = StubbornServer(fake_model(tmp_path / "m"), params, tmp_path / "log")
    started = time.monotonic()
    with pytest.raises(PipelineError, match="not healthy after 2 s"), server:
        pass
    assert time.monotonic() - started < 2 + 1 + 5  # grace period, then SIGKILL
    assert server.pid is not None and group_pids(server.pid) == []
    assert owned_processes(owner=os.getpid()) == []


def test_owner_killed_outright_leaves_no_server(tmp_path: Path) -> None:
    """SIGKILL of the process that started the server (no cleanup code runs there): the
    watchdog stops the server's group."""
    model, log = fake_model(tmp_path / "m"), tmp_path / "log"
    script = (
        f"import sys; sys.path.insert(0, {str(REPO)!r})\n"
        "from tests.helpers import SERVE\n"
        "from tests.test_server import StubbornServer\n"
        f"params = {{**SERVE, 'startup_timeout_s': 600, 'shutdown_timeout_s': 1}}\n"
        f"StubbornServer({str(model)!r}, params, {str(log)!r}).start()\n"
    )
    owner = subprocess.Popen([sys.executable, "-c", script], cwd=tmp_path)
    try:
        wait_until(lambda: len(owned_processes(owner=owner.pid)) == 2, timeout=60)
    finally:
        owner.kill()
        owner.wait()
    assert wait_until(lambda: owned_processes(owner=owner.pid) == [], timeout=20) < 1 + 5


def test_a_stage_ends_when_its_parent_is_killed_outright(tmp_path: Path) -> None:
    """SIGKILL of `dvc repro` runs no cleanup there and DVC does not stop its stage: every
    stage's run_main asks the kernel for SIGTERM when the parent dies, and ends."""
    stage = (
        f"import sys, time; sys.path.insert(0, {str(REPO)!r})\n"
        "from triage.files import run_main\n"
        "run_main(lambda: (print('running', flush=True), time.sleep(120)))\n"
    )
    parent = (  # stands in for dvc: starts the stage, prints its pid, waits
        "import subprocess, sys\n"
        f"child = subprocess.Popen([sys.executable, '-c', {stage!r}])\n"
        "print(child.pid, flush=True)\n"
        "child.wait()\n"
    )
    dvc = subprocess.Popen([sys.executable, "-c", parent], stdout=subprocess.PIPE, text=True)
    assert dvc.stdout is not None
    pid = int(dvc.stdout.readline())
    assert dvc.stdout.readline().strip() == "running"  # the stage is in its main()
    dvc.kill()
    dvc.wait()
    wait_until(lambda: not alive(pid), timeout=30)  # fails: the stage sleeps on for 120 s


def test_missing_model_is_one_line_and_spawns_nothing(tmp_path: Path) -> None:
    ws = mini_workspace(tmp_path, task_records(["Subject: a\n\nb"]))  # no models/merged
    proc = run_evaluate(ws, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [
        "error: models/merged: no model to serve (no config.json there)"
    ]
    assert owned_processes(under=ws) == []


def test_port_taken_by_another_listener_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        ws = mini_workspace(
            tmp_path,
            task_records(["Subject: a\n\nb"]),
            model=fake_model(tmp_path / "model"),
            overrides={"serve.port": port},
        )
        proc = run_evaluate(ws, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [
        f"error: serve.port {port}: 127.0.0.1:{port} is already in use by another listener "
        "(set serve.port: null to pick a free port)"
    ]
    assert not (ws / "runs").exists()  # no server was started: no log either
    assert owned_processes(under=ws) == []


# ----------------------------------------------------------------------------- slow


@pytest.mark.slow
def test_server_never_healthy_times_out_with_log_tail(tiny_model: Path, tmp_path: Path) -> None:
    server = VLLMServer(tiny_model, {**SERVE, "startup_timeout_s": 3}, tmp_path / "vllm.log")
    since = time.time()
    started = time.monotonic()
    with pytest.raises(PipelineError) as err, server:
        pass
    assert time.monotonic() - started < 3 + 15  # a starting server gets no grace period
    first, *tail = str(err.value).splitlines()
    log = tmp_path / "vllm.log"
    assert first == f"vLLM server not healthy after 3 s (serve.startup_timeout_s) (log: {log})"
    assert tail and all(line.startswith("  | ") for line in tail)
    assert server.pid is not None and group_pids(server.pid) == []
    assert owned_processes(owner=os.getpid()) == []
    assert leaked_shm(since) == []


@pytest.mark.slow
def test_server_crashing_at_start_up_shows_the_log(tmp_path: Path) -> None:
    """A model vLLM cannot load: the server exits during start-up, and the error says so."""
    model = tmp_path / "broken"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "no_such_architecture"}')
    server = VLLMServer(model, SERVE, tmp_path / "vllm.log")
    with pytest.raises(PipelineError) as err, server:
        pass
    first, *tail = str(err.value).splitlines()
    assert first.startswith("vLLM server exited with code ") and "during start-up" in first
    assert any("no_such_architecture" in line for line in tail), tail
    assert server.pid is not None and group_pids(server.pid) == []


@pytest.mark.slow
def test_sigterm_during_start_up_leaves_no_process(tiny_model: Path, tmp_path: Path) -> None:
    """SIGTERM (e.g. from a job scheduler) once vLLM has spawned its engine process."""
    ws = mini_workspace(tmp_path, task_records(["Subject: a\n\nb"]), model=tiny_model)
    since = time.time()
    stage = Stage(ws)
    deadline = time.monotonic() + 240
    while not any(command(pid).startswith("VLLM::EngineCore") for pid in owned_processes(under=ws)):
        assert stage.proc.poll() is None, stage.output()
        assert time.monotonic() < deadline, "vLLM never spawned its engine"
        time.sleep(0.5)
    stage.proc.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    rc = stage.finish(timeout=SERVE["shutdown_timeout_s"] + 30)
    assert rc == 128 + signal.SIGTERM, stage.output()
    assert time.monotonic() - sent < 15  # no grace period for a server still starting
    assert error_lines("".join(stage.stderr)) == [
        "error: interrupted (SIGTERM); vLLM server stopped"
    ]
    assert owned_processes(under=ws) == []
    assert leaked_shm(since) == []  # the engine's shared memory went with it


@pytest.mark.slow
def test_sigint_during_the_run_stops_everything(tiny_model: Path, tmp_path: Path) -> None:
    """Ctrl-C while requests are in flight: exit 130 at once, the whole server group gone."""
    texts = [
        f"Subject: Ticket {i}\n\nPlease write a long reply about item {i}." for i in range(200)
    ]
    ws = mini_workspace(
        tmp_path,
        task_records(texts, tasks=("summary",)),  # 200 x 64 tokens: minutes at concurrency 2
        model=tiny_model,
        overrides={"serve": SERVE, "evaluate.concurrency": 2},
    )
    since = time.time()
    stage = Stage(ws)
    pid = server_pid(stage.wait_for("vLLM ready", timeout=300))
    assert len(group_pids(pid)) >= 2  # API server + EngineCore (+ worker) in one group
    time.sleep(2)  # requests in flight
    assert stage.proc.poll() is None, "the run finished before the interrupt"
    stage.proc.send_signal(signal.SIGINT)
    sent = time.monotonic()
    rc = stage.finish(timeout=SERVE["shutdown_timeout_s"] + 30)
    assert rc == 130, stage.output()
    assert time.monotonic() - sent < SERVE["shutdown_timeout_s"] + 15
    assert error_lines("".join(stage.stderr)) == [
        "error: interrupted (SIGINT); vLLM server stopped"
    ]
    assert group_pids(pid) == []
    assert owned_processes(under=ws) == []
    assert leaked_shm(since) == []
    assert not (ws / "metrics" / "eval.json").exists()
