"""The tuning guide's three studies (part 4) as queued DVC experiments: `make exp-rank`.

    python -m triage.study rank      # lora_rank 16 32 64 128 (lora_alpha null: 2 x rank)
    python -m triage.study lr        # learning_rate 1e-4 2e-4 5e-4
    python -m triage.study target    # lora_target q_proj,v_proj | q_proj,k_proj,v_proj,o_proj | all

    # sized down for a quick CPU run: other values, extra overrides, two workers
    python -m triage.study rank --values 8 16 --jobs 2 -S max_samples=40 -S prepare.max_tickets=200
    # train and merge only, no served evaluation
    python -m triage.study lr --targets merge

Each value becomes one queued experiment, `dvc exp run --queue -n <study>-<value> -S ...`, so
the runs are recorded, compared and applied like any other experiment. Then the queue is
started (`dvc queue start -j JOBS`), the script waits until every experiment of the study has
finished (polling `dvc exp list` and `dvc queue status`), and prints `dvc exp show --md`
restricted to the study's rows, the params it changed and the key metrics.

An experiment name that already exists on this commit is not queued again (the study resumes
where it stopped); `--force` removes such experiments first so they run anew. Ctrl-C, SIGTERM
or SIGHUP while waiting stops the study's own experiments (the running ones are killed, the
queued ones and the killed ones' records removed), so no queue worker runs on for it; running
the study again queues what did not finish.
"""

from __future__ import annotations

import argparse
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass

from triage.dvc_cli import dvc
from triage.files import run_main
from triage.params import PipelineError
from triage.presets import override
from triage.signals import raise_terminated


@dataclass(frozen=True)
class Study:
    param: str  # the params.yaml key the study varies
    values: tuple[str, ...]  # the guide's values, as written on the command line
    help: str


STUDIES = {
    # Rank 16/32/64/128 with alpha = 2 x rank: lora_alpha stays null (LlamaFactory's default).
    "rank": Study("lora_rank", ("16", "32", "64", "128"), "rank table of the guide (part 4, 1)"),
    "lr": Study("learning_rate", ("1e-4", "2e-4", "5e-4"), "learning-rate study (part 4, 2)"),
    "target": Study(
        "lora_target",
        ("q_proj,v_proj", "q_proj,k_proj,v_proj,o_proj", "all"),
        "target-module study (part 4, 3)",
    ),
}

# Metrics `dvc exp show` keeps for every study (regexes over its column names). A column name
# carries its file (`metrics/eval.json:...`) only when two files share the key: eval.json and
# baseline.json always share theirs, so requiring the prefix never shows the baseline's scores
# as the model's.
KEY_METRICS = (
    r"(metrics/train\.json:)?(train_loss|eval_loss|train_runtime_s|trainable_parameters)",
    r"metrics/train\.json:lora_alpha",  # the alpha LoRA really used (2 x rank when null)
    r"metrics/eval\.json:\w+\.(accuracy|macro_f1|rougeL)",
)
POLL_S = 20.0  # seconds between two looks at the queue
# DVC asks the workers for their status with a short reply deadline, and a worker whose
# experiment trains on every core can miss it: `dvc queue status` then says 0 workers while
# the experiment runs. Only a queue with nothing running and no worker answering for this
# long is taken as stalled.
IDLE_S = 300.0


class StudyTimeout(PipelineError):
    """--timeout passed before the study's experiments finished."""


def slug(value: str) -> str:
    """A short experiment-name part: `q_proj,k_proj,v_proj,o_proj` -> `qkvo`, `1e-4` -> `1e-4`."""
    parts = [p.strip().removesuffix("_proj") for p in value.split(",")]
    joiner = "" if all(len(p) == 1 for p in parts) else "+"
    return re.sub(r"[^A-Za-z0-9.+_-]", "_", joiner.join(parts))


def experiment_name(study: str, value: str, extra: Iterable[str] = ()) -> str:
    """`rank-16`; with overrides for every run, `rank-16-max_samples100`: a study sized down
    with EXTRA must not pass later for the full study's run of the same value (a run whose
    name exists on the commit is not queued again)."""
    parts = [slug(value)] + [slug(item.lstrip("+~").replace("=", "")) for item in extra]
    return "-".join([study, *parts])


