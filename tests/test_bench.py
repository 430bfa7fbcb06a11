"""The benchmark scripts' own logic (the measurements themselves run in `make bench`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.common import bench_records, serve_version, spread
from bench.report import goals, median_range


def test_spread_is_median_and_range() -> None:
    s = spread([3.0, 1.0, 2.0, 10.0])
    assert (s["median"], s["min"], s["max"]) == (2.5, 1.0, 10.0)
    assert median_range(s) == "2.50 (1.00-10.00)"
    assert median_range(spread([4.0])) == "4.00 (1 run)"


def test_bench_records_keep_every_task_of_a_ticket(tmp_path: Path, monkeypatch) -> None:
    rows = [{"id": f"T{i // 3}", "task": ("a", "b", "c")[i % 3]} for i in range(12)]
    path = tmp_path / "test.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.setenv("BENCH_TICKETS", "2")
    assert [(r["id"], r["task"]) for r in bench_records(path)] == [
        ("T0", "a"), ("T0", "b"), ("T0", "c"), ("T1", "a"), ("T1", "b"), ("T1", "c"),
    ]  # fmt: skip
    monkeypatch.setenv("BENCH_TICKETS", "0")
    assert len(bench_records(path)) == 12


@pytest.mark.parametrize(
    ("served_vs_lf", "served_vs_offline", "noop_s", "stage_vs_hand", "verdicts"),
    [
        (4.2, 0.91, 1.2, 0.99, ["met", "met", "met", "met"]),
        (2.5, 0.80, 2.4, 0.95, ["**not met**"] * 4),
        (3.0, 0.85, 1.9, 1.03, ["met", "met", "met", "met"]),
    ],
)
def test_goals_compare_with_their_targets(
    served_vs_lf, served_vs_offline, noop_s, stage_vs_hand, verdicts
) -> None:
    serving = {"served_vs_llamafactory": served_vs_lf, "served_vs_offline": served_vs_offline}
    pipeline = {
        "noop_repro": {"wall_s": spread([noop_s])},
        "train": {"samples_per_s_stage_vs_hand": stage_vs_hand},
    }
    rows = goals(serving, pipeline)[2:]
    assert [r.rstrip(" |").rsplit("| ", 1)[1] for r in rows] == verdicts
    assert all(r.endswith("| n/a |") for r in goals(None, None)[2:])


def test_eval_speed_scores_each_task_of_a_ticket_record(monkeypatch) -> None:
    """bench.eval_speed scores the answers of one-record-per-ticket requests per task, as the
    evaluate stage does (a ticket's reply holds one `task: answer` line per task)."""
    from bench import eval_speed
    from triage.client import Outcome

    tasks = {
        "category": {"kind": "classification"},
        "summary": {"kind": "generation"},
    }
    records = [
        {"id": f"T{i}", "tasks": ["category", "summary"], "output": "",
         "answers": {"category": label, "summary": "order lost"}}
        for i, label in enumerate(["billing", "shipping", "billing", "shipping"])
    ]  # fmt: skip
    replies = ["billing", "shipping", "shipping", "shipping"]  # 3 of 4 right
    outcomes = [
        Outcome(f"category: {r}\nsummary: order lost", "stop", 9, 0.5, attempts=1) for r in replies
    ]

    class Server:
        startup_s = 1.0

    monkeypatch.setattr(
        eval_speed, "served_passes", lambda *a, **k: (Server(), [(2.0, outcomes), (1.0, outcomes)])
    )
    labels = {"category": ["billing", "shipping"]}
    stats = eval_speed.measure({"tasks": tasks}, records, labels, 1)
    assert stats["scores"]["category"]["accuracy"] == 0.75
    assert stats["scores"]["summary"]["rougeL"] == 1.0
    assert stats["requests_per_s"]["median"] == 4.0  # 4 requests in the 1 s warm pass


def test_machine_facts_need_no_serving_environment(tmp_path: Path, monkeypatch) -> None:
    """The training benchmark saves its results where vLLM is not set up (the machine facts
    then name no vLLM version) instead of failing after its measurements."""
    monkeypatch.delenv("TICKET_SERVE_PYTHON", raising=False)
    monkeypatch.setattr("triage.machine.ROOT", tmp_path)
    assert serve_version() is None
    monkeypatch.setenv("TICKET_SERVE_PYTHON", str(tmp_path / "missing" / "python"))
    assert serve_version() is None


def test_train_options_table_shows_unfinished_runs_as_such() -> None:
    """An option that timed out (torch_compile still compiling) gets no speed, not a zero."""
    from bench.report import train_options_section

    run = {"finished": True, "train_runtime_s": spread([60.0, 62.0]), "optimizer_steps": 30,
           "tokens_per_s": 300.0, "vs_default": 1.0, "train_loss": 1.2}  # fmt: skip
    result = {
        "records": 120, "record_tokens": 18000, "repeats": 2, "machine": {}, "measured": "",
        "runs": {
            "default": {**run, "overrides": []},
            "packing": {**run, "overrides": ["packing=true"], "train_runtime_s": spread([50.0]),
                        "tokens_per_s": 360.0, "vs_default": 1.22},
            "torch_compile": {"overrides": ["torch_compile=true"], "finished": False,
                              "timeout_s": 600.0},
        },
    }  # fmt: skip
    rows = [line for line in train_options_section(result, []) if line.startswith("| ")]
    assert rows[1:] == [
        "| the default | 61.0 (60.0-62.0) | 30 | 300.0 | 1.00x | 1.2 |",
        "| packing (`packing=true`) | 50.0 (1 run) | 30 | 360.0 | 1.22x | 1.2 |",
        "| torch.compile (`torch_compile=true`) | not finished within 600 s | | | | |",
    ]
    assert train_options_section(None, []) == []


def test_profile_groups_ops_by_what_they_do() -> None:
    from bench.train_profile import group_of

    assert group_of("aten::mm") == group_of("aten::addmm") == "matrix multiplies"
    assert group_of("aten::_log_softmax_backward_data").startswith("log-softmax")
    assert group_of("aten::_foreach_addcdiv_").startswith("optimizer")
    assert group_of("aten::_to_copy") == "dtype and layout copies"
    assert group_of("aten::mul_") == "elementwise"
    assert group_of("aten::embedding_dense_backward") == "other ops"


def test_train_speed_section_keeps_each_machines_run() -> None:
    """The before/after ratio differs by CPU: every train_speed*.json gets its own table, named
    by its machine, instead of the last one measured replacing the others."""
    from bench.report import train_speed_section

    def result(cpu: str, before: float, after: float) -> dict:
        side = {
            k: spread([v])
            for k, v in {"tokens_per_s": before, "tickets_per_s": 1.0, "records_per_s": 1.0}.items()
        }
        return {"machine": {"cpu": cpu, "cpu_flags": []}, "measured": "", "steps": 15,
                "repeats": 1, "before_rev": "4ac7663", "before": side,
                "after": {**side, "tokens_per_s": spread([after])},
                "tokens_per_s_ratio": round(after / before, 2), "tickets_per_s_ratio": 1.0,
                "train_dtype": "bfloat16", "gemm_peak": {"bfloat16": {"tflops": 1.0}},
                "achieved_tflops": 0.1, "fraction_of_peak": 0.1}  # fmt: skip

    lines = train_speed_section([result("Xeon", 100.0, 270.0), result("EPYC", 100.0, 250.0)])
    ratios = [line for line in lines if line.startswith("| tokens/s")]
    assert ratios == ["| tokens/s | 100.0 (1 run) | 270.0 (1 run) | 2.7x |",
                      "| tokens/s | 100.0 (1 run) | 250.0 (1 run) | 2.5x |"]  # fmt: skip
    assert [line.split(" on ")[1] for line in lines if line.startswith("Measured")] == [
        "Xeon ().", "EPYC ()."]  # fmt: skip


def test_gemm_ceiling_is_the_peak_over_the_counted_work() -> None:
    """The profile's ceiling line reports what the file measured, and says how the GEMMs' rate
    compares with the machine's peak."""
    from bench.report import gemm_ceiling

    line = gemm_ceiling({
        "machine": {"cpu": "EPYC"}, "attention": "eager", "gemm_gflop_per_token": 0.7,
        "parameters": 135_000_000, "gemm_tflops": 0.3, "matmul_peak_tflops": 0.4,
        "matmul_dtype": "bfloat16", "tokens_per_step": 650.0, "tokens_per_s_profiled": 300.0,
        "tokens_per_s_at_peak": 571.4,
    })  # fmt: skip
    assert "0.700 GFLOP per token (4 x parameters: 0.540)" in line
    assert "75% of this machine's bfloat16 matmul peak (0.400)" in line
    assert line.endswith("would train 571 tokens/s.")
