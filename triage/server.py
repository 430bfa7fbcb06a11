"""The vLLM server lifecycle: start an OpenAI-compatible server, wait until healthy, always stop it.

The server runs from the serving environment (see `triage.machine.serve_python`) in a
process group of its own, bound to 127.0.0.1 on a port chosen at run time (or `serve.port`),
with a random API key. vLLM spawns more processes (`VLLM::EngineCore`, `VLLM::Worker`, a
multiprocessing resource tracker); they all stay in that group, and the group is stopped as
a whole (SIGTERM, then SIGKILL after `serve.shutdown_timeout_s`, or 2 s for a server still
starting, which ignores SIGTERM; see `stop_group`) when the `with` block ends for any
reason: success, exception, Ctrl-C, or SIGTERM/SIGHUP (turned into `Terminated`,
triage/signals.py, so that the cleanup runs). `stop()` returns only once no process of the
group is left. If this Python process is killed outright (SIGKILL, OOM killer), a watchdog
stops the group: a tiny process in a session of its own that holds a pipe from this one and
sees it close. (The kernel's PR_SET_PDEATHSIG is not enough: it signals the API process
only, which ignores SIGTERM while its engine starts, measured here.)

Every error is one line (what went wrong, which params key to look at, where the log is)
followed by the tail of the server log.

Usage:
    with VLLMServer("models/merged", params["serve"], "runs/vllm.log") as server:
        httpx.post(server.url + "/v1/chat/completions", headers=server.headers, ...)
        server.check_alive()   # PipelineError with the log tail if the server died

`python -m triage.server [MODEL] [--port N]` (`make serve`) serves a model interactively.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psutil

from triage.files import write_text
from triage.machine import ROOT, cpu_has_bf16, serve_python
from triage.params import PipelineError, Serve, load_params, model_name_or_path, validated
from triage.records import training_chat_template
from triage.signals import Terminated, raise_terminated

# set in the server's environment: the pid of the process that started it
OWNER_ENV = "TICKET_VLLM_OWNER"
SERVE_INFO = Path("runs/serve.json")  # url + key of `make serve`, read by `make chat`


# The watchdog (run by the pipeline's Python in a session of its own, so that neither a
# Ctrl-C nor a kill of this process's group reaches it). Its stdin is a pipe from the owner:
# one byte means the owner stopped the server itself; end of file without one means the
# owner died, and the watchdog stops the server's process group as stop() would have.
_WATCHDOG = """
import sys
sys.path.insert(0, sys.argv[3])
if not sys.stdin.buffer.read(1):
    from triage.server import stop_group
    stop_group(int(sys.argv[1]), float(sys.argv[2]))
"""


def free_port(host: str = "127.0.0.1") -> int:
    """Ask the kernel for a free TCP port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """True if something listens on (or holds) host:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return True
        return False


def group_pids(pgid: int) -> list[int]:
    """Live (non-zombie) processes of a process group."""
    pids = []
    for proc in psutil.process_iter(["status"]):
        if proc.info["status"] in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD):
            continue
        with contextlib.suppress(OSError):  # gone meanwhile
            if os.getpgid(proc.pid) == pgid:
                pids.append(proc.pid)
    return pids


def _is_resource_tracker(pid: int) -> bool:
    try:
        return "multiprocessing.resource_tracker" in " ".join(psutil.Process(pid).cmdline())
    except psutil.Error:  # gone, or not ours to read
        return False


def stop_group(pgid: int, grace_s: float, reap: Callable[[], object] | None = None) -> list[int]:
    """Stop every process of a group; returns the pids that survived (none, short of a
    process stuck in the kernel).

    SIGTERM first, and up to grace_s for a clean exit. Then SIGKILL to all but Python's
    multiprocessing resource tracker: once the others are gone it unlinks the shared memory
    they registered (vLLM's engine maps hundreds of MB from /dev/shm, and killing the
    tracker together with it leaks them, seen here), and it gets a few seconds for that
    before its own SIGKILL. `reap` collects an exited child of the caller (the API process).
    """

    def wait(done: Callable[[], bool], seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not done() and time.monotonic() < deadline:
            if reap is not None:
                reap()
            time.sleep(0.1)

    def gone() -> bool:
        return not group_pids(pgid)

    def only_trackers() -> bool:
        return all(_is_resource_tracker(pid) for pid in group_pids(pgid))

    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGTERM)
    wait(gone, grace_s)
    if not gone():
        deadline = time.monotonic() + 10
        while not only_trackers() and time.monotonic() < deadline:
            for pid in group_pids(pgid):  # again and again: a dying process may have spawned
                if not _is_resource_tracker(pid):
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(pid, signal.SIGKILL)
            wait(only_trackers, 0.5)
        wait(gone, 5.0)  # the tracker cleans up and exits by itself
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
        wait(gone, 5.0)
    if reap is not None:
        reap()
    return group_pids(pgid)


def serving_dtype(dtype: str | None) -> str:
    """The dtype to serve with: serve.dtype, except bfloat16 on a CPU without native bfloat16,
    where vLLM emulates it (oneDNN falls back to plain torch), several times slower than
    float32. The same maths in more precision; the train stage makes the same choice."""
    dtype = str(dtype or "auto")
    if dtype == "bfloat16" and shutil.which("nvidia-smi") is None and not cpu_has_bf16():
        return "float32"
    return dtype


def check_serve_params(params: Any) -> dict[str, Any]:
    """The `serve:` section (triage/params.py `Serve`), checked up front: a typo fails in a
    second, not after the server's start-up."""
    validated(Serve, params, "serve")
    return params