def queue_commands(
    study: str, values: Iterable[str], extra: Iterable[str] = (), targets: Iterable[str] = ()
) -> list[list[str]]:
    """One `dvc exp run --queue -n NAME -S PARAM=VALUE [-S EXTRA...] [TARGETS]` per value."""
    param = STUDIES[study].param
    cmds = []
    for value in values:
        cmd = ["dvc", "exp", "run", "--queue", "-n", experiment_name(study, value, extra)]
        cmd += ["-S", override(param, value)]
        for item in extra:
            cmd += ["-S", item]
        cmds.append(cmd + list(targets))
    return cmds


def show_command(study: str, extra: Iterable[str] = ()) -> list[str]:
    """`dvc exp show --md` with the columns a study is about: the params it sets, key metrics."""
    params = [STUDIES[study].param] + [item.split("=", 1)[0].lstrip("+~") for item in extra]
    shown = "|".join(re.escape(p) for p in dict.fromkeys(params))
    return [
        "dvc", "exp", "show", "--md", "--no-pager", "--hide-queued", "--only-changed",
        "--keep", "|".join(f"^{m}$" for m in KEY_METRICS),
        # drop every column but the experiment's name and the study's params (kept ones stay)
        "--drop", rf"^(?!(Experiment|Created|State|(params\.yaml:)?({shown}))$).*",
    ]  # fmt: skip


def study_rows(table: str, names: Iterable[str]) -> str:
    """The markdown table without rows of experiments outside the study (other studies' runs)."""
    names = set(names)
    kept = []
    for line in table.splitlines():
        first = line.split("|")[1].strip() if line.startswith("|") else ""
        is_exp = first.startswith(("├", "└", "│"))
        match = re.search(r"\[([^\]]+)\]", first)
        if not is_exp or (match and match.group(1) in names):
            kept.append(line)
    return "\n".join(kept)


