"""The evaluate stage's client of an OpenAI-compatible server: request bodies, budgets, sending.

`send_all` sends every record to `/v1/chat/completions` with at most `evaluate.concurrency`
requests in flight, through the `openai` client (asyncio); connection errors, 429 and 5xx are
retried by tenacity with exponential backoff (`evaluate.retries`); a request that times out
(`evaluate.request_timeout_s`) or still fails becomes an `Outcome` with an error, never a
hang, and a server that stops answering raises `ServerGone`. The evaluate stage, `make chat`
(triage/chat.py) and the benchmarks build their requests with `request_body`, so all three
send what the stage sends.
"""

from __future__ import annotations

import asyncio
import functools
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from openai import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AsyncOpenAI,
    AuthenticationError,
    OpenAI,
    OpenAIError,
    PermissionDeniedError,
)
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from triage.params import Evaluate, PipelineError, param_integer, validated
from triage.prepared import PREPARED, read_split
from triage.records import constraint, messages

BACKOFF_S, BACKOFF_MAX_S = 0.5, 10.0  # first retry delay, doubling up to this


class ServerGone(Exception):
    """The server stopped answering: connections refused after every retry, or many
    requests in a row without an answer (a wedged server would otherwise cost one
    request timeout per request)."""


def check_eval_params(cfg: Any) -> dict[str, Any]:
    """The `evaluate:` section (triage/params.py `Evaluate`), checked before a server starts."""
    validated(Evaluate, cfg, "evaluate")
    return cfg


# ----------------------------------------------------------------------------- requests


def token_budgets(
    tasks: dict[str, Any], default: int | None, sized: Callable[[str], int] | None = None
) -> dict[str, int]:
    """max_tokens per generation task: its own `max_tokens` in params.yaml `tasks` (a reply
    needs more than a one-line summary), else evaluate.max_tokens, else (both null) `sized`,
    the budget the training answers of that task call for (answer_budget)."""
    budgets = {}
    for name, task in tasks.items():
        if task["kind"] == "generation":
            value = task.get("max_tokens")
            if value is not None:
                param_integer(value, f"tasks.{name}.max_tokens", 1)
            elif default is not None:
                value = default
            elif sized is not None:
                value = sized(name)
            else:
                raise PipelineError(f"params.yaml tasks.{name}.max_tokens: not set")
            budgets[name] = int(value)
    return budgets


def answer_budget(lengths: list[int]) -> int:
    """A generation task's answer cap from its training answers' lengths in tokens: half
    again their 95th percentile, so a trained model's ordinary answers end by themselves
    (`truncated_rate` in the metrics says when they do not) and a runaway one stops soon."""
    import numpy as np

    if not lengths:
        raise PipelineError(f"{PREPARED / 'train.jsonl'}: no training answers to size max_tokens")
    return max(1, math.ceil(1.5 * float(np.percentile(lengths, 95))))


def stage_budgets(params: dict[str, Any], served: Path) -> dict[str, int]:
    """The max_tokens of each generation task as the stage sends them (served: the folder of
    the served model, whose tokenizer counts the training answers when the params size none)."""
    cfg = params.get("evaluate") or {}
    return token_budgets(params["tasks"], cfg.get("max_tokens"), sized_budgets(served))


def sized_budgets(tokenizer_folder: Path) -> Callable[[str], int]:
    """answer_budget of a task, its training answers counted by the served model's tokenizer
    (tokenizer and training split loaded once, and only if a task needs them)."""

    @functools.cache
    def counted() -> tuple[Any, list[dict[str, Any]]]:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(tokenizer_folder)), read_split("train")

    def sized(name: str) -> int:
        if not (tokenizer_folder / "tokenizer_config.json").is_file():
            raise PipelineError(
                f"params.yaml evaluate.max_tokens is empty: sizing tasks.{name}'s answers needs "
                f"the model's tokenizer in {tokenizer_folder} (not found); set a number"
            )
        tokenizer, train = counted()
        answers = [str(r["answers"][name]) for r in train if name in r.get("answers", {})]
        lengths = [len(tokenizer.encode(a, add_special_tokens=False)) for a in answers]
        return answer_budget(lengths)

    return sized


