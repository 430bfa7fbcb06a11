"""Stage evaluate: the merged model, served by vLLM as it will be deployed, scored on the test set.

Starts a vLLM OpenAI-compatible server on `models/merged/` (or, with `evaluate.serve:
adapter`, `models/adapter/` on `models/base/`; or uses the running server at
`evaluate.base_url`), sends every record of `data/prepared/test.jsonl` and scores the answers
as the baseline's are. Where the work is done:

- triage/answers.py: the answers, from the running server or from a vLLM server started and
  always stopped here (triage/server.py: start-up, health, shutdown of every process);
- triage/client.py: the requests, built by triage/records.py exactly as prepare built the
  training records (temperature 0, answers constrained to the record's shape and label sets,
  `max_tokens` per generation task), retried on transient errors; a request that times out
  or still fails is an error in the metrics, never a hang;
- triage/scoring.py: accuracy, macro-F1, invalid rate or ROUGE per task, bootstrap intervals,
  latency and throughput, confusion plots, per-ticket predictions.

Outputs: `metrics/eval.json` (the headlines `dvc metrics diff` shows), `metrics/eval_report.json`
(scikit-learn's per-class report, not diffed), `metrics/confusion/<task>.csv` (DVC's confusion
plot) and `.png`, and `data/eval/predictions.jsonl` (committed: the PR report pairs tickets).
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from triage.answers import from_own_server, from_remote
from triage.client import check_eval_params, stage_budgets
from triage.files import atomic_dir, run_main, write_json, write_text
from triage.params import PipelineError, load_params
from triage.prepared import read_inputs
from triage.scoring import (
    overall,
    per_task,
    prediction_rows,
    score,
    split_reports,
    summary_lines,
    write_confusion,
)
from triage.server import model_folder

MODEL = Path("models/merged")
BASE, ADAPTER = Path("models/base"), Path("models/adapter")  # evaluate.serve: adapter
METRICS = Path("metrics/eval.json")
CONFUSION = Path("metrics/confusion")  # <task>.csv (DVC confusion plot) and <task>.png
PREDICTIONS = Path("data/eval/predictions.jsonl")
SERVER_LOG = Path("runs/evaluate/vllm.log")


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


def run(params: dict[str, Any], out: Outputs = Outputs(), tickets: int | None = None) -> None:
    """Serve, ask, score; `tickets`: the first N test tickets only (`make parity` on a CPU)."""
    cfg = check_eval_params(params.get("evaluate"))
    if out.model == MODEL and cfg.get("serve") == "adapter":  # no merged model needed
        out = dataclasses.replace(out, model=BASE, adapter=ADAPTER)
    out = dataclasses.replace(out, model=model_folder(out.model))
    tasks = params["tasks"]
    records, labels = read_inputs(tasks)
    if tickets:  # records of the first N tickets (one or one per task, by prepare.records)
        first = set(list(dict.fromkeys(r["id"] for r in records))[:tickets])
        records = [r for r in records if r["id"] in first]
    # the served model's tokenizer counts the training answers (a remote server's: the base's)
    local = out.model if (out.model / "config.json").is_file() else model_folder(BASE)
    budgets = stage_budgets(params, local)
    print(f"evaluate: max_tokens of the generation tasks: {budgets}", flush=True)

    if cfg.get("base_url") and out.model == MODEL:  # a named variant is always served here
        got = from_remote(records, labels, params, budgets)
    else:  # the server is stopped before scoring
        got = from_own_server(
            records, labels, params, budgets, out.model, out.adapter, out.server_log
        )
    outcomes = got.outcomes

    errors = [o.error for o in outcomes if o.error is not None]
    if len(errors) == len(outcomes):
        raise PipelineError(f"every request failed, the first with: {errors[0]}")
    rows, answers = per_task(records, outcomes)
    metrics, confusion = score(rows, answers, tasks, labels)
    for name, budget in budgets.items():
        metrics[name]["max_tokens"] = budget  # beside truncated_rate: the cap that cut them
    metrics["overall"] = overall(outcomes, got.wall_s, got.startup_s)
    metrics["served"] = got.served  # what answered: with evaluate.base_url, not models/merged

    out.predictions.parent.mkdir(parents=True, exist_ok=True)
    write_text(out.predictions, prediction_rows(rows, answers))
    if out.confusion is not None:
        with atomic_dir(out.confusion) as tmp:
            for name, rows in confusion.items():
                write_confusion(tmp, name, rows, labels[name])
    # the per-class report goes beside the headline file, so `dvc metrics diff` shows headlines
    write_json(out.metrics.with_name(out.metrics.stem + "_report.json"), split_reports(metrics))
    write_json(out.metrics, metrics)
    print("\n".join(summary_lines(metrics, tasks)))
    print(f"evaluate: wrote {out.metrics}, {out.predictions}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="serve this folder, e.g. models/base")
    parser.add_argument("--serve", choices=("merged", "adapter"), help="evaluate.serve, for once")
    parser.add_argument("--dtype", help="serve.dtype, for once (e.g. float32)")
    parser.add_argument("--tickets", type=int, help="the first N test tickets only")
    parser.add_argument("--name", help="write metrics/eval_NAME.json, predictions_NAME.jsonl")
    args = parser.parse_args(argv)
    if any(x is not None for x in vars(args).values()) and args.name is None:
        parser.error(
            "--model, --serve, --dtype and --tickets write beside the default outputs: give --name"
        )
    if args.tickets is not None and args.tickets < 1:
        parser.error("--tickets: give a positive number of tickets")
    params = load_params()
    if args.serve:
        params["evaluate"] = {**params["evaluate"], "serve": args.serve, "base_url": None}
    if args.dtype:
        params["serve"] = {**params["serve"], "dtype": args.dtype}
    out = Outputs.named(args.model or MODEL, args.name) if args.name else Outputs()
    run(params, out, args.tickets)


if __name__ == "__main__":
    run_main(main, stopped="vLLM server stopped")