# vLLM's accepted --max-lora-rank values (its LoRA kernels are built for these)
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def lora_rank_of(adapter: Path) -> int:
    """The smallest --max-lora-rank vLLM accepts that holds the adapter's rank."""
    config = adapter / "adapter_config.json"
    try:
        rank = int(json.loads(config.read_text(encoding="utf-8"))["r"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise PipelineError(f"{config}: not a PEFT LoRA adapter config ({e})") from None
    fitting = [r for r in LORA_RANKS if r >= rank]
    if not fitting:
        raise PipelineError(f"{config}: rank {rank} is above vLLM's largest ({LORA_RANKS[-1]})")
    return fitting[0]


def model_folder(folder: Path) -> Path:
    """The folder vLLM loads for `folder`: itself, or, for a base model the base_model stage
    only points at (a local Hugging Face folder: `source.json`, no weights), that folder."""
    if (folder / "config.json").is_file() or not (folder / "source.json").is_file():
        return folder
    return Path(model_name_or_path(folder))


def write_chat_template(path: Path, model: str | Path, params: dict[str, Any]) -> None:
    """Write to `path` LlamaFactory's training template (params.yaml `template` and
    `default_system`) rendered for `model`'s tokenizer: vLLM's `--chat-template` when it
    serves an adapter on the base model, whose own template may not be the trained one."""
    write_text(path, training_chat_template(model, params["template"], params["default_system"]))


class VLLMServer:
    """Context manager around `python -m vllm.entrypoints.openai.api_server`.

    With `adapter`, vLLM serves `model` as the base and the LoRA adapter on it under the
    served model name (`--enable-lora`); the base alone answers as `<name>-base`.
    `chat_template` replaces the model's own (the adapter was trained with LlamaFactory's).
    """

    def __init__(
        self,
        model: str | Path,
        params: dict[str, Any],
        log_path: str | Path,
        adapter: str | Path | None = None,
        chat_template: str | Path | None = None,
    ) -> None:
        self.model = Path(model)
        self.adapter = Path(adapter) if adapter is not None else None
        self.chat_template = Path(chat_template) if chat_template is not None else None
        self.params = check_serve_params(params)
        self.log_path = Path(log_path)
        self.host = "127.0.0.1"
        self.port = int(params.get("port") or 0)
        self.api_key = secrets.token_urlsafe(24)
        self.name = str(params.get("served_model_name") or "ticket-triage")
        self.dtype = serving_dtype(params.get("dtype"))
        self.proc: subprocess.Popen[bytes] | None = None
        self._watchdog: subprocess.Popen[bytes] | None = None
        self.startup_s: float | None = None
        self._old_handlers: dict[int, Any] = {}

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}

    @property
    def pid(self) -> int | None:
        """Pid of the API server process, which is also the id of the server's process group."""
        return self.proc.pid if self.proc is not None else None

    def command(self) -> list[str]:
        """The server command line; every knob comes from params.yaml `serve:`."""
        p = self.params
        cmd = [
            str(serve_python()), "-m", "vllm.entrypoints.openai.api_server",
            "--model", str(self.model.resolve()),
            "--served-model-name", self.name if self.adapter is None else f"{self.name}-base",
            "--host", self.host,
            "--port", str(self.port),
            "--dtype", self.dtype,
            "--max-model-len", str(p["max_model_len"]),
            "--max-num-seqs", str(p["max_num_seqs"]),
            "--seed", str(p.get("seed", 0)),
            "--disable-uvicorn-access-log",
        ]  # fmt: skip
        if p.get("enforce_eager", True):
            cmd.append("--enforce-eager")
        if p.get("enable_prefix_caching") is not None:  # null: vLLM's default for the model
            prefix = "" if p["enable_prefix_caching"] else "no-"
            cmd.append(f"--{prefix}enable-prefix-caching")
        if int(p.get("tensor_parallel_size") or 1) > 1:
            cmd += ["--tensor-parallel-size", str(p["tensor_parallel_size"])]
        if self.adapter is not None:
            cmd += [
                "--enable-lora", "--max-loras", "1",
                "--max-lora-rank", str(lora_rank_of(self.adapter)),
                "--lora-modules", f"{self.name}={self.adapter.resolve()}",
            ]  # fmt: skip
        if self.chat_template is not None:
            cmd += ["--chat-template", str(self.chat_template.resolve())]
        cmd += [str(a) for a in p.get("extra_args") or []]
        return cmd

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["VLLM_API_KEY"] = self.api_key  # not on the command line, where `ps` shows it
        env["VLLM_CPU_KVCACHE_SPACE"] = str(self.params.get("cpu_kvcache_space_gib", 1))
        reserved = self.params.get("cpu_num_of_reserved_cpu")
        if reserved is not None:  # null: vLLM's own choice (one core for its scheduler)
            env["VLLM_CPU_NUM_OF_RESERVED_CPU"] = str(reserved)
        env.setdefault("VLLM_LOGGING_LEVEL", "INFO")
        env[OWNER_ENV] = str(os.getpid())  # lets tests (and people) find the server's processes
        # the serving environment must not see the pipeline environment's packages
        env.pop("PYTHONPATH", None)
        env.pop("VIRTUAL_ENV", None)
        return env

    def vllm_version(self) -> str:
        """The vLLM version of the serving environment (vllm-cpu on a CPU box, vllm on a GPU)."""
        code = (
            "import importlib.metadata as m\n"
            "for name in ('vllm', 'vllm-cpu'):\n"
            "    try: print(name, m.version(name)); break\n"
            "    except m.PackageNotFoundError: pass"
        )
        out = subprocess.run(
            [str(serve_python()), "-c", code], capture_output=True, text=True, env=self.env()
        )
        return out.stdout.strip() or "unknown"

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return "(no server log)"
        tail = text.rstrip().splitlines()[-lines:]
        return "\n".join("  | " + line for line in tail) if tail else "  | (server log is empty)"

    def failure(self, what: str) -> PipelineError:
        """One line saying what went wrong, then the tail of the server log."""
        return PipelineError(f"{what} (log: {self.log_path})\n{self.log_tail()}")

    def start(self) -> None:
        if not (self.model / "config.json").is_file():
            raise PipelineError(f"{self.model}: no model to serve (no config.json there)")
        if self.adapter is not None:
            lora_rank_of(self.adapter)  # a missing or foreign adapter fails here, not in vLLM
        if self.port and port_in_use(self.port, self.host):
            raise PipelineError(
                f"serve.port {self.port}: {self.host}:{self.port} is already in use by another "
                "listener (set serve.port: null to pick a free port)"
            )
        if not self.port:
            self.port = free_port(self.host)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGHUP):
                self._old_handlers[signum] = signal.signal(signum, raise_terminated)
        started = time.monotonic()
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                self.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env(),
                start_new_session=True,  # its own process group (and no terminal's Ctrl-C)
            )
        self._watchdog = subprocess.Popen(
            [sys.executable, "-c", _WATCHDOG, str(self.proc.pid), str(self._grace_s()), str(ROOT)],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self._wait_healthy(float(self.params.get("startup_timeout_s", 300)))
        self.startup_s = time.monotonic() - started

    def _wait_healthy(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise self.failure(
                    f"vLLM server exited with code {self.proc.returncode} during start-up"
                )
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    self._check_identity()
                    return
            time.sleep(0.5)
        raise self.failure(
            f"vLLM server not healthy after {timeout_s:g} s (serve.startup_timeout_s)"
        )

    def _check_identity(self) -> None:
        """The healthy server on our port must be ours: it knows our key and model name
        (guards against another process grabbing the free port before vLLM bound it)."""
        try:
            r = httpx.get(self.url + "/v1/models", headers=self.headers, timeout=10)
            names = [m.get("id") for m in r.json().get("data", [])] if r.status_code == 200 else []
        except (httpx.HTTPError, ValueError):
            names = []
        if self.name not in names:
            raise self.failure(
                f"the server on {self.url} is not the one started here (another listener on "
                "the port?)"
            )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def check_alive(self) -> None:
        """Raise a PipelineError with the log tail if the server process has exited."""
        if self.proc is not None and self.proc.poll() is not None:
            raise self.failure(
                f"vLLM server died during the run (exit code {self.proc.returncode})"
            )

    def stop(self) -> None:
        """Stop the whole process group and return once none of it is left.

        SIGTERM first (vLLM shuts its engine down), SIGKILL for whatever is left after
        serve.shutdown_timeout_s. Idempotent; safe to call when start() failed half-way.
        """
        deferred: list[int] = []
        held = self._hold_signals(deferred)
        try:
            if self.proc is not None:
                # a server still starting ignores SIGTERM (and serves nothing): no grace period
                grace_s = self._grace_s() if self.startup_s is not None else 2.0
                left = stop_group(self.proc.pid, grace_s, reap=self.proc.poll)
                if left:  # short of an unkillable (D-state) process this cannot happen
                    print(f"warning: vLLM processes {left} survived SIGKILL", file=sys.stderr)
            if self._watchdog is not None:  # stand it down: the group is gone
                try:
                    self._watchdog.communicate(b"x", timeout=5)
                except (OSError, subprocess.TimeoutExpired):
                    self._watchdog.kill()
                    self._watchdog.wait()
                self._watchdog = None
        finally:
            # the handlers from before start() win over ours held here
            for signum, handler in {**held, **self._old_handlers}.items():
                signal.signal(signum, handler)
            self._old_handlers = {}
        if deferred:  # a Ctrl-C or SIGTERM arrived while stopping: honour it now
            raise KeyboardInterrupt() if deferred[0] == signal.SIGINT else Terminated(deferred[0])

    def _grace_s(self) -> float:
        return float(self.params.get("shutdown_timeout_s", 20))

    @staticmethod
    def _hold_signals(deferred: list[int]) -> dict[int, Any]:
        """Defer SIGINT/SIGTERM/SIGHUP while stopping, so that a second Ctrl-C cannot cut
        the cleanup short (it is bounded: grace period + 10 s)."""
        if threading.current_thread() is not threading.main_thread():
            return {}
        held = {}
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            held[signum] = signal.signal(signum, lambda s, f: deferred.append(s))
        return held

    def __enter__(self) -> VLLMServer:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


PRIORITY_EXAMPLE = (
    "Assign this support ticket a priority. Answer with one of: low, medium, high, urgent."
    "\nSubject: Site down\n\nCheckout fails for every customer since 9:00."
)


def curl_example(url: str, api_key: str, model: str) -> str:
    """A one-request example for people (the evaluator's own requests look the same)."""
    body = {
        "model": model,
        "messages": [
            {"role": "system", "content": "You are a support-ticket triage assistant. ..."},
            {"role": "user", "content": PRIORITY_EXAMPLE},
        ],
        "temperature": 0,
        "structured_outputs": {"choice": ["low", "medium", "high", "urgent"]},
    }
    return (
        f"curl -s {url}/v1/chat/completions -H 'Authorization: Bearer {api_key}' "
        f"-H 'Content-Type: application/json' -d '{json.dumps(body)}'"
    )


def serve_forever(model: str, port: int | None, log_path: str, adapter: str | None) -> None:
    """`make serve`: start the server, print how to reach it, wait for Ctrl-C."""
    all_params = load_params()
    params = dict(all_params["serve"])
    if port is not None:
        params["port"] = port
    template = None
    if adapter is not None:  # served on the base model, with the template it was trained with
        template = Path(log_path).with_name("serve_chat_template.jinja")
        write_chat_template(template, model, all_params)
    what = f"{adapter} on {model}" if adapter else model
    print(f"starting vLLM on {what} (log: {log_path}) ...", flush=True)
    with VLLMServer(model, params, log_path, adapter, template) as srv:
        info = {"url": srv.url, "api_key": srv.api_key, "model": srv.name, "pid": srv.pid}
        SERVE_INFO.parent.mkdir(parents=True, exist_ok=True)
        write_text(SERVE_INFO, json.dumps(info) + "\n")
        os.chmod(SERVE_INFO, 0o600)  # it holds the key
        try:
            print(f"vLLM ready in {srv.startup_s:.0f} s: {srv.url} (model name {srv.name!r})")
            print(f"API key: {srv.api_key}   (also in {SERVE_INFO}; `make chat` uses it)")
            print("example:\n  " + curl_example(srv.url, srv.api_key, srv.name))
            print("Ctrl-C stops the server.", flush=True)
            while srv.alive():
                time.sleep(1)
            srv.check_alive()
        finally:
            with contextlib.suppress(FileNotFoundError):
                SERVE_INFO.unlink()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve a model with vLLM until Ctrl-C.")
    parser.add_argument(
        "model", nargs="?", help="default: models/merged, or models/base with --adapter"
    )
    parser.add_argument("--adapter", help="a LoRA adapter folder, served on MODEL")
    parser.add_argument("--port", type=int, default=None, help="default: serve.port or free")
    parser.add_argument("--log", default="runs/serve.log")
    args = parser.parse_args(argv)
    try:
        model = args.model or ("models/base" if args.adapter else "models/merged")
        serve_forever(model, args.port, args.log, args.adapter)
    except PipelineError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt as e:
        print("vLLM server stopped.", file=sys.stderr)
        sys.exit(128 + getattr(e, "signum", signal.SIGINT))


if __name__ == "__main__":
    main()
