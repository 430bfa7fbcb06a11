"""Pipeline speed on the embedded default, in a fresh copy of the repository (own git, own
DVC cache; the workspace is not touched):

- (e) `dvc repro` from nothing, per stage (from DVC's "Running stage" lines, timestamped as
  they arrive: a stage's time includes DVC saving its outputs);
- (c) `dvc repro` with nothing to do (BENCH_NOOP_REPEATS runs, default 5), and
  `dvc exp run -S lora_rank=<half>`: which stages rerun, and the time outside them;
- (d) the train stage (`python -m stages.train`, DVC's command) against the command it runs,
  `llamafactory-cli train configs/train.yaml ...`, typed by hand, alternately, BENCH_REPEATS
  times each: LlamaFactory's samples/s and tokens/s, wall time and peak memory. Both train
  the default's config sized down to BENCH_PARITY_RECORDS records for one epoch (default
  120; 0 = the default as it is): the comparison needs the same config on both sides, not
  the whole training several times over.

    python -m bench.pipeline
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from bench.common import WORK, copy_project, repeats, save, spread, timed
from triage.training import command as train_command
from triage.training import summarise

STAGE_LINE = re.compile(r"Running stage '(\w+)'")


def copy_repo(dest: Path) -> Path:
    """The project's files (tracked, or new and not ignored) in a new git repo + commit."""
    if dest.exists():
        shutil.rmtree(dest)
    copy_project(dest)
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=dest, check=True)
    commit(dest, "bench")
    return dest


def commit(ws: Path, message: str) -> None:
    git = ["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost"]
    subprocess.run([*git, "add", "-A"], cwd=ws, check=True)
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", message], cwd=ws, check=True)


def dvc_timed(args: list[str], cwd: Path) -> tuple[float, dict[str, float], str]:
    """Run `dvc ARGS`, timestamping its output lines: (wall s, {stage: s}, output)."""
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "dvc", *args], cwd=cwd, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    marks: list[tuple[str, float]] = []
    lines = []
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line)
        if m := STAGE_LINE.search(line):
            marks.append((m.group(1), time.monotonic()))
    proc.wait()
    end = time.monotonic()
    output = "".join(lines)
    if proc.returncode != 0:
        sys.stderr.write(output[-4000:])
        raise SystemExit(f"bench: dvc {' '.join(args)} exited {proc.returncode}")
    stages = {
        name: round((marks[i + 1][1] if i + 1 < len(marks) else end) - t, 1)
        for i, (name, t) in enumerate(marks)
    }
    return end - started, stages, output


def whole_pipeline(ws: Path) -> dict[str, Any]:
    wall, stages, _ = dvc_timed(["repro"], ws)
    print(f"  dvc repro from nothing: {wall:.0f} s {stages}", flush=True)
    pipeline = yaml.safe_load((ws / "dvc.yaml").read_text())["stages"]
    skipped = [name for name in pipeline if name not in stages]  # outputs committed, up to date
    return {"wall_s": round(wall, 1), "stages_s": stages, "skipped": skipped}


def noop_repro(ws: Path) -> dict[str, Any]:
    runs = []
    for _ in range(int(os.environ.get("BENCH_NOOP_REPEATS", "5"))):
        wall, stages, output = dvc_timed(["repro"], ws)
        if stages:
            raise SystemExit(f"bench: a no-op dvc repro ran {sorted(stages)}")
        runs.append(wall)
    print(f"  no-op dvc repro: {spread(runs)}", flush=True)
    return {"wall_s": spread(runs), "last_output": output.strip().splitlines()[-1]}


