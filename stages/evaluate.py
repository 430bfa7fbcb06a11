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
  `evaluate.max_tokens` (request bodies and budgets: triage/client.py);
- at most `evaluate.concurrency` requests in flight (asyncio + httpx), a progress bar;
  connection errors, 429 and 5xx are retried with exponential backoff (`evaluate.retries`);
  a request that times out (`evaluate.request_timeout_s`) or still fails is an error in the
  metrics, never a hang; if the server dies the stage stops at once with the log tail;
- the answers are scored as the baseline's are (triage/scoring.py).

Outputs: `metrics/eval.json`, the headlines `dvc metrics diff` shows (per task: accuracy,
macro-F1, weighted-F1 and invalid rate, or ROUGE-1/2/L, with bootstrap intervals; latency
percentiles and throughput), `metrics/eval_report.json` (scikit-learn's per-class report,
not diffed), `metrics/confusion/<task>.csv` (rows actual,predicted: DVC's confusion plot)
and `<task>.png`, and every prediction in `data/eval/predictions.jsonl` (committed: the PR
report compares two commits' predictions ticket by ticket).

`make chat` (triage/chat.py) triages one ticket with the server of `make serve`, with exactly
the requests this stage sends.
"""

from __future__ import annotations

import argparse
import dataclasses
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from triage.client import (
    Endpoint,
    ServerGone,
    check_eval_params,
    remote_endpoint,
    send_all,
    stage_budgets,
)
from triage.files import atomic_dir, write_json, write_text
from triage.params import PipelineError, load_params
from triage.prepared import read_inputs
from triage.scoring import overall, per_task, prediction_rows, score, write_confusion
from triage.server import VLLMServer, check_serve_params, model_folder, write_chat_template

MODEL = Path("models/merged")
BASE, ADAPTER = Path("models/base"), Path("models/adapter")  # evaluate.serve: adapter
METRICS = Path("metrics/eval.json")
CONFUSION = Path("metrics/confusion")  # <task>.csv (DVC confusion plot) and <task>.png
PREDICTIONS = Path("data/eval/predictions.jsonl")
SERVER_LOG = Path("runs/evaluate/vllm.log")


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
        remote = remote_endpoint(cfg, serve.get("served_model_name"), cfg["api_key_env"])
        url, model = remote.url, remote.model
        print(f"evaluate: {len(records)} requests to {url} (model {model!r})", flush=True)
        try:
            outcomes, wall_s = send_all(records, labels, remote, cfg, budgets)
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
            write_chat_template(template, out.model, params)
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
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
        params = load_params()
        if args.serve:
            params["evaluate"] = {**params["evaluate"], "serve": args.serve, "base_url": None}
        out = Outputs.named(args.model or MODEL, args.name) if args.name else Outputs()
        run(params, out)
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