def start_queue(jobs: int) -> None:
    """`dvc queue start -j JOBS`. Its output goes to a file, not a pipe: the worker it spawns
    inherits the descriptors, and reading a pipe to its end would wait for the whole queue."""
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.run(
            ["dvc", "queue", "start", "-j", str(jobs)],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
        out.seek(0)
        text = out.read().strip()
    if proc.returncode != 0:
        raise PipelineError(f"dvc queue start failed:\n{text}")
    print(text)


def existing_experiments() -> set[str]:
    """Names of the experiments of the current commit (HEAD)."""
    return set(dvc("exp", "list", "--name-only").split())


def queue_state(names: Iterable[str]) -> tuple[dict[str, str], int]:
    """`dvc queue status` as {name: Queued|Running|Failed|Success} and the live worker count.

    Its table rows are `task name created... status`; the names of a study have no spaces. A
    name queued again after a failed run has two rows: the live one (Running, Queued) wins.
    """
    names = set(names)
    out = dvc("queue", "status")
    order = ("Running", "Queued", "Success", "Failed")
    states: dict[str, str] = {}
    for line in out.splitlines():
        tokens = line.split()
        if len(tokens) >= 3 and tokens[1] in names and tokens[-1] in order:
            old = states.get(tokens[1], "Failed")
            states[tokens[1]] = min(old, tokens[-1], key=order.index)
    workers = re.search(r"Worker status: (\d+) active, (\d+) idle", out)
    return states, sum(map(int, workers.groups())) if workers else 0


def wait(
    names: list[str], poll_s: float, timeout_s: float | None, idle_s: float = IDLE_S
) -> list[str]:
    """Block until every experiment succeeded (exists) or failed; return the failed names."""
    started = time.monotonic()
    last: dict[str, str] = {}
    idle_since: float | None = None
    while True:
        done = existing_experiments()
        states, workers = queue_state(names)
        now = {n: "Success" if n in done else states.get(n, "Queued") for n in names}
        if now != last:
            elapsed = time.monotonic() - started
            print(f"[{elapsed:5.0f} s] " + ", ".join(f"{n}: {s}" for n, s in now.items()))
            last = now
        pending = [n for n, s in now.items() if s not in ("Success", "Failed")]
        if not pending:
            return [n for n, s in now.items() if s == "Failed"]
        # a queue without workers never finishes: say so instead of waiting forever (nothing
        # runs then, so nothing is left behind; the queued experiments stay queued)
        stalled = workers == 0 and "Running" not in now.values()
        idle_since = (idle_since or time.monotonic()) if stalled else None
        if idle_since is not None and time.monotonic() - idle_since >= idle_s:
            raise PipelineError(
                f"no queue worker answered for {idle_s:.0f} s and none of {', '.join(pending)} "
                "is running: `dvc queue start` resumes them (`dvc queue logs NAME` explains)"
            )
        if timeout_s is not None and time.monotonic() - started > timeout_s:
            raise StudyTimeout(
                f"{', '.join(pending)} did not finish within {timeout_s:.0f} s: stopped"
            )
        time.sleep(poll_s)


def stop(names: list[str], grace_s: float = 60.0) -> None:
    """Stop the study's experiments: remove the queued ones, kill the running ones (DVC sends
    them SIGINT, so their stages stop vLLM and LlamaFactory), then remove the killed runs'
    records once they have ended. A worker with nothing left to do exits by itself."""
    states, _ = queue_state(names)
    queued = [n for n, s in states.items() if s == "Queued"]
    running = [n for n, s in states.items() if s == "Running"]
    if queued:
        dvc("queue", "remove", *queued)
    if running:
        dvc("queue", "kill", *running)
    deadline = time.monotonic() + grace_s
    while running and time.monotonic() < deadline:
        states, _ = queue_state(running)
        running = [n for n in running if states.get(n) == "Running"]
        time.sleep(1)
    if running:
        dvc("queue", "kill", "--force", *running)
    ended = [n for n, s in queue_state(names)[0].items() if s in ("Failed", "Queued")]
    if ended:
        dvc("queue", "remove", *ended)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("study", choices=sorted(STUDIES), help="which of the guide's studies")
    parser.add_argument("--values", nargs="+", help="values to try (default: the guide's)")
    parser.add_argument(
        "-S", "--set-param", dest="extra", action="append", default=[], metavar="KEY=VALUE",
        help="extra override for every run, e.g. -S max_samples=40 (repeatable)",
    )  # fmt: skip
    parser.add_argument(
        "--targets", nargs="+", default=[], metavar="STAGE",
        help="stop at these stages (e.g. merge: no evaluation); default the whole pipeline",
    )  # fmt: skip
    parser.add_argument("-j", "--jobs", type=int, default=1, help="queue workers (default 1)")
    parser.add_argument("--force", action="store_true", help="rerun experiments that exist")
    parser.add_argument("--dry", action="store_true", help="print the commands, run nothing")
    parser.add_argument("--poll", type=float, default=POLL_S, help="seconds between checks")
    parser.add_argument("--timeout", type=float, help="stop the study after this many seconds")
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # progress shows up in logs and pipes at once

    study = STUDIES[args.study]
    values = args.values or list(study.values)
    commands = queue_commands(args.study, values, args.extra, args.targets)
    names = [experiment_name(args.study, v, args.extra) for v in values]
    if len(set(names)) != len(names):
        raise PipelineError(f"values give duplicate experiment names: {names}")
    print(f"study {args.study}: {study.param} = {' | '.join(values)} ({study.help})")
    if args.dry:
        for cmd in [*commands, ["dvc", "queue", "start", "-j", str(args.jobs)]]:
            print(" ".join(cmd))
        return

    # 1. queue one experiment per value (those already run on this commit are kept)
    existing = existing_experiments() & set(names)
    if existing and args.force:
        dvc("exp", "remove", *sorted(existing))
        existing = set()
    for name, cmd in zip(names, commands, strict=True):
        if name in existing:
            print(f"{name}: exists on this commit, not queued again (--force reruns it)")
            continue
        print(" ".join(cmd))
        proc = subprocess.run(cmd)
        if proc.returncode != 0:
            raise PipelineError(f"queueing {name} failed (exit code {proc.returncode})")

    # 2. start the workers and wait for this study's experiments; stopped, stop them too
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, raise_terminated)
    try:
        if set(names) - existing:
            print(f"dvc queue start -j {args.jobs}")
            start_queue(args.jobs)
        failed = wait(names, args.poll, args.timeout)
    except (KeyboardInterrupt, StudyTimeout):  # Ctrl-C, SIGTERM or SIGHUP, or --timeout
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_IGN)  # a second Ctrl-C must not cut the cleanup
        stop(names)
        raise

    # 3. the comparison: the study's rows, the params it set, the key metrics
    print()
    print(study_rows(dvc(*show_command(args.study, args.extra)[1:]), names))
    if failed:
        logs = "; ".join(f"dvc queue logs {n}" for n in failed)
        raise PipelineError(f"failed: {', '.join(failed)} (see {logs})")


if __name__ == "__main__":
    run_main(main, stopped="the study's experiments stopped; run it again to resume")
