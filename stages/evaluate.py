"""Stage evaluate: the merged model, served by vLLM as it will be deployed, scored on the test set.

Starts a vLLM OpenAI-compatible server on `models/merged/` (`triage/server.py`; or uses
the running server at `evaluate.base_url`), sends every record of `data/prepared/test.jsonl`
to `/v1/chat/completions` and scores the answers:

- the prompt is built by triage/records.py, the module prepare built the training records
  with: the record's system prompt, then one user turn `instruction + "\\n" + input`; the
  served chat template is LlamaFactory's training template (the merge stage installs it);
- temperature 0; the answer is constrained with structured outputs to the record's shape:
  a label of the set for a classification task, one `name: answer` line per task for a
  record that answers all tasks at once (a regular expression), so every label is valid;
  each generation answer gets its task's `max_tokens` (params.yaml `tasks`), else
  `evaluate.max_tokens`;
- at most `evaluate.concurrency` requests in flight (asyncio + httpx), a progress bar;
  connection errors, 429 and 5xx are retried with exponential backoff (`evaluate.retries`);
  a request that times out (`evaluate.request_timeout_s`) or still fails is an error in the
  metrics, never a hang; if the server dies the stage stops at once with the log tail.

Outputs: `metrics/eval.json`, the headlines `dvc metrics diff` shows (per task: accuracy,
macro-F1, weighted-F1 and invalid rate, or ROUGE-1/2/L, with bootstrap intervals; latency
percentiles and throughput), `metrics/eval_report.json` (scikit-learn's per-class report,
not diffed), `metrics/confusion/<task>.csv` (rows actual,predicted: DVC's confusion plot)
and `<task>.png`, and every prediction in `data/eval/predictions.jsonl` (committed: the PR
report compares two commits' predictions ticket by ticket).

`python -m stages.evaluate --chat "ticket text"` (`make chat`) triages one ticket with the
server of `make serve`, with exactly the requests this stage sends.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import math
import os
import random
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from triage import scoring
from triage.files import atomic_dir, write_json, write_text
from triage.params import (
    PipelineError,
    load_params,
    model_name_or_path,
    param_integer,
    param_positive,
)
from triage.records import (
    constraint,
    messages,
    parse_answer,
    records_for_ticket,
    training_chat_template,
)
from triage.scoring import round4
from triage.server import SERVE_INFO, VLLMServer, check_serve_params

MODEL = Path("models/merged")
BASE, ADAPTER = Path("models/base"), Path("models/adapter")  # evaluate.serve: adapter
PREPARED = Path("data/prepared")
METRICS = Path("metrics/eval.json")
CONFUSION = Path("metrics/confusion")  # <task>.csv (DVC confusion plot) and <task>.png
PREDICTIONS = Path("data/eval/predictions.jsonl")
SERVER_LOG = Path("runs/evaluate/vllm.log")
INVALID = "(invalid)"  # an answer outside the label set
ERROR = "(error)"  # no answer: the request failed or timed out
BACKOFF_S, BACKOFF_MAX_S = 0.5, 10.0  # first retry delay, doubling up to this


class ServerGone(Exception):
    """The server stopped answering: connections refused after every retry, or many
    requests in a row without an answer (a wedged server would otherwise cost one
    request timeout per request)."""


# ----------------------------------------------------------------------------- params, data


def check_eval_params(cfg: Any) -> dict[str, Any]:
    """The `evaluate:` section, checked before a server is started."""
    if not isinstance(cfg, dict):
        raise PipelineError("params.yaml: missing section evaluate")

    for key, minimum in (("concurrency", 1), ("retries", 0)):
        param_integer(cfg.get(key), f"evaluate.{key}", minimum)
    if cfg.get("max_tokens") is not None:  # null: sized from the training answers
        param_integer(cfg["max_tokens"], "evaluate.max_tokens", 1)
    param_positive(cfg.get("request_timeout_s"), "evaluate.request_timeout_s")
    url = cfg.get("base_url")
    if url is not None and (
        not isinstance(url, str) or not url.startswith(("http://", "https://"))
    ):
        raise PipelineError(f"params.yaml evaluate.base_url: expected null or a URL, got {url!r}")
    if cfg.get("serve", "merged") not in ("merged", "adapter"):
        raise PipelineError(
            f"params.yaml evaluate.serve: expected merged or adapter, got {cfg['serve']!r}"
        )
    if url and not isinstance(cfg.get("api_key_env"), str):
        raise PipelineError(
            "params.yaml evaluate.api_key_env: expected an environment variable name"
        )
    return cfg


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise PipelineError(f"{path}: not found (run the prepare stage first)")
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def read_inputs(tasks: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, list[str]]]:
    """The test records and the label sets, checked against the tasks of params.yaml."""
    records = read_jsonl(PREPARED / "test.jsonl")
    labels_path = PREPARED / "labels.json"
    if not labels_path.is_file():
        raise PipelineError(f"{labels_path}: not found (run the prepare stage first)")
    labels = json.loads(labels_path.read_text(encoding="utf-8"))
    present = {name for r in records for name in r["tasks"]}
    for name, task in tasks.items():
        stale = (task["kind"] == "classification") != (name in labels)
        if name not in present or stale:
            raise PipelineError(f"{PREPARED}: task {name} is not as in params.yaml: run prepare")
    unknown = present - set(tasks)
    if unknown:
        raise PipelineError(f"{PREPARED}: task {sorted(unknown)[0]} is not in params.yaml tasks")
    return records, labels


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
    (loaded only if a task needs it)."""

    def sized(name: str) -> int:
        from transformers import AutoTokenizer

        if not (tokenizer_folder / "tokenizer_config.json").is_file():
            raise PipelineError(
                f"params.yaml evaluate.max_tokens is empty: sizing tasks.{name}'s answers needs "
                f"the model's tokenizer in {tokenizer_folder} (not found); set a number"
            )
        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_folder))
        answers = [
            str(r["answers"][name])
            for r in read_jsonl(PREPARED / "train.jsonl")
            if name in r.get("answers", {})
        ]
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