def request_body(
    record: dict[str, Any],
    model: str,
    labels: dict[str, list[str]],
    max_tokens: int | dict[str, int],
) -> dict[str, Any]:
    """One chat-completions request, its answer constrained to the record's shape
    (triage/records.py: label sets for classification, one line per task)."""
    structured, budget = constraint(record["tasks"], labels, max_tokens)
    body: dict[str, Any] = {
        "model": model,
        "messages": messages(record),
        "temperature": 0.0,
        "max_tokens": budget,
    }
    if structured is not None:
        body["structured_outputs"] = structured
    return body


@dataclass
class Outcome:
    """What came back for one request."""

    content: str | None = None
    finish_reason: str | None = None
    output_tokens: int = 0
    latency_s: float | None = None  # whole request, retries included
    error: str | None = None
    attempts: int = 0
    unanswered: bool = False  # timed out or failed in transport after every retry


@dataclass
class Endpoint:
    url: str
    headers: dict[str, str]
    model: str
    check: Callable[[], None] | None = None  # raises if the server died (own server only)


def transient(error: BaseException) -> bool:
    """Worth another attempt: a refused or broken connection, 429 or 5xx. Not a timeout (a
    server that did not answer within evaluate.request_timeout_s would cost as much again)
    and not another 4xx (a request the server rejects will not improve)."""
    if isinstance(error, APITimeoutError | TimeoutError):
        return False
    if isinstance(error, APIConnectionError):
        return True
    return isinstance(error, APIStatusError) and (
        error.status_code == 429 or error.status_code >= 500
    )


async def post_chat(client: AsyncOpenAI, body: dict[str, Any], cfg: dict[str, Any]) -> Outcome:
    """One request through the openai client, retried by tenacity (`transient` errors,
    exponential backoff with jitter); errors become an Outcome, except a vanished server."""
    timeout_s, retries = float(cfg["request_timeout_s"]), int(cfg["retries"])
    request = {k: v for k, v in body.items() if k != "structured_outputs"}
    if "structured_outputs" in body:  # vLLM's extension of the OpenAI API
        request["extra_body"] = {"structured_outputs": body["structured_outputs"]}
    retrying = AsyncRetrying(
        stop=stop_after_attempt(retries + 1),
        wait=wait_exponential_jitter(multiplier=BACKOFF_S, max=BACKOFF_MAX_S, jitter=BACKOFF_S),
        retry=retry_if_exception(transient),
        reraise=True,
    )
    started, attempts = time.monotonic(), 0

    def failed(error: str, unanswered: bool = False) -> Outcome:
        elapsed = time.monotonic() - started
        return Outcome(latency_s=elapsed, error=error, attempts=attempts, unanswered=unanswered)

    try:
        async for attempt in retrying:
            with attempt:
                attempts = attempt.retry_state.attempt_number
                async with asyncio.timeout(timeout_s):  # the whole attempt, however it trickles
                    completion = await client.chat.completions.create(**request)
    except (TimeoutError, APITimeoutError):
        return failed(f"timeout after {timeout_s:g} s (evaluate.request_timeout_s)", True)
    except APIConnectionError as e:  # refused, reset, disconnected, after every retry
        cause = e.__cause__ or e
        error = f"{type(cause).__name__}: {cause}".rstrip(": ")
        if type(cause).__name__ == "ConnectError":
            raise ServerGone(error) from None
        return failed(f"{error} (after {retries} retries)", unanswered=True)
    except APIStatusError as e:
        error = f"HTTP {e.status_code}: {e.response.text[:300]}"
        return failed(f"{error} (after {retries} retries)" if transient(e) else error)
    except OpenAIError as e:  # an answer the client cannot read as a chat completion
        return failed(f"bad response: {e}")
    try:
        choice = completion.choices[0]
        content = choice.message.content or ""
    except (AttributeError, IndexError, TypeError) as e:
        return failed(f"bad response: {e!r}")
    usage = completion.usage
    return Outcome(
        content=content,
        finish_reason=choice.finish_reason,
        output_tokens=int(getattr(usage, "completion_tokens", 0) or 0),
        latency_s=time.monotonic() - started,
        attempts=attempts,
    )


def api_key(endpoint_headers: dict[str, str]) -> str:
    """The bearer token of the headers ("EMPTY", vLLM's convention, for a server without one)."""
    return endpoint_headers.get("Authorization", "").removeprefix("Bearer ") or "EMPTY"


def openai_client(endpoint: Endpoint, timeout_s: float) -> AsyncOpenAI:
    """The async client of the endpoint. Retries are post_chat's (tenacity), so none here;
    the client's own timeout is only a backstop to the per-attempt one."""
    return AsyncOpenAI(
        base_url=endpoint.url + "/v1",
        api_key=api_key(endpoint.headers),
        max_retries=0,
        timeout=timeout_s,
    )


