"""The answers to the test records, from a running server or from a vLLM server started here.

The evaluate stage asks one question, "what does the served model answer to each record?",
and this is where the two ways of getting them live: a server already running somewhere
(`evaluate.base_url`: a GPU box, a staging deployment), or vLLM started on a model folder
for the length of the requests (`triage/server.py`), optionally with a LoRA adapter on it.
Either way the requests are the same (`triage/client.py`), and the result says what answered,
so the metrics never credit a local model for a remote server's answers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from triage.client import Endpoint, Outcome, ServerGone, remote_endpoint, send_all
from triage.params import PipelineError
from triage.server import VLLMServer, check_serve_params, write_chat_template


@dataclass
class Answers:
    outcomes: list[Outcome]  # in record order
    wall_s: float  # the requests, server start-up excluded
    startup_s: float | None  # None: a server that was already running
    served: dict[str, Any]  # what answered (URL or model, adapter, dtype, vLLM version)


def from_remote(
    records: list[dict[str, Any]],
    labels: dict[str, list[str]],
    params: dict[str, Any],
    budgets: dict[str, int],
) -> Answers:
    """Send every record to the running server at `evaluate.base_url`."""
    cfg = params["evaluate"]
    preferred = (params.get("serve") or {}).get("served_model_name")
    remote = remote_endpoint(cfg, preferred, cfg["api_key_env"])
    print(f"evaluate: {len(records)} requests to {remote.url} (model {remote.model!r})", flush=True)
    try:
        outcomes, wall_s = send_all(records, labels, remote, cfg, budgets)
    except ServerGone as e:
        raise PipelineError(f"evaluate.base_url {remote.url} stopped answering: {e}") from None
    return Answers(outcomes, wall_s, None, {"url": remote.url, "model": remote.model})


def from_own_server(
    records: list[dict[str, Any]],
    labels: dict[str, list[str]],
    params: dict[str, Any],
    budgets: dict[str, int],
    model: Path,
    adapter: Path | None,
    log: Path,
) -> Answers:
    """Start vLLM on `model` (with `adapter` through vLLM's LoRA support), send every record,
    and stop the server before returning, whatever happens."""
    cfg, serve = params["evaluate"], check_serve_params(params.get("serve") or {})
    if cfg["concurrency"] > serve["max_num_seqs"]:
        print("evaluate: note: concurrency > serve.max_num_seqs: requests queue in vLLM")
    template = None
    if adapter is not None:  # the base model's own template may not be the trained one
        template = log.with_name("chat_template.jinja")
        write_chat_template(template, model, params)
    server = VLLMServer(model, serve, log, adapter, template)
    what = f"{adapter} on {model}" if adapter else str(model)
    print(f"evaluate: starting vLLM on {what}, dtype {server.dtype} (log: {log})", flush=True)
    with server:
        print(
            f"evaluate: vLLM ready at {server.url} in {server.startup_s:.1f} s "
            f"(pid {server.pid}); {len(records)} requests",
            flush=True,
        )
        endpoint = Endpoint(server.url, server.headers, server.name, server.check_alive)
        try:
            outcomes, wall_s = send_all(records, labels, endpoint, cfg, budgets)
        except ServerGone as e:
            server.check_alive()  # dead: that error, with the log tail
            raise server.failure(f"vLLM server stopped answering: {e}") from None
        served = {"model": str(model), "adapter": adapter and str(adapter)}
        served |= {"dtype": server.dtype, "vllm": server.vllm_version()}
        return Answers(outcomes, wall_s, server.startup_s, served)