async def post_chat(
    client: httpx.AsyncClient, body: dict[str, Any], cfg: dict[str, Any]
) -> Outcome:
    """POST one request with retries; errors become an Outcome, except a vanished server."""
    timeout_s, retries = float(cfg["request_timeout_s"]), int(cfg["retries"])
    started = time.monotonic()
    last_error, refused = "", False
    for attempt in range(retries + 1):
        if attempt:
            delay = min(BACKOFF_S * 2 ** (attempt - 1), BACKOFF_MAX_S)
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))
        try:
            async with asyncio.timeout(timeout_s):
                r = await client.post("/v1/chat/completions", json=body)
        except (TimeoutError, httpx.TimeoutException):
            return Outcome(
                latency_s=time.monotonic() - started,
                error=f"timeout after {timeout_s:g} s (evaluate.request_timeout_s)",
                attempts=attempt + 1,
                unanswered=True,
            )
        except httpx.TransportError as e:  # refused, reset, disconnected: transient
            last_error = f"{type(e).__name__}: {e}".rstrip(": ")
            refused = isinstance(e, httpx.ConnectError)
            continue
        refused = False
        if r.status_code == 429 or r.status_code >= 500:
            last_error = f"HTTP {r.status_code}: {r.text[:200]}"
            continue
        elapsed = time.monotonic() - started
        if r.status_code != 200:  # a request the server rejects will not improve with retries
            return Outcome(
                latency_s=elapsed,
                error=f"HTTP {r.status_code}: {r.text[:300]}",
                attempts=attempt + 1,
            )
        try:
            data = r.json()
            choice = data["choices"][0]
            content = choice["message"]["content"] or ""
        except (ValueError, KeyError, IndexError, TypeError) as e:
            return Outcome(latency_s=elapsed, error=f"bad response: {e!r}", attempts=attempt + 1)
        usage = data.get("usage") or {}
        return Outcome(
            content=content,
            finish_reason=choice.get("finish_reason"),
            output_tokens=int(usage.get("completion_tokens") or 0),
            latency_s=elapsed,
            attempts=attempt + 1,
        )
    if refused:
        raise ServerGone(last_error)
    return Outcome(
        latency_s=time.monotonic() - started,
        error=f"{last_error} (after {retries} retries)",
        attempts=retries + 1,
        unanswered=last_error.startswith(("ConnectError", "RemoteProtocolError", "ReadError")),
    )