async def _send_all(
    bodies: list[dict[str, Any]], endpoint: Endpoint, cfg: dict[str, Any], progress: bool = True
) -> list[Outcome]:
    from tqdm import tqdm

    concurrency = int(cfg["concurrency"])
    slots = asyncio.Semaphore(concurrency)
    outcomes: list[Outcome] = [Outcome() for _ in bodies]
    give_up_after = 2 * concurrency + 2  # unanswered requests in a row (no answer between)
    streak = [0]

    async def one(i: int) -> None:
        async with slots:
            outcomes[i] = outcome = await post_chat(client, bodies[i], cfg)
        streak[0] = streak[0] + 1 if outcome.unanswered else 0
        if streak[0] >= give_up_after:
            raise ServerGone(
                f"{streak[0]} requests in a row got no answer, the last: {outcome.error}"
            )

    async def watch(check: Callable[[], None]) -> None:
        while True:
            check()  # raises PipelineError (with the server log tail) once the server is dead
            await asyncio.sleep(0.5)

    async with openai_client(endpoint, float(cfg["request_timeout_s"]) + 5) as client:
        requests = {asyncio.create_task(one(i)) for i in range(len(bodies))}
        pending = set(requests)
        if endpoint.check is not None:
            pending.add(asyncio.create_task(watch(endpoint.check)))
        bar = tqdm(
            total=len(bodies),
            desc="evaluate",
            unit="req",
            file=sys.stderr,
            mininterval=1,
            disable=not progress,
        )
        try:
            while pending & requests:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    task.result()  # re-raises ServerGone, or the watcher's PipelineError
                    bar.update(1)
        finally:
            bar.close()
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
    return outcomes


def send_all(
    records: list[dict[str, Any]],
    labels: dict[str, list[str]],
    endpoint: Endpoint,
    cfg: dict[str, Any],
    budgets: dict[str, int],
    progress: bool = True,
) -> tuple[list[Outcome], float]:
    """Send every record; returns the outcomes (in record order) and the wall time.
    `budgets`: max_tokens per generation task (stage_budgets); `progress`: a tqdm bar."""
    bodies = [request_body(r, endpoint.model, labels, budgets) for r in records]
    started = time.monotonic()
    outcomes = asyncio.run(_send_all(bodies, endpoint, cfg, progress))
    return outcomes, time.monotonic() - started


def remote_model(url: str, headers: dict[str, str], preferred: str | None, key_env: str) -> str:
    """The model name to request from a running server (evaluate.base_url)."""
    client = OpenAI(base_url=url + "/v1", api_key=api_key(headers), max_retries=0, timeout=30)
    try:
        names = [m.id for m in client.models.list()]
    except (AuthenticationError, PermissionDeniedError) as e:
        raise PipelineError(
            f"evaluate.base_url {url}: API key refused (HTTP {e.status_code}); "
            f"export it in ${key_env} (evaluate.api_key_env)"
        ) from e
    except APIStatusError as e:
        raise PipelineError(
            f"evaluate.base_url {url}: /v1/models answered HTTP {e.status_code}"
        ) from e
    except APIConnectionError as e:
        raise PipelineError(
            f"evaluate.base_url {url}: not reachable ({type(e.__cause__ or e).__name__})"
        ) from e
    except OpenAIError as e:  # an answer that is not a model list
        raise PipelineError(f"evaluate.base_url {url}: /v1/models: {e}") from e
    if not names:
        raise PipelineError(f"evaluate.base_url {url}: /v1/models lists no model")
    if preferred in names:
        return preferred
    if len(names) == 1:
        return names[0]
    raise PipelineError(
        f"evaluate.base_url {url} serves {', '.join(names)}: set serve.served_model_name to one"
    )


def remote_endpoint(cfg: dict[str, Any], preferred: str | None, key_env: str) -> Endpoint:
    """The running server at `evaluate.base_url`: its URL, the API key from the variable that
    `evaluate.api_key_env` names (none if unset), and the model to request (`remote_model`)."""
    url = normalise_url(cfg["base_url"])
    key = os.environ.get(cfg.get("api_key_env") or "", "")
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return Endpoint(url, headers, remote_model(url, headers, preferred, key_env))


def normalise_url(url: str) -> str:
    url = url.rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url