def experiment(ws: Path) -> dict[str, Any]:
    params = yaml.safe_load((ws / "params.yaml").read_text())
    rank = max(1, int(params["lora_rank"]) // 2)
    wall, stages, output = dvc_timed(["exp", "run", "-S", f"lora_rank={rank}"], ws)
    skipped = sorted(set(re.findall(r"Stage '(\w+)' didn't change, skipping", output)))
    print(f"  dvc exp run -S lora_rank={rank}: {wall:.0f} s, ran {stages}", flush=True)
    subprocess.run(["git", "checkout", "-q", "--", "."], cwd=ws, check=True)
    dvc_timed(["checkout", "--force"], ws)  # back to the baseline's outputs
    return {
        "override": f"lora_rank={rank}",
        "wall_s": round(wall, 1),
        "ran": stages,
        "skipped": skipped,
        "outside_stages_s": round(wall - sum(stages.values()), 1),
    }


def size_down(ws: Path, records: int) -> None:
    """The copy's params and config set to train `records` records once (configure stage)."""
    params_path = ws / "params.yaml"
    params = yaml.safe_load(params_path.read_text())
    params.update(max_samples=records, num_train_epochs=1)
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))
    timed(
        [sys.executable, "-m", "stages.configure"],
        cwd=ws,
        env={**os.environ, "PYTHONPATH": str(ws)},
    )


def train_parity(ws: Path, n: int) -> dict[str, Any]:
    """The train stage vs its LlamaFactory command typed by hand, alternately."""
    records = int(os.environ.get("BENCH_PARITY_RECORDS", "120"))
    if records:
        size_down(ws, records)
    config = yaml.safe_load((ws / "configs/train.yaml").read_text())
    env = {**os.environ, "PYTHONPATH": str(ws)}
    hand_dir = ws / "runs" / "hand"
    cmd, hand_env = train_command(config, {})  # the stage's command line, relative paths
    hand_cmd = [*cmd, f"output_dir={hand_dir}"]
    hand_env = {**hand_env, "TENSORBOARD_LOGGING_DIR": str(hand_dir / "tensorboard")}
    rows: dict[str, list[dict[str, Any]]] = {"stage": [], "hand": []}
    for i in range(n):
        for who in ("stage", "hand") if i % 2 == 0 else ("hand", "stage"):
            if who == "stage":
                argv = ["/usr/bin/time", "-f", "%M", sys.executable, "-m", "stages.train"]
                wall, proc = timed(argv, cwd=ws, env=env)
                m = json.loads((ws / "metrics/train.json").read_text())
            else:
                shutil.rmtree(hand_dir, ignore_errors=True)
                wall, proc = timed(["/usr/bin/time", "-f", "%M", *hand_cmd], cwd=ws, env=hand_env)
                m = summarise(hand_dir, wall, 0.0)
            peak_mb = int(proc.stderr.strip().splitlines()[-1]) / 1024
            rows[who].append({"wall_s": wall, "peak_rss_mb": peak_mb,
                              "samples_per_s": m["train_samples_per_second"],
                              "tokens_per_s": m.get("train_tokens_per_second"),
                              "train_loss": m["train_loss"]})  # fmt: skip
            print(f"  train ({who}): {rows[who][-1]}", flush=True)
    out: dict[str, Any] = {"hand_command": " ".join(hand_cmd), "records": records or None}
    for who, runs in rows.items():
        out[who] = {k: spread([r[k] for r in runs]) for k in runs[0] if runs[0][k] is not None}
    for k in ("samples_per_s", "tokens_per_s"):
        if k in out["stage"] and k in out["hand"]:
            out[f"{k}_stage_vs_hand"] = round(
                out["stage"][k]["median"] / out["hand"][k]["median"], 3
            )
    return out


def main() -> None:
    ws = copy_repo(WORK / "pipeline-workspace")
    n = repeats()
    print(f"bench pipeline: fresh copy in {ws}", flush=True)
    results: dict[str, Any] = {"whole": whole_pipeline(ws)}
    commit(ws, "dvc repro")  # this copy's own outputs (training is not bitwise repeatable)
    results["noop_repro"] = noop_repro(ws)
    results["experiment"] = experiment(ws)
    results["train"] = train_parity(ws, n)
    results["repeats"] = n
    save("pipeline", results)


if __name__ == "__main__":
    main()