async def _send_all(
    bodies: list[dict[str, Any]], endpoint: Endpoint, cfg: dict[str, Any]
) -> list[Outcome]:
    from tqdm import tqdm

    concurrency = int(cfg["concurrency"])
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    # asyncio.timeout in post_chat is the authority; httpx's own only as a backstop
    timeout = httpx.Timeout(float(cfg["request_timeout_s"]) + 5, connect=10)
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

    async with httpx.AsyncClient(
        base_url=endpoint.url, headers=endpoint.headers, timeout=timeout, limits=limits
    ) as client:
        requests = {asyncio.create_task(one(i)) for i in range(len(bodies))}
        pending = set(requests)
        if endpoint.check is not None:
            pending.add(asyncio.create_task(watch(endpoint.check)))
        bar = tqdm(total=len(bodies), desc="evaluate", unit="req", file=sys.stderr, mininterval=1)
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
) -> tuple[list[Outcome], float]:
    """Send every record; returns the outcomes (in record order) and the wall time.
    `budgets`: max_tokens per generation task (stage_budgets)."""
    bodies = [request_body(r, endpoint.model, labels, budgets) for r in records]
    started = time.monotonic()
    outcomes = asyncio.run(_send_all(bodies, endpoint, cfg))
    return outcomes, time.monotonic() - started


def remote_model(url: str, headers: dict[str, str], preferred: str | None, key_env: str) -> str:
    """The model name to request from a running server (evaluate.base_url)."""
    try:
        r = httpx.get(url + "/v1/models", headers=headers, timeout=30)
    except httpx.HTTPError as e:
        raise PipelineError(f"evaluate.base_url {url}: not reachable ({type(e).__name__})") from e
    if r.status_code in (401, 403):
        raise PipelineError(
            f"evaluate.base_url {url}: API key refused (HTTP {r.status_code}); "
            f"export it in ${key_env} (evaluate.api_key_env)"
        )
    try:
        names = [m["id"] for m in r.json()["data"]] if r.status_code == 200 else []
    except (ValueError, KeyError, TypeError):
        names = []
    if not names:
        raise PipelineError(f"evaluate.base_url {url}: /v1/models answered HTTP {r.status_code}")
    if preferred in names:
        return preferred
    if len(names) == 1:
        return names[0]
    raise PipelineError(
        f"evaluate.base_url {url} serves {', '.join(names)}: set serve.served_model_name to one"
    )


def normalise_url(url: str) -> str:
    url = url.rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url


# ----------------------------------------------------------------------------- scoring


def per_task(
    records: list[dict[str, Any]], outcomes: list[Outcome]
) -> tuple[list[dict[str, Any]], list[Outcome]]:
    """One (id, task, gold) row and one outcome per task of every record, in record order.

    A reply that answers several tasks is split into its lines. If it was cut at max_tokens
    (finish_reason "length"), the last task it reached is the one cut, and the tasks after
    it have no answer; the tasks before it finished.
    """
    rows, split = [], []
    for rec, outcome in zip(records, outcomes, strict=True):
        names = rec["tasks"]
        answers = parse_answer(outcome.content, names)
        reached = [i for i, n in enumerate(names) if answers[n] is not None]
        cut_at = reached[-1] if reached else 0  # the first task the cut reply did not finish
        for i, name in enumerate(names):
            finish = outcome.finish_reason
            if finish == "length" and i < cut_at:
                finish = "stop"
            rows.append({"id": rec["id"], "task": name, "output": rec["answers"][name]})
            split.append(dataclasses.replace(outcome, content=answers[name], finish_reason=finish))
    return rows, split


