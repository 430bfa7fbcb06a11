"""`make chat`: triage one ticket with the server of `make serve`, as the evaluate stage would.

    python -m triage.chat "Subject: Card charged twice\n\nPlease refund one."
    TICKET="..." python -m triage.chat           # or the text on stdin

The server is the one `make serve` started (`runs/serve.json` holds its URL and key), or
`evaluate.base_url` when params.yaml sets one. The records are built as the prepare stage
builds them (triage/records.py) and sent as the evaluate stage sends them
(triage/client.py), so the answer is the one the stage would score.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from triage.client import (
    Endpoint,
    ServerGone,
    check_eval_params,
    remote_endpoint,
    send_all,
    stage_budgets,
)
from triage.files import run_main
from triage.params import PipelineError, load_params
from triage.prepared import PREPARED
from triage.records import parse_answer, records_for_ticket
from triage.server import SERVE_INFO, model_folder

BASE = Path("models/base")  # its tokenizer sizes the answers when params.yaml does not


def chat(text: str) -> None:
    """Triage one ticket with every task, using the server of `make serve` (runs/serve.json)
    or evaluate.base_url, with the same requests the stage sends."""
    params = load_params()
    cfg, tasks = params.get("evaluate") or {}, params["tasks"]
    if cfg.get("base_url"):
        key_env = cfg.get("api_key_env") or "the API key variable"
        remote = remote_endpoint(cfg, params["serve"].get("served_model_name"), key_env)
        url, headers, model = remote.url, remote.headers, remote.model
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
    endpoint = Endpoint(url, headers, model)
    send_cfg = {**check_eval_params(cfg), "concurrency": 1}
    system = params["default_system"]
    budgets = stage_budgets(params, model_folder(BASE))  # once: sizing may load a tokenizer
    for rec in records_for_ticket("chat", text, gold, tasks, labels, system, layout):
        try:
            (outcome,), _ = send_all([rec], labels, endpoint, send_cfg, budgets, progress=False)
        except ServerGone as e:
            raise PipelineError(f"{url}: not reachable ({e}): is it running?") from None
        if outcome.error:
            raise PipelineError(f"{url}: {outcome.error}")
        content = outcome.content or ""
        for name, value in parse_answer(content, rec["tasks"]).items():
            print(f"{name}: {value}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "text", nargs="?", default="-", metavar="TEXT", help="the ticket (else $TICKET or stdin)"
    )
    args = parser.parse_args(argv)
    text = args.text if args.text != "-" else os.environ.get("TICKET") or sys.stdin.read()
    if not text.strip():
        raise PipelineError('no ticket text: make chat TICKET="Subject: ...\\n\\n..."')
    chat(text)


if __name__ == "__main__":
    run_main(main)
