"""The vLLM server lifecycle: start an OpenAI-compatible server, wait until healthy, always stop it.

The server runs from the serving environment (see `common.serve_python`) in a process group
of its own, bound to 127.0.0.1 on a port chosen at run time, with a random API key. It is
stopped with its whole process group (vLLM spawns engine processes) when the `with` block
ends for any reason: success, exception, Ctrl-C, or SIGTERM (turned into an exception
here so that the cleanup runs). If this Python process is killed outright, the kernel sends
the server SIGTERM (PR_SET_PDEATHSIG), so no vLLM process outlives the command that
started it.

Usage:
    with VLLMServer("models/merged", serve_params) as server:
        httpx.post(server.url + "/v1/chat/completions", headers=server.headers, ...)
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any

import httpx

from stages.common import PipelineError, serve_python

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Runs in the child before exec: ask the kernel to SIGTERM it when its parent dies."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def free_port(host: str = "127.0.0.1") -> int:
    """Ask the kernel for a free TCP port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return True
        return False


def _sigterm_to_exception(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


class VLLMServer:
    """Context manager around `python -m vllm.entrypoints.openai.api_server`."""

    def __init__(self, model: str | Path, params: dict[str, Any], log_path: str | Path) -> None:
        self.model = Path(model)
        self.params = params
        self.log_path = Path(log_path)
        self.host = "127.0.0.1"
        self.port = int(params.get("port") or 0)
        self.api_key = secrets.token_urlsafe(24)
        self.name = str(params.get("served_model_name", "ticket-triage"))
        self.proc: subprocess.Popen[bytes] | None = None
        self.startup_s: float | None = None
        self._old_sigterm: Any = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}

    def command(self) -> list[str]:
        """The server command line; every knob comes from params.yaml `serve:`."""
        p = self.params
        cmd = [
            str(serve_python()), "-m", "vllm.entrypoints.openai.api_server",
            "--model", str(self.model),
            "--served-model-name", self.name,
            "--host", self.host,
            "--port", str(self.port),
            "--dtype", str(p.get("dtype", "auto")),
            "--max-model-len", str(p["max_model_len"]),
            "--max-num-seqs", str(p["max_num_seqs"]),
            "--seed", str(p.get("seed", 0)),
            "--disable-uvicorn-access-log",
        ]  # fmt: skip
        if p.get("enforce_eager", True):
            cmd.append("--enforce-eager")
        if p.get("enable_prefix_caching"):
            cmd.append("--enable-prefix-caching")
        if int(p.get("tensor_parallel_size", 1)) > 1:
            cmd += ["--tensor-parallel-size", str(p["tensor_parallel_size"])]
        cmd += [str(a) for a in p.get("extra_args", [])]
        return cmd

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["VLLM_API_KEY"] = self.api_key  # not on the command line, where `ps` shows it
        env["VLLM_CPU_KVCACHE_SPACE"] = str(self.params.get("cpu_kvcache_space_gib", 1))
        env.setdefault("VLLM_LOGGING_LEVEL", "INFO")
        # the serving environment must not see the pipeline environment's packages
        env.pop("PYTHONPATH", None)
        env.pop("VIRTUAL_ENV", None)
        return env

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return "(no server log)"
        return "\n".join(text.rstrip().splitlines()[-lines:])

    def start(self) -> None:
        if not (self.model / "config.json").is_file():
            raise PipelineError(f"{self.model}: no model to serve (config.json missing)")
        if self.port and port_in_use(self.port, self.host):
            raise PipelineError(f"serve.port {self.port} on {self.host} is already in use")
        if not self.port:
            self.port = free_port(self.host)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._old_sigterm = signal.signal(signal.SIGTERM, _sigterm_to_exception)
        started = time.monotonic()
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                self.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env(),
                start_new_session=True,  # its own process group, stopped as a whole
                preexec_fn=_die_with_parent,
            )
        self._wait_healthy(float(self.params.get("startup_timeout_s", 300)))
        self.startup_s = time.monotonic() - started

    def _wait_healthy(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise PipelineError(
                    f"vLLM server exited with code {self.proc.returncode} during start-up "
                    f"(log: {self.log_path}):\n{self.log_tail()}"
                )
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            time.sleep(0.5)
        raise PipelineError(
            f"vLLM server not healthy after {timeout_s:.0f} s (serve.startup_timeout_s; "
            f"log: {self.log_path}):\n{self.log_tail()}"
        )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        """SIGTERM the whole process group, SIGKILL whatever is left after a grace period."""
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=float(self.params.get("shutdown_timeout_s", 20)))
            # engine processes may linger after the API process has gone
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        if self._old_sigterm is not None:
            signal.signal(signal.SIGTERM, self._old_sigterm)
            self._old_sigterm = None

    def __enter__(self) -> VLLMServer:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


if __name__ == "__main__":
    # `python -m stages.vllm_server MODEL`: serve a model interactively (`make serve`)
    import yaml

    serve_params = yaml.safe_load(Path("params.yaml").read_text())["serve"]
    model = sys.argv[1] if len(sys.argv) > 1 else "models/merged"
    with VLLMServer(model, serve_params, "runs/serve.log") as srv:
        print(f"vLLM serving {model} at {srv.url} (model name {srv.name!r}); Ctrl-C stops it")
        print(f"API key: {srv.api_key}")
        while srv.alive():
            time.sleep(1)
