"""Serving speed: (a) the served evaluation vs LlamaFactory's own generation, (b) served vs
vLLM offline. Same machine, same merged model, same records, one run.

- served: the evaluate stage's path: vLLM's OpenAI server (`triage.server`) and the
  stage's client (`triage.client.send_all`: concurrency, structured-output labels);
- offline: `vllm.LLM.chat` with the same engine arguments and per-request sampling
  (`bench/offline_vllm.py`, in the serving environment);
- LlamaFactory: `llamafactory-cli train` with `do_predict` and `predict_with_generate` (its
  Hugging Face engine), greedy, `max_new_tokens` = the largest served request's `max_tokens`, batch
  per_device_eval_batch_size: how a LlamaFactory user scores a test set without vLLM. It
  cannot constrain an answer to a label set; it stops at end-of-sequence.

Throughput is requests per second of generation (model loading and server start-up
excluded; they are reported beside it). The vLLM paths run one cold pass (new batch shapes
are slow the first time), then BENCH_REPEATS timed passes; LlamaFactory runs BENCH_REPEATS
times, each a new process.

    python -m bench.serving
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from typing import Any

import yaml

from bench.common import (
    MERGED,
    ROOT,
    WORK,
    bench_records,
    repeats,
    save,
    served_passes,
    spread,
    timed,
)
from triage.client import request_body, stage_budgets
from triage.files import write_text
from triage.machine import cpu_has_bf16, serve_python
from triage.params import load_params
from triage.prepared import read_inputs
from triage.server import VLLMServer


def served(
    params: dict[str, Any], records: list[dict[str, Any]], labels: dict[str, list[str]], n: int
) -> dict[str, Any]:
    server, passes = served_passes(params, records, labels, n, WORK / "serving_vllm.log")
    for _, outcomes in passes:
        if errors := sum(o.error is not None for o in outcomes):
            raise SystemExit(f"bench: {errors} served requests failed")
    (cold, _), timed_passes = passes[0], passes[1:]
    tokens = [(w, sum(o.output_tokens for o in out)) for w, out in timed_passes]
    return {
        "startup_s": round(server.startup_s or 0, 1),
        "cold_wall_s": round(cold, 2),
        "wall_s": spread([w for w, _ in tokens]),
        "requests_per_s": spread([len(records) / w for w, _ in tokens]),
        "output_tokens_per_s": spread([t / w for w, t in tokens]),
        "dtype": server.dtype,
    }


def offline(
    params: dict[str, Any], records: list[dict[str, Any]], labels: dict[str, list[str]], n: int
) -> dict[str, Any]:
    server = VLLMServer(MERGED, params["serve"], WORK / "unused.log")  # its dtype and env
    p = params["serve"]
    engine = {
        "model": str(MERGED),
        "dtype": server.dtype,
        "max_model_len": p["max_model_len"],
        "max_num_seqs": p["max_num_seqs"],
        "enforce_eager": bool(p.get("enforce_eager", True)),
        "seed": p.get("seed", 0),
    }
    if p.get("enable_prefix_caching") is not None:
        engine["enable_prefix_caching"] = bool(p["enable_prefix_caching"])
    requests = [
        {"messages": b["messages"], "max_tokens": b["max_tokens"],
         "structured": b.get("structured_outputs")}
        for b in request_bodies(records, labels, params)
    ]  # fmt: skip
    spec, result = WORK / "offline_spec.json", WORK / "offline_result.json"
    spec.write_text(json.dumps({"engine": engine, "requests": requests, "passes": n + 1}))
    env = server.env()
    env.pop("VLLM_API_KEY")
    with (WORK / "offline_vllm.log").open("w") as log:
        subprocess.run(
            [str(serve_python()), str(ROOT / "bench" / "offline_vllm.py"), str(spec), str(result)],
            env=env, stdout=log, stderr=subprocess.STDOUT, check=True, start_new_session=True,
        )  # fmt: skip
    out = json.loads(result.read_text())
    cold, passes = out["passes"][0], out["passes"][1:]
    return {
        "startup_s": round(out["startup_s"], 1),
        "cold_wall_s": round(cold["wall_s"], 2),
        "wall_s": spread([p["wall_s"] for p in passes]),
        "requests_per_s": spread([len(records) / p["wall_s"] for p in passes]),
        "output_tokens_per_s": spread([p["output_tokens"] / p["wall_s"] for p in passes]),
    }


def request_bodies(
    records: list[dict[str, Any]], labels: dict[str, list[str]], params: dict[str, Any]
) -> list[dict[str, Any]]:
    """The evaluate stage's request bodies (messages, token budget, answer constraint)."""
    budgets = stage_budgets(params, MERGED)
    return [request_body(r, "", labels, budgets) for r in records]


