"""Render bench/results/*.json into BENCHMARKS.md (`make bench` runs this last).

Only measured figures appear: a section whose results file is missing says so. Each figure is
a median of several runs with the min-max spread, unless the table says "1 run".
"""

from __future__ import annotations

from typing import Any

import yaml

from bench.common import RESULTS, ROOT, load
from triage.files import write_text

OUT = ROOT / "BENCHMARKS.md"


def median_range(s: dict[str, Any] | None, fmt: str = "{:.2f}") -> str:
    """median (min-max) of a spread()."""
    if not s:
        return "-"
    if len(s["runs"]) == 1:
        return fmt.format(s["median"]) + " (1 run)"
    return f"{fmt.format(s['median'])} ({fmt.format(s['min'])}-{fmt.format(s['max'])})"


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("met" if ok else "**not met**")


STAGES = list(yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"])


def stage_order(names: Any) -> list[str]:
    """Stage names in dvc.yaml's order (results files store them sorted)."""
    return sorted(names, key=lambda n: STAGES.index(n) if n in STAGES else len(STAGES))


def machine_line(m: dict[str, Any]) -> str:
    gpu = m.get("gpu") or "no GPU"
    flags = ", ".join(m.get("cpu_flags") or [])
    return (
        f"{m.get('cpus')} cores ({m.get('cpu', '?')}; {flags}), {m.get('memory_gib')} GiB, {gpu}; "
        f"Python {m.get('python')}, torch {m.get('torch')}, transformers {m.get('transformers')}, "
        f"LlamaFactory {m.get('llamafactory')}, vLLM {m.get('vllm')}, DVC {m.get('dvc')}"
    )


def provenance(r: dict[str, Any]) -> str:
    """When and where a results file was measured: the sections may come from different
    machines of this kind (each benchmark can be rerun on its own)."""
    m = r["machine"]
    flags = ", ".join(m.get("cpu_flags") or [])
    return f"Measured {r['measured']} on {m.get('cpu', '?')} ({flags})."


def overlap(a: dict[str, Any], b: dict[str, Any]) -> str:
    """Whether two spreads' min-max ranges overlap: a difference inside them is not a finding."""
    if a["min"] <= b["max"] and b["min"] <= a["max"]:
        return "the two ranges overlap"
    return "the two ranges do not overlap"


def goals(serving: dict | None, pipeline: dict | None) -> list[str]:
    a = serving and serving["served_vs_llamafactory"]
    b = serving and serving["served_vs_offline"]
    c = pipeline and pipeline["noop_repro"]["wall_s"]["median"]
    d = pipeline and pipeline["train"].get("samples_per_s_stage_vs_hand")
    rows = [
        "| Goal | Target | Measured | |",
        "|---|---|---|---|",
        f"| (a) served evaluation vs LlamaFactory generation | >= 3x | "
        f"{f'{a}x' if a else '-'} | {verdict(a >= 3 if a else None)} |",
        f"| (b) served / offline vLLM throughput | >= 0.85 | {b or '-'} | "
        f"{verdict(b >= 0.85 if b else None)} |",
        f"| (c) no-op `dvc repro` | < 2 s | {f'{c:.2f} s' if c else '-'} | "
        f"{verdict(c < 2 if c else None)} |",
        f"| (d) train stage vs `llamafactory-cli train` by hand (samples/s) | within 3% | "
        f"{f'{d:.3f}' if d else '-'} | {verdict(round(abs(d - 1), 6) <= 0.03 if d else None)} |",
    ]
    return rows


def serving_section(r: dict[str, Any] | None) -> list[str]:
    out = ["## (a), (b) Serving: vLLM served vs offline vs LlamaFactory", ""]
    if not r:
        return [*out, "Not measured yet: `python -m bench.serving`.", ""]
    out += [provenance(r), ""]
    s = r["settings"]
    out += [
        f"{r['records']} test requests (the records of the first test tickets), "
        f"{r['repeats']} passes per path, the same merged model. Served: "
        f"max_num_seqs {s['serve']['max_num_seqs']}, concurrency {s['evaluate']['concurrency']}, "
        f"dtype {r['served']['dtype']}; LlamaFactory: batch {r['llamafactory']['batch_size']}, "
        f"dtype {r['llamafactory']['dtype']}, greedy, max_new_tokens "
        f"{r['llamafactory'].get('max_new_tokens', s['evaluate']['max_tokens'])}.",
        "",
        "| Path | requests/s | output tokens/s | generation wall s | cold pass s | "
        "start-up / load s |",
        "|---|---|---|---|---|---|",
    ]
    for name, label in (
        ("served", "vLLM server + evaluate client (the pipeline)"),
        ("offline", "vLLM offline `LLM.chat`"),
    ):
        p = r[name]
        out.append(
            f"| {label} | {median_range(p['requests_per_s'])} | "
            f"{median_range(p['output_tokens_per_s'], '{:.1f}')} | "
            f"{median_range(p['wall_s'], '{:.1f}')} | {p['cold_wall_s']:.1f} | {p['startup_s']} |"
        )
    lf = r["llamafactory"]
    load_s = lf["wall_incl_load_s"]["median"] - lf["predict_runtime_s"]["median"]
    out += [
        "| LlamaFactory `do_predict` + `predict_with_generate` | "
        f"{median_range(lf['requests_per_s'])} | - | "
        f"{median_range(lf['predict_runtime_s'], '{:.1f}')} | (every run) | {load_s:.1f} |",
        "",
        f"- served / LlamaFactory: **{r['served_vs_llamafactory']}x** requests/s. One whole "
        "evaluation from nothing, as the evaluate stage runs it (server start-up + cold pass, "
        f"against LlamaFactory's whole command with its model load): "
        f"{r['served_vs_llamafactory_incl_startup']}x.",
        f"- served / offline: **{r['served_vs_offline']}** (the cost of HTTP, JSON and our "
        "client).",
        "",
    ]
    return out


def pipeline_section(r: dict[str, Any] | None) -> list[str]:
    out = ["## (c), (d), (e) The pipeline", ""]
    if not r:
        return [*out, "Not measured yet: `python -m bench.pipeline`.", ""]
    out += [provenance(r), ""]
    w = r["whole"]
    out += [
        "### (e) `dvc repro` of the embedded default from nothing (fresh copy, 1 run)",
        "",
        "| Stage | s |",
        "|---|---|",
        *[f"| {k} | {w['stages_s'][k]:.0f} |" for k in stage_order(w["stages_s"])],
        f"| **whole `dvc repro`** | **{w['wall_s']:.0f}** ({w['wall_s'] / 60:.1f} min) |",
        "",
        "A stage's time runs from DVC's `Running stage` line to the next one, so it includes "
        "DVC hashing and caching its outputs. "
        + (
            f"Skipped: {', '.join(skipped)} (their dependencies, as this run made them, matched "
            "dvc.lock, and their outputs are committed; a model trained on the machine that "
            "made dvc.lock can come out bit for bit the same)."
            if (skipped := w.get("skipped"))  # recorded by the run: the pipeline changes
            else f"Measured {r.get('measured', '(date not recorded)')}, on that day's pipeline."
        ),
        "",
    ]
    n, e = r["noop_repro"], r["experiment"]
    out += [
        "### (c) DVC overhead",
        "",
        f"- `dvc repro` with nothing to do: {median_range(n['wall_s'])} s (`{n['last_output']}`).",
        f"- `dvc exp run -S {e['override']}`: reran {', '.join(stage_order(e['ran']))}; skipped "
        f"{', '.join(e['skipped']) or '-'}; {e['wall_s']:.0f} s in all, of which "
        f"{e['outside_stages_s']:.1f} s outside the stages (DVC start, experiment set-up, "
        "saving the experiment).",
        "",
    ]
    t = r["train"]
    out += [
        f"### (d) Train stage vs the same LlamaFactory command by hand ({r['repeats']} runs "
        "each, alternating)",
        "",
        f"By hand: `{t['hand_command']}`, with the environment the stage gives it (on a CPU, "
        "`GLIBC_TUNABLES`: glibc's malloc keeping freed memory)"
        + (
            f", both on the default's config sized down to {t['records']} records, one epoch "
            "(`BENCH_PARITY_RECORDS`)."
            if t.get("records")
            else ""
        ),
        "",
        "| | samples/s | tokens/s | wall s | peak RSS MB |",
        "|---|---|---|---|---|",
    ]
    for who, label in (("stage", "`python -m stages.train` (DVC's command)"), ("hand", "by hand")):
        x = t[who]
        out.append(
            f"| {label} | {median_range(x['samples_per_s'], '{:.3f}')} | "
            f"{median_range(x.get('tokens_per_s'), '{:.1f}')} | "
            f"{median_range(x['wall_s'], '{:.1f}')} | "
            f"{median_range(x['peak_rss_mb'], '{:.0f}')} |"
        )
    out += [
        "",
        f"Stage / hand: samples/s {t.get('samples_per_s_stage_vs_hand')}, tokens/s "
        f"{t.get('tokens_per_s_stage_vs_hand')} (LlamaFactory's own figures; "
        f"{overlap(t['stage']['samples_per_s'], t['hand']['samples_per_s'])}); wall time "
        f"{t['stage']['wall_s']['median'] / t['hand']['wall_s']['median']:.3f}. The stage's "
        "extra wall time is its own work: Python start-up and imports (torch, to count GPUs), "
        "the fingerprint, DVCLive (its import and its files), the matmul-peak measurement "
        "(about a second), copying the adapter, the loss-curve CSV and metrics.",
        "",
    ]
    return out


def eval_speed_section(r: dict[str, Any] | None) -> list[str]:
    out = ["## Making evaluation fast", ""]
    if not r:
        return [*out, "Not measured yet: `python -m bench.eval_speed`.", ""]
    out += [provenance(r), ""]
    out += [
        f"The evaluate stage's own path (server + client), {r['records']} requests; one server "
        "start per setting, requests/s over several passes after a warm-up pass; the scores "
        "(of the last pass) show whether a setting changed the answers.",
        "",
        "| Setting | requests/s | output tokens/s | p50 / p95 latency s | start-up s | "
        "category acc | priority acc | summary ROUGE-L |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in r["rows"]:
        sc = row["scores"]
        if row.get("errors"):  # failed requests: their speed and scores mean nothing
            out.append(
                f"| {row['variant']} | {row['errors']} of {row['requests']} requests failed "
                f"| - | - | {row['server_startup_s']:.1f} | - | - | - |"
            )
            continue
        out.append(
            f"| {row['variant']} | {median_range(row['requests_per_s'])} | "
            f"{row['output_tokens_per_second']:.1f} | {row['latency_p50_s']:.2f} / "
            f"{row['latency_p95_s']:.2f} | {row['server_startup_s']:.1f} | "
            f"{sc.get('category', {}).get('accuracy', '-')} | "
            f"{sc.get('priority', {}).get('accuracy', '-')} | "
            f"{sc.get('summary', {}).get('rougeL', '-')} |"
        )
    out += ["", *compile_trade_off(r["rows"])]
    return [*out, ""]


def compile_trade_off(rows: list[dict[str, Any]]) -> list[str]:
    """When does torch.compile's longer start-up pay for itself? (evaluate's case)"""
    eager = next((r for r in rows if r["variant"] == "params.yaml as committed"), None)
    compiled = next((r for r in rows if not r["serve"].get("enforce_eager", True)), None)
    if not eager or not compiled or not eager["serve"].get("enforce_eager", True):
        return []
    extra_s = compiled["server_startup_s"] - eager["server_startup_s"]
    saved_per_request = (
        1 / eager["requests_per_s"]["median"] - 1 / compiled["requests_per_s"]["median"]
    )
    if saved_per_request <= 0:
        return [f"Compiled start-up costs {extra_s:.0f} s more and saves nothing per request."]
    return [
        f"Compiled vs eager: {extra_s:.0f} s more start-up, "
        f"{saved_per_request * 1000:.1f} ms less per request: it pays off after "
        f"{extra_s / saved_per_request:,.0f} requests; the evaluate stage sends one per test "
        "record (one per ticket by default)."
    ]


def train_speed_section(results: list[dict[str, Any]]) -> list[str]:
    """One table per `train_speed*.json`: the ratio differs by CPU (AMX, AVX-512 BF16 without
    AMX, no bf16 at all), so each machine's run is kept beside the others."""
    if not results:
        return ["## Training throughput", "", "Not measured (`python -m bench.train_speed`).", ""]
    return ["## Training throughput", "", *[line for r in results for line in train_speed_run(r)]]


def train_speed_run(r: dict[str, Any]) -> list[str]:
    before, after = r["before"], r["after"]
    dtype = r["train_dtype"]
    peak = r["gemm_peak"][dtype]["tflops"]
    tree = f"of commit {r['after_rev']}" if r.get("after_rev") else "of the day it was measured"
    return [
        provenance(r),
        "",
        f"`python -m bench.train_speed`: the train stage's LlamaFactory run, {r['steps']} "
        f"optimizer steps, before (commit {r['before_rev']}: one record per ticket and task, "
        "long prompts, padded batches, LoRA dropout 0.1, activation checkpointing, SDPA "
        f"attention) and after (the default {tree}), alternating, {r['repeats']} runs each. "
        "Tokens without padding.",
        "",
        "| | before | after | after / before |",
        "|---|---|---|---|",
        f"| tokens/s | {median_range(before['tokens_per_s'], '{:.1f}')} | "
        f"{median_range(after['tokens_per_s'], '{:.1f}')} | {r['tokens_per_s_ratio']}x |",
        f"| tickets/s | {median_range(before['tickets_per_s'], '{:.3f}')} | "
        f"{median_range(after['tickets_per_s'], '{:.3f}')} | {r['tickets_per_s_ratio']}x |",
        f"| records/s | {median_range(before['records_per_s'])} | "
        f"{median_range(after['records_per_s'])} | |",
        "",
        "Matrix-multiply peak of this machine (torch.matmul, best of 4 shapes): "
        + ", ".join(f"{k} {v['tflops']:.3f} TFLOP/s" for k, v in r["gemm_peak"].items())
        + f". The train stage computes in {dtype}; counting 4 x parameters x tokens of useful "
        f"work, the default reaches {r['achieved_tflops']:.4f} TFLOP/s, "
        f"{r['fraction_of_peak']:.0%} of the {dtype} peak ({peak:.3f}).",
        "",
    ]


def train_options_section(r: dict[str, Any] | None, pairs: list[dict[str, Any]]) -> list[str]:
    """LlamaFactory's speed options against the default, on the same records (train_options);
    `pairs`: comparisons of some options with the default run on their own (BENCH_OPTIONS)."""
    from bench.train_options import OPTIONS

    if not r:
        return []

    def rows(result: dict[str, Any]) -> list[str]:
        out = []
        for name in [*[n for n in OPTIONS if n in result["runs"]],
                     *[n for n in result["runs"] if n not in OPTIONS]]:  # fmt: skip
            run = result["runs"][name]
            label = OPTIONS[name][0] if name in OPTIONS else name.replace("_", " ")
            args = " ".join(f"`{o}`" for o in run["overrides"] if "model_name_or_path" not in o)
            option = f"{label} ({args})" if args else label
            if not run["finished"]:
                out.append(f"| {option} | not finished within {run['timeout_s']:.0f} s | | | | |")
                continue
            out.append(
                f"| {option} | {median_range(run['train_runtime_s'], '{:.1f}')} | "
                f"{run['optimizer_steps']} | {run['tokens_per_s']:.1f} | "
                f"{run['vs_default']:.2f}x | {run['train_loss']} |"
            )
        return out

    header = [
        "| option | train s | optimizer steps | tokens/s | speed vs default | train loss |",
        "|---|---|---|---|---|---|",
    ]
    lines = [
        "### LlamaFactory's speed options",
        "",
        provenance(r),
        "",
        f"`python -m bench.train_options`: the default's config trained once over the same first "
        f"{r['records']} training records ({r['record_tokens']:,} tokens) with each option, "
        f"alternating, {r['repeats']} runs each. Tokens/s is those tokens over the training time "
        "(packing adds padding of its own). The losses do not compare across packing: it "
        "changes the batches, and without neat packing a record attends to the records packed "
        "before it. `torch_compile` compiles from nothing in its first run and reuses "
        "TorchInductor's cache in the next." + (f" Note: {r['note']}." if r.get("note") else ""),
        "",
        *header,
        *rows(r),
        "",
    ]
    for pair in pairs:
        names = [n for n in pair["runs"] if n != "default"]
        lines += [
            f"`BENCH_OPTIONS={','.join(names)} python -m bench.train_options` "
            f"({pair['measured']}, {pair['machine']['cpu']}): the same, {pair['repeats']} runs "
            "each." + (f" Note: {pair['note']}." if pair.get("note") else ""),
            "",
            *header,
            *rows(pair),
            "",
        ]
    return lines


def train_profile_section(profiles: list[dict[str, Any]]) -> list[str]:
    """Where a training step's time goes, by op group, one column per profile
    (bench.train_profile: the default, and with BENCH_PROFILE_ATTENTION another attention)."""
    if not profiles:
        return []
    names = list(dict.fromkeys(g for r in profiles for g in r["share_by_group"]))
    groups = [
        f"| {name} | "
        + " | ".join(f"{r['share_by_group'].get(name, 0):.0%}" for r in profiles)
        + " |"
        for name in names
    ]
    lines = [
        "### Where a training step's time goes",
        "",
        f"`python -m bench.train_profile`: torch.profiler over LlamaFactory's own training of "
        f"`{profiles[0]['config']}` ({profiles[0]['dtype']}), each op's self time over "
        f"{profiles[0]['steps_profiled']} optimizer steps after "
        f"{profiles[0]['after_warmup_steps']} warm-up steps, by attention implementation "
        "(`flash_attn`) and CPU. Eager attention is plain ops (batched matmuls, a softmax), "
        "counted in their groups; SDPA's are ops of their own.",
        "",
        "| op group | "
        + " | ".join(f"attention: {r['attention']}, {r['machine']['cpu']}" for r in profiles)
        + " |",
        "|---" * (len(profiles) + 1) + "|",
        "| seconds per step (all ops) | "
        + " | ".join(f"{r['op_seconds_per_step']:.2f}" for r in profiles)
        + " |",
        *groups,
        "",
    ]
    for r in profiles:
        if "gemm_gflop_per_token" in r:
            lines += [gemm_ceiling(r), ""]
    for r in profiles:
        lines += [
            f"The 15 longest ops, attention {r['attention']}, {r['machine']['cpu']}. "
            f"{provenance(r)}",
            "",
            "| op | share | calls per step |",
            "|---|---|---|",
            *[f"| `{o['op']}` | {o['share']:.1%} | {o['calls_per_step']} |" for o in r["top_ops"]],
            "",
        ]
    return lines


def gemm_ceiling(r: dict[str, Any]) -> str:
    """What the profiler's FLOP count says about a profile: the GEMM work per token, the rate
    the GEMMs ran at, and the tokens/s of a step that did nothing but its GEMMs at the peak."""
    useful = f" (4 x parameters: {4 * r['parameters'] / 1e9:.3f})" if r.get("parameters") else ""
    return (
        f"{r['machine']['cpu']}, attention {r['attention']}: the matrix multiplies of a step "
        f"are {r['gemm_gflop_per_token']:.3f} GFLOP per token{useful}, at "
        f"{r['gemm_tflops']:.3f} TFLOP/s, {r['gemm_tflops'] / r['matmul_peak_tflops']:.0%} of "
        f"this machine's {r['matmul_dtype']} matmul peak ({r['matmul_peak_tflops']:.3f}); "
        f"{r['tokens_per_step']:.0f} tokens per step, {r['tokens_per_s_profiled']:.0f} tokens/s "
        "while profiled. A step that did nothing but its matrix multiplies, at the peak, would "
        f"train {r['tokens_per_s_at_peak']:.0f} tokens/s."
    )


def client_speed_section(r: dict[str, Any] | None) -> list[str]:
    """The evaluate stage's request loop before and after the openai client (bench.client_speed)."""
    if not r:
        return []
    before, after = r["before"], r["after"]
    return [
        "### The request loop: hand-written httpx against the openai client",
        "",
        provenance(r),
        "",
        f"`python -m bench.client_speed`: the same {r['requests']} request bodies to one vLLM "
        f"server, alternating the evaluate client of commit {r['before_rev']} (asyncio + httpx, "
        "its own retry loop) and today's (the openai client, retries by tenacity), "
        f"{r['repeats']} passes each after a warm-up; each pass in a process of its own.",
        "",
        "| client | requests/s | client CPU s per pass | errors |",
        "|---|---|---|---|",
        f"| httpx, {r['before_rev']} | {median_range(before['requests_per_s'])} | "
        f"{median_range(before.get('client_cpu_s'))} | {before['errors']} |",
        f"| openai | {median_range(after['requests_per_s'])} | "
        f"{median_range(after.get('client_cpu_s'))} | {after['errors']} |",
        "",
        f"openai / httpx: {r['after_vs_before']}x "
        f"({overlap(before['requests_per_s'], after['requests_per_s'])}). Same answers: "
        + (
            "; ".join(f"{k} {v}" for k, v in r["same_answers"].items())
            if "same_answers" in r
            else f"first pass of each {r['same_answers_first_pass']}"
        )
        + ".",
        "",
    ]


def train_log_section(r: dict[str, Any] | None) -> list[str]:
    """The whole train stage, evaluations included: where its time went (bench.train_log)."""
    if not r:
        return []
    rows = [
        [name, f"{run['elapsed_s']:,}", f"{run['train_s']:,}", str(run["evaluations"]),
         f"{run['eval_s']:,}", f"{run['tokens_per_s_training']:.1f}",
         f"{run['tokens_per_s_overall']:.1f}"]
        for name, run in r["runs"].items()
    ]  # fmt: skip
    return [
        "### Where the train stage's time goes",
        "",
        provenance(r),
        "",
        f"`{r['command'].strip()}`: each run's `{r['log']}` split into optimizer steps and "
        "evaluations of the validation loss (whole seconds, as LlamaFactory logs them).",
        "",
        "| run | train s | steps s | evaluations | evaluation s | tokens/s in steps | "
        "tokens/s overall |",
        "|---|---|---|---|---|---|---|",
        *["| " + " | ".join(row) + " |" for row in rows],
        "",
    ]


def main() -> None:
    serving, pipeline, speed = load("serving"), load("pipeline"), load("eval_speed")
    train_log = load("train_log")
    train_speeds = [load(p.stem) for p in sorted(RESULTS.glob("train_speed*.json"))]
    train_options = load("train_options")
    option_pairs = [load(p.stem) for p in sorted(RESULTS.glob("train_options_*.json"))]
    profiles = [load(p.stem) for p in sorted(RESULTS.glob("train_profile*.json"))]
    client = load("client_speed")
    machines = {machine_line(r["machine"]) for r in (serving, pipeline, speed, *train_speeds) if r}
    lines = [
        "# Benchmarks",
        "",
        "Generated by `make bench` (`python -m bench.report` renders `bench/results/*.json`). "
        "Medians of several runs with the min-max spread in brackets. Sizes: BENCH_TICKETS "
        "test tickets (default 40; their records, one per ticket by default), BENCH_REPEATS runs "
        "(default 3).",
        "",
        "Measured on: " + " | ".join(sorted(machines)) if machines else "Nothing measured yet.",
        "",
        "## Goals",
        "",
        *goals(serving, pipeline),
        "",
        *train_speed_section(train_speeds),
        *train_options_section(train_options, option_pairs),
        *train_profile_section(profiles),
        *train_log_section(train_log),
        *serving_section(serving),
        *pipeline_section(pipeline),
        *eval_speed_section(speed),
        *client_speed_section(client),
        "## Reproduce",
        "",
        "```",
        "make bench                      # all of it, then BENCHMARKS.md",
        "python -m bench.train_speed     # one part (with .venv on PATH, as make does)",
        "python -m bench.train_options",
        "python -m bench.train_profile",
        "python -m bench.client_speed",
        "python -m bench.eval_speed",
        "python -m bench.serving",
        "python -m bench.pipeline",
        "python -m bench.report",
        "```",
        "",
    ]
    write_text(OUT, "\n".join(lines))
    print(f"bench: wrote {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