def shown_label(outcome: Outcome, label_set: set[str]) -> str:
    """What the confusion matrix shows as predicted: the label, (invalid) or (error)."""
    if outcome.error is not None:
        return ERROR
    answer = (outcome.content or "").strip()
    return answer if answer in label_set and outcome.finish_reason != "length" else INVALID


def score_classification(gold: list[str], shown: list[str], labels: list[str]) -> dict[str, Any]:
    """Scores as stages/baseline.py computes them (triage/scoring.py); an invalid answer or an
    error counts as wrong (it lowers its gold class's recall) and in invalid_rate.

    Macro-F1 averages over the labels that occur in gold or in the (valid) predictions,
    sklearn's default, so a model without invalid answers is scored exactly like the
    baseline; the (invalid)/(error) markers are not classes of their own.
    """
    from sklearn.metrics import classification_report

    label_set = set(labels)
    present = [x for x in labels if x in set(gold) | set(shown)]
    present += sorted(set(gold) - label_set)  # gold outside the label set: stale labels.json
    report = classification_report(gold, shown, labels=present, output_dict=True, zero_division=0)
    for key in ("accuracy", "micro avg"):  # whichever sklearn adds: accuracy is reported above
        report.pop(key, None)
    return {
        "n": len(gold),
        **scoring.classification(gold, shown, labels=present),
        "invalid_rate": round4(sum(s not in label_set for s in shown) / len(shown)),
        "errors": sum(s == ERROR for s in shown),
        "classification_report": {
            label: {k: round4(v) for k, v in row.items()} for label, row in report.items()
        },
    }


def score_generation(gold: list[str], outcomes: list[Outcome]) -> dict[str, Any]:
    """ROUGE-1/2/L as stages/baseline.py computes them; a failed request scores 0."""
    answers = [(o.content or "").strip() for o in outcomes]
    metrics: dict[str, Any] = {"n": len(gold), **scoring.rouge(gold, answers)}
    metrics["error_rate"] = round4(sum(o.error is not None for o in outcomes) / len(outcomes))
    metrics["errors"] = sum(o.error is not None for o in outcomes)
    # answers cut at evaluate.max_tokens: if this is high, raise max_tokens
    metrics["truncated_rate"] = round4(
        sum(o.finish_reason == "length" for o in outcomes) / len(outcomes)
    )
    return metrics


def percentile(values: list[float], q: float) -> float | None:
    import numpy as np

    return round4(float(np.percentile(values, q))) if values else None


def score(
    records: list[dict[str, Any]],
    outcomes: list[Outcome],
    tasks: dict[str, Any],
    labels: dict[str, list[str]],
) -> tuple[dict[str, Any], dict[str, list[dict[str, str]]]]:
    """Metrics per task, and the confusion rows (actual, predicted) per classification task."""
    metrics: dict[str, Any] = {}
    confusion: dict[str, list[dict[str, str]]] = {}
    for name, task in tasks.items():
        idx = [i for i, r in enumerate(records) if r["task"] == name]
        gold = [str(records[i]["output"]) for i in idx]
        if task["kind"] == "classification":
            shown = [shown_label(outcomes[i], set(labels[name])) for i in idx]
            metrics[name] = score_classification(gold, shown, labels[name])
            confusion[name] = [
                {"actual": a, "predicted": p} for a, p in zip(gold, shown, strict=True)
            ]
        else:
            metrics[name] = score_generation(gold, [outcomes[i] for i in idx])
    metrics["test_tickets"] = len({r["id"] for r in records})
    return metrics, confusion


def overall(outcomes: list[Outcome], wall_s: float, startup_s: float | None) -> dict[str, Any]:
    ok = [o.latency_s for o in outcomes if o.error is None and o.latency_s is not None]
    tokens = sum(o.output_tokens for o in outcomes)
    errors = sum(o.error is not None for o in outcomes)
    return {
        "requests": len(outcomes),
        "errors": errors,
        "error_rate": round4(errors / len(outcomes)),
        "retried_requests": sum(o.attempts > 1 for o in outcomes),
        # latency of the successful requests (queueing at the server and retries included)
        "latency_p50_s": percentile(ok, 50),
        "latency_p95_s": percentile(ok, 95),
        "latency_p99_s": percentile(ok, 99),
        "requests_per_second": round4(len(outcomes) / wall_s),
        "output_tokens": tokens,
        "output_tokens_per_second": round4(tokens / wall_s),
        "wall_time_s": round4(wall_s),  # sending every request, server start-up excluded
        "server_startup_s": round4(startup_s),  # null when evaluate.base_url is used
    }