def llamafactory(
    params: dict[str, Any], records: list[dict[str, Any]], labels: dict[str, list[str]], n: int
) -> dict[str, Any]:
    data = WORK / "data"
    data.mkdir(parents=True, exist_ok=True)
    write_text(data / "bench_test.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    info = json.loads((ROOT / "data/prepared/dataset_info.json").read_text())["tickets_test"]
    write_text(data / "dataset_info.json", json.dumps({"bench_test": {**info,
               "file_name": "bench_test.jsonl"}}))  # fmt: skip
    output_dir = WORK / "lf_predict"
    config = {
        "model_name_or_path": str(MERGED),
        "stage": "sft",
        "do_predict": True,
        "predict_with_generate": True,
        "finetuning_type": "full",  # the merged model as it is, no adapter
        "template": params["template"],
        "default_system": params["default_system"],
        "dataset_dir": str(data),
        "eval_dataset": "bench_test",
        "cutoff_len": params["cutoff_len"],
        "per_device_eval_batch_size": params["per_device_eval_batch_size"],
        # the served requests' own token budget: both stop at end-of-sequence or there
        "max_new_tokens": max(r["max_tokens"] for r in request_bodies(records, labels, params)),
        "do_sample": False,  # greedy, like temperature 0 in the served requests
        "output_dir": str(output_dir),
        "overwrite_output_dir": True,
        "report_to": "none",
        "use_cpu": shutil.which("nvidia-smi") is None,
        "bf16": bool(params["bf16"]) and cpu_has_bf16(),  # as the train stage decides
    }
    config_path = WORK / "lf_predict.yaml"
    write_text(config_path, yaml.safe_dump(config, sort_keys=False))
    walls, rates, runtimes = [], [], []
    for _ in range(n):
        wall, _ = timed(["llamafactory-cli", "train", str(config_path)], cwd=ROOT)
        result = json.loads((output_dir / "predict_results.json").read_text())
        walls.append(wall)
        rates.append(len(records) / result["predict_runtime"])
        runtimes.append(result["predict_runtime"])
    return {
        "wall_incl_load_s": spread(walls),
        "predict_runtime_s": spread(runtimes),
        "requests_per_s": spread(rates),
        "dtype": "bfloat16" if config["bf16"] else "float32",
        "batch_size": config["per_device_eval_batch_size"],
        "max_new_tokens": config["max_new_tokens"],
    }


def main() -> None:
    params = load_params()
    WORK.mkdir(parents=True, exist_ok=True)
    records = bench_records()
    _, labels = read_inputs(params["tasks"])
    n = repeats()
    print(f"bench serving: {len(records)} requests, {n} passes per path", flush=True)
    results: dict[str, Any] = {"records": len(records), "repeats": n}
    for name, fn in (("served", served), ("offline", offline), ("llamafactory", llamafactory)):
        started = time.monotonic()
        results[name] = fn(params, records, labels, n)
        print(f"  {name}: {results[name]['requests_per_s']} ({time.monotonic() - started:.0f} s)")
    med = {k: results[k]["requests_per_s"]["median"] for k in ("served", "offline", "llamafactory")}
    results["served_vs_llamafactory"] = round(med["served"] / med["llamafactory"], 2)
    results["served_vs_offline"] = round(med["served"] / med["offline"], 3)
    # one evaluation from nothing, as the evaluate stage runs it: start-up + the cold pass,
    # against LlamaFactory's whole command (model load included)
    once = {
        "served": results["served"]["startup_s"] + results["served"]["cold_wall_s"],
        "llamafactory": results["llamafactory"]["wall_incl_load_s"]["median"],
    }
    results["served_vs_llamafactory_incl_startup"] = round(once["llamafactory"] / once["served"], 2)
    results["settings"] = {"serve": params["serve"], "evaluate": params["evaluate"]}
    print(f"  served/llamafactory {results['served_vs_llamafactory']}x, "
          f"served/offline {results['served_vs_offline']}")  # fmt: skip
    save("serving", results)


if __name__ == "__main__":
    main()