# ----------------------------------------------------------------------------- outputs


def write_confusion(folder: Path, task: str, rows: list[dict[str, str]], labels: list[str]) -> None:
    """<task>.csv for DVC's confusion template and <task>.png (scikit-learn's display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay

    lines = ["actual,predicted"] + [f"{r['actual']},{r['predicted']}" for r in rows]
    write_text(folder / f"{task}.csv", "\n".join(lines) + "\n")
    actual = [r["actual"] for r in rows]
    predicted = [r["predicted"] for r in rows]
    order = labels + [x for x in (INVALID, ERROR) if x in predicted]
    order += sorted(set(actual) - set(order))
    size = max(5.0, 0.55 * len(order) + 2.5)
    fig, ax = plt.subplots(figsize=(size, size))
    ConfusionMatrixDisplay.from_predictions(
        actual, predicted, labels=order, ax=ax, xticks_rotation="vertical", colorbar=False
    )
    ax.set_title(f"{task} (test split, n={len(rows)})")
    fig.tight_layout()
    fig.savefig(folder / f"{task}.png", dpi=100, metadata={"Software": None})
    plt.close(fig)


def prediction_rows(records: list[dict[str, Any]], outcomes: list[Outcome]) -> str:
    lines = []
    for record, o in zip(records, outcomes, strict=True):
        row = {
            "id": record["id"],
            "task": record["task"],
            "gold": record["output"],
            "predicted": o.content.strip() if o.content is not None else None,
            "latency_s": round4(o.latency_s),
            "error": o.error,
            "finish_reason": o.finish_reason,
            "output_tokens": o.output_tokens,
        }
        lines.append(json.dumps(row, ensure_ascii=False))
    return "\n".join(lines) + "\n"


def report(metrics: dict[str, Any], tasks: dict[str, Any]) -> None:
    for name, task in tasks.items():
        m = metrics[name]
        keys = ("accuracy", "macro_f1", "invalid_rate") if task["kind"] == "classification" else (
            "rouge1", "rouge2", "rougeL", "truncated_rate"
        )  # fmt: skip
        line = ", ".join(f"{k} {m[k]:.3f}" for k in keys)
        print(f"evaluate {name}: {line}")
    o = metrics["overall"]
    print(
        f"evaluate: {o['requests']} requests in {o['wall_time_s']:.1f} s "
        f"({o['requests_per_second']:.2f} req/s, {o['output_tokens_per_second']:.1f} output tok/s, "
        f"p50 {o['latency_p50_s']} s, p95 {o['latency_p95_s']} s), {o['errors']} errors"
    )


# ----------------------------------------------------------------------------- main


@dataclass(frozen=True)
class Outputs:
    """Where one evaluation writes: the fine-tuned model's files, or a named variant's
    (`--name base`: the base model zero-shot, served the same way) beside them."""

    model: Path = MODEL
    adapter: Path | None = None  # LoRA served on `model` by vLLM
    metrics: Path = METRICS
    predictions: Path = PREDICTIONS
    confusion: Path | None = CONFUSION  # None: no confusion plots
    server_log: Path = SERVER_LOG

    @classmethod
    def named(cls, model: Path, name: str) -> Outputs:
        return cls(
            model,
            None,
            METRICS.with_name(f"eval_{name}.json"),
            PREDICTIONS.with_name(f"predictions_{name}.jsonl"),
            None,
            SERVER_LOG.parent.with_name(f"evaluate_{name}") / SERVER_LOG.name,
        )


def model_folder(folder: Path) -> Path:
    """The folder vLLM loads for `folder`: itself, or, for a base model the base_model stage
    only points at (a local Hugging Face folder: `source.json`, no weights), that folder."""
    if (folder / "config.json").is_file() or not (folder / "source.json").is_file():
        return folder
    return Path(model_name_or_path(folder))


def run(params: dict[str, Any], out: Outputs = Outputs()) -> None:
    cfg = check_eval_params(params.get("evaluate"))
    if out.model == MODEL and cfg.get("serve") == "adapter":  # no merged model needed
        out = dataclasses.replace(out, model=BASE, adapter=ADAPTER)
    out = dataclasses.replace(out, model=model_folder(out.model))
    serve = params.get("serve") or {}
    tasks = params["tasks"]
    records, labels = read_inputs(tasks)
    # the served model's tokenizer counts the training answers (a remote server's: the base's)
    local = out.model if (out.model / "config.json").is_file() else model_folder(BASE)
    budgets = stage_budgets(params, local)
    print(f"evaluate: max_tokens of the generation tasks: {budgets}", flush=True)

    if cfg.get("base_url") and out.model == MODEL:  # a named variant is always served here
        url = normalise_url(cfg["base_url"])
        key = os.environ.get(cfg["api_key_env"], "")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        model = remote_model(url, headers, serve.get("served_model_name"), cfg["api_key_env"])
        print(f"evaluate: {len(records)} requests to {url} (model {model!r})", flush=True)
        try:
            outcomes, wall_s = send_all(
                records, labels, Endpoint(url, headers, model), cfg, budgets
            )
        except ServerGone as e:
            raise PipelineError(f"evaluate.base_url {url} stopped answering: {e}") from None
        startup_s = None
        served = {"url": url, "model": model}
    else:
        check_serve_params(serve)
        if cfg["concurrency"] > serve["max_num_seqs"]:
            print("evaluate: note: concurrency > serve.max_num_seqs: requests queue in vLLM")
        template = None
        if out.adapter is not None:  # the base model's own template may not be the trained one
            template = out.server_log.with_name("chat_template.jinja")
            template.parent.mkdir(parents=True, exist_ok=True)
            jinja = training_chat_template(out.model, params["template"], params["default_system"])
            write_text(template, jinja)
        server = VLLMServer(out.model, serve, out.server_log, out.adapter, template)
        what = f"{out.adapter} on {out.model}" if out.adapter else str(out.model)
        print(
            f"evaluate: starting vLLM on {what}, dtype {server.dtype} (log: {out.server_log})",
            flush=True,
        )
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
            startup_s = server.startup_s
            served = {"model": str(out.model), "adapter": out.adapter and str(out.adapter)}
            served |= {"dtype": server.dtype, "vllm": server.vllm_version()}
        # the server is stopped before scoring

    errors = [o.error for o in outcomes if o.error is not None]
    if len(errors) == len(outcomes):
        raise PipelineError(f"every request failed, the first with: {errors[0]}")
    rows, answers = per_task(records, outcomes)
    metrics, confusion = score(rows, answers, tasks, labels)
    for name, budget in budgets.items():
        metrics[name]["max_tokens"] = budget  # beside truncated_rate: the cap that cut them
    metrics["overall"] = overall(outcomes, wall_s, startup_s)
    metrics["served"] = served  # what answered: with evaluate.base_url, not models/merged

    out.predictions.parent.mkdir(parents=True, exist_ok=True)
    write_text(out.predictions, prediction_rows(rows, answers))
    if out.confusion is not None:
        with atomic_dir(out.confusion) as tmp:
            for name, rows in confusion.items():
                write_confusion(tmp, name, rows, labels[name])
    # the per-class report goes beside the headline file, so `dvc metrics diff` shows headlines
    details = {
        name: m.pop("classification_report") for name, m in metrics.items() if isinstance(m, dict)
        and "classification_report" in m
    }  # fmt: skip
    write_json(out.metrics.with_name(out.metrics.stem + "_report.json"), details)
    write_json(out.metrics, metrics)
    report(metrics, tasks)
    print(f"evaluate: wrote {out.metrics}, {out.predictions}")


def chat(text: str) -> None:
    """Triage one ticket with every task, using the server of `make serve` (runs/serve.json)
    or evaluate.base_url, with the same requests the stage sends."""
    params = load_params()
    cfg, tasks = params.get("evaluate") or {}, params["tasks"]
    if cfg.get("base_url"):
        url = normalise_url(cfg["base_url"])
        key = os.environ.get(cfg.get("api_key_env") or "", "")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        key_env = cfg.get("api_key_env") or "the API key variable"
        model = remote_model(url, headers, params["serve"].get("served_model_name"), key_env)
    elif SERVE_INFO.is_file():
        info = json.loads(SERVE_INFO.read_text(encoding="utf-8"))
        url, model = info["url"], info["model"]
        headers = {"Authorization": f"Bearer {info['api_key']}"}
    else:
        raise PipelineError(f"no server: run `make serve` first ({SERVE_INFO} not found)")
    labels_path = PREPARED / "labels.json"
    known = json.loads(labels_path.read_text(encoding="utf-8")) if labels_path.is_file() else {}
    labels = {}
    for name, task in tasks.items():
        labels[name] = known.get(name) or [str(x) for x in task.get("labels") or []]
        if task["kind"] == "classification" and not labels[name]:
            raise PipelineError(f"{labels_path}: no labels for task {name} (run prepare)")
    labels = {name: values for name, values in labels.items() if values}
    layout = (params.get("prepare") or {}).get("records", "ticket")
    gold = dict.fromkeys(tasks, "")  # a request: no gold answers
    system = params["default_system"]
    for rec in records_for_ticket("chat", text, gold, tasks, labels, system, layout):
        budgets = stage_budgets(params, model_folder(BASE))
        body = request_body(rec, model, labels, budgets)
        try:
            r = httpx.post(url + "/v1/chat/completions", json=body, headers=headers, timeout=120)
        except httpx.HTTPError as e:
            raise PipelineError(f"{url}: not reachable ({type(e).__name__}): is it running?") from e
        if r.status_code != 200:
            raise PipelineError(f"{url}: HTTP {r.status_code}: {r.text[:300]}")
        content = r.json()["choices"][0]["message"]["content"]
        for name, value in parse_answer(content, rec["tasks"]).items():
            print(f"{name}: {value}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--chat",
        nargs="?",
        const="-",
        metavar="TEXT",
        help="triage one ticket with the server of `make serve` (TEXT, else $TICKET or stdin)",
    )
    parser.add_argument(
        "--model",
        type=Path,
        help="serve this model folder instead, e.g. models/base for the zero-shot row "
        "(with --name)",
    )
    parser.add_argument(
        "--serve",
        choices=("merged", "adapter"),
        help="serve models/merged or models/adapter on models/base (default: evaluate.serve)",
    )
    parser.add_argument(
        "--name",
        help="write metrics/eval_NAME.json and data/eval/predictions_NAME.jsonl (no plots)",
    )
    args = parser.parse_args(argv)
    if (args.model is not None or args.serve is not None) and args.name is None:
        parser.error("--model and --serve write beside the default outputs: give --name")
    try:
        if args.chat is None:
            params = load_params()
            if args.serve:
                params["evaluate"] = {**params["evaluate"], "serve": args.serve, "base_url": None}
            out = Outputs.named(args.model or MODEL, args.name) if args.name else Outputs()
            run(params, out)
        else:
            text = args.chat if args.chat != "-" else os.environ.get("TICKET") or sys.stdin.read()
            if not text.strip():
                raise PipelineError('no ticket text: make chat TICKET="Subject: ...\\n\\n..."')
            chat(text)
    except PipelineError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM/SIGHUP while the server ran
        signum = getattr(e, "signum", signal.SIGINT)
        print(
            f"error: interrupted ({signal.Signals(signum).name}); vLLM server stopped",
            file=sys.stderr,
        )
        sys.exit(128 + signum)


if __name__ == "__main__":
    main()
