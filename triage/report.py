"""Compare the workspace and its experiments in one markdown page (`make report`).

    python -m triage.report                        # the workspace and every experiment of HEAD
    python -m triage.report --exp rank-16 rank-64  # the workspace and these experiments
    python -m triage.report --out docs/studies/rank/report.md --title "Rank study"

The page (`reports/report.md`, images beside it) reads what DVC recorded, nothing else:
params and metrics from `dvc exp show --json`, and each run's committed files (the loss curve
`metrics/train_loss.csv`, confusion rows `metrics/confusion/<task>.csv`, `dvc.lock`) from git
(`triage.runs`). It shows a summary table, the params that differ, every task's scores against
the TF-IDF baseline trained on the same tickets (`metrics/baseline.json`), each run against the
first ticket by ticket (`triage.paired`), training time and trainable parameters, loss curves
and confusion matrices as PNG images, and the tuning guide's troubleshooting table applied to
each logged curve (`triage.diagnosis`).

A run's figures count only if its `dvc.lock` shows that run produced them: an experiment run
only up to `merge` (or whose evaluation is stale) is "not evaluated", and metrics carried over
from the parent commit are marked "not produced by this run".
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from triage.diagnosis import THRESHOLDS_MD, diagnose, logged_values
from triage.dvc_cli import dvc
from triage.files import run_main, write_text
from triage.paired import Pairing, pair_with_reference, read_predictions, verdict
from triage.runs import (
    BASELINE_METRICS,
    EVAL_METRICS,
    LOSS_CURVE,
    PREDICTIONS,
    TRAIN_METRICS,
    Run,
    collect_runs,
    differing_params,
    evaluation_state,
    flatten,
    own_outputs,
    read_confusions,
    read_curve,
)
from triage.tables import md_table

if TYPE_CHECKING:  # pandas and matplotlib are imported where used
    import pandas as pd

REPORTS = Path("reports")


def slugify(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def task_kinds(runs: list[Run]) -> dict[str, str]:
    """Task -> classification | generation, from params.yaml `tasks` or the metrics' keys."""
    kinds: dict[str, str] = {}
    for run in runs:
        for name, task in (run.params.get("tasks") or {}).items():
            kinds.setdefault(name, task.get("kind", "classification"))
        for path in (BASELINE_METRICS, EVAL_METRICS):
            for name, value in run.metrics.get(path, {}).items():
                if isinstance(value, dict) and ("accuracy" in value or "rougeL" in value):
                    kinds.setdefault(
                        name, "classification" if "accuracy" in value else "generation"
                    )
    return kinds


SCORES = {"classification": ("accuracy", "macro_f1"), "generation": ("rouge1", "rouge2", "rougeL")}
TRAINING = (
    ("train_runtime_s", "train time (s)"),
    ("stage_runtime_s", "stage time (s)"),
    ("trainable_parameters", "trainable params"),
    ("lora_rank", "rank"),
    ("lora_alpha", "alpha"),
    ("global_steps", "steps"),
    ("train_loss", "train loss"),
    ("eval_loss", "eval loss"),
    ("train_samples_per_second", "samples/s"),
    ("train_tokens_per_second", "tokens/s"),
    ("peak_rss_mb", "peak RSS (MB)"),
)


def recorded_scores(run: Run, task: str) -> dict[str, Any]:
    """The task's scores as the run's metrics/eval.json holds them, with the bootstrap
    intervals (`dvc exp show` leaves lists out), or as DVC showed them if the file is gone."""
    try:
        recorded = json.loads(run.read(EVAL_METRICS) or "{}").get(task, {})
    except (json.JSONDecodeError, AttributeError):
        recorded = {}
    return {**run.metrics.get(EVAL_METRICS, {}).get(task, {}), **recorded}


def with_interval(scores: dict[str, Any], key: str) -> Any:
    """A score as `0.618 [0.570, 0.665]` where its 95 % bootstrap interval was recorded."""
    value, interval = scores.get(key), scores.get(f"{key}_ci95")
    if isinstance(value, int | float) and isinstance(interval, list) and len(interval) == 2:
        return f"{value:.3f} [{interval[0]:.3f}, {interval[1]:.3f}]"
    return value


def param_text(value: Any) -> str:
    """A param as params.yaml writes it: 2048, 1e-06, true, null, [a, b]."""
    return value if isinstance(value, str) else json.dumps(value)


HEADLINE = {"classification": "macro_f1", "generation": "rougeL"}  # one score per task kind
COST = (  # the summary's training columns: what a setting costs
    ("trainable_parameters", "trainable params"),
    ("train_runtime_s", "train s"),
    ("train_tokens_per_second", "tokens/s"),
    ("peak_rss_mb", "peak RSS MB"),
)


def summary_section(
    runs: list[Run],
    kinds: dict[str, str],
    states: dict[str, str | None],
    changed: list[str],
    pairings: dict[str, Pairing],
) -> str:
    """A study's table: per run the params it changed, what training cost, each task's headline
    score with its interval, and that score minus the first run's on the same tickets (95 %
    paired bootstrap; `*` where the interval excludes 0). Figures a run did not produce stay
    empty; the sections below say why."""
    reference = runs[0]
    header = ["run", *changed, *[label for _, label in COST]]
    header += [f"{task} {HEADLINE[kind]}" for task, kind in kinds.items()]
    header += [f"{task} vs `{reference.name}`" for task in kinds]
    rows = []
    for run in runs:
        params, train = flatten(run.params), run.metrics.get(TRAIN_METRICS) or {}
        row: list[Any] = [run.name]
        row += [param_text(params.get(p)) for p in changed]
        row += [train.get(key) for key, _ in COST]
        evaluated = not states[run.name]
        scores = {task: recorded_scores(run, task) for task in kinds} if evaluated else {}
        row += [with_interval(scores[t], HEADLINE[k]) if scores else None for t, k in kinds.items()]
        paired = {
            task: d
            for task, metric, _, d in pairings.get(run.name, [])
            if metric == HEADLINE[kinds[task]]
        }
        for task in kinds:
            d = paired.get(task)
            row.append(
                f"{d['delta']:+.3f} [{d['delta_ci95'][0]:+.3f}, {d['delta_ci95'][1]:+.3f}]"
                + (" *" if verdict(d) == "beyond noise" else "")
                if d
                else None
            )
        rows.append(["" if v is None else v for v in row])
    return "\n".join([
        md_table(header, rows), "",
        f"[95 % bootstrap interval] over the test tickets; `vs {reference.name}`: the run's score "
        f"minus `{reference.name}`'s on the tickets both answered, `*` beyond noise.",
    ])  # fmt: skip


def task_section(task: str, kind: str, runs: list[Run], states: dict[str, str | None]) -> str:
    scores = SCORES[kind]
    header = ["run"] + [h for s in scores for h in (s, "baseline", "Δ")]
    rows = []
    for run in runs:
        model = run.metrics.get(EVAL_METRICS, {}).get(task, {})
        # the TF-IDF baseline trained on the same tickets as the model: like for like
        base = run.metrics.get(BASELINE_METRICS, {}).get("tfidf_lora_tickets", {}).get(task, {})
        row: list[Any] = [run.name]
        for s in scores:
            m, b = model.get(s), base.get(s)
            if states[run.name]:
                m = None
            delta = (
                f"{m - b:+.4f}" if isinstance(m, int | float) and isinstance(b, int | float) else ""
            )
            row += [with_interval(recorded_scores(run, task), s) if m is not None else "", b, delta]
        if states[run.name]:
            row[1] = states[run.name].split(" (")[0]
        rows.append(row)
    return f"### {task} ({kind})\n\n" + md_table(header, rows)


def plot_curves(curves: dict[str, pd.DataFrame], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("loss", "training loss"), ("eval_loss", "validation loss")]
    panels += [("grad_norm", "gradient norm"), ("learning_rate", "learning rate")]
    fig, axes = plt.subplots(2, 2, figsize=(11, 7), constrained_layout=True)
    for ax, (column, title) in zip(axes.flat, panels, strict=True):
        for name, curve in curves.items():
            if column in curve and "step" in curve:
                points = curve[["step", column]].dropna()
                ax.plot(points["step"], points[column], marker="." if len(points) < 30 else None,
                        label=name)  # fmt: skip
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize="small")
    fig.savefig(out, dpi=100)
    plt.close(fig)


def plot_confusion(counts: pd.DataFrame, title: str, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = sorted(set(counts.index) | set(counts.columns))
    counts = counts.reindex(index=labels, columns=labels, fill_value=0)
    size = 2.5 + 0.45 * len(labels)
    fig, ax = plt.subplots(figsize=(size + 1, size), constrained_layout=True)
    ax.imshow(counts.to_numpy(), cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    peak = counts.to_numpy().max() or 1
    for i, row in enumerate(counts.to_numpy()):
        for j, v in enumerate(row):
            if v:
                ax.text(j, i, int(v), ha="center", va="center",
                        color="white" if v > peak / 2 else "black")  # fmt: skip
    ax.set_title(title)
    fig.savefig(out, dpi=100)
    plt.close(fig)


def render_report(runs: list[Run], out_dir: Path, title: str = "Experiment report") -> str:
    """Write the PNGs into out_dir and return the markdown that links them."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("*.png"):  # images of runs no longer compared
        old.unlink()
    foreign = {r.name: own_outputs(r) for r in runs}  # another run's files are not shown
    states = {r.name: evaluation_state(r, foreign[r.name]) for r in runs}
    curves = {r.name: c for r in runs if (c := read_curve(r)) is not None}
    parts = [f"# {title}", ""]
    parts.append(
        "Made by `python -m triage.report` (`make report`) from what DVC recorded; "
        "`dvc exp show` has every number. Runs: "
        + ", ".join(f"`{r.name}`" + (f" ({r.rev[:7]})" if r.rev else "") for r in runs)
        + "."
    )

    parts += ["", "## Params that differ", ""]
    differing = differing_params(runs)
    if differing:
        parts.append(md_table(["param", *[r.name for r in runs]], [
            [k, *[param_text(v) for v in values]]
            for k, values in differing.items()
        ]))  # fmt: skip
    else:
        parts.append("All runs have the same params.")

    kinds = task_kinds(runs)
    reference = runs[0]
    pairings = pair_with_reference(reference, runs[1:], kinds, states)
    parts += ["", "## Summary", ""]
    parts.append(summary_section(runs, kinds, states, list(differing), pairings))

    parts += ["", "## Scores per task vs the baseline", ""]
    parts.append(
        "Model scores from `metrics/eval.json` (served by vLLM, test split), the TF-IDF + "
        "logistic-regression baseline trained on the same tickets as the model "
        "(`metrics/baseline.json`, `tfidf_lora_tickets`), and the difference."
    )
    for task, kind in kinds.items():
        parts += ["", task_section(task, kind, runs, states)]

    parts += ["", f"## Against `{reference.name}`, ticket by ticket", ""]
    parts.append(paired_section(reference, pairings, states))

    parts += ["", "## Training", ""]
    train = {r.name: r.metrics.get(TRAIN_METRICS) for r in runs}
    missing = {r.name: foreign[r.name].get(TRAIN_METRICS, "not trained") for r in runs}
    parts.append(md_table(["run", *[label for _, label in TRAINING]], [
        [name, *[(m or {}).get(key) if m else (missing[name] if i == 0 else "")
                 for i, (key, _) in enumerate(TRAINING)]]
        for name, m in train.items()
    ]))  # fmt: skip

    parts += ["", "## Loss curves", ""]
    if curves:
        plot_curves(curves, out_dir / "loss_curves.png")
        parts.append(f"![loss curves](loss_curves.png)\n\nFrom each run's `{LOSS_CURVE}`.")
    else:
        parts.append(f"No run has `{LOSS_CURVE}`.")

    parts += ["", "## Confusion matrices", ""]
    images = []
    for run in runs:
        if states[run.name]:
            images.append(f"- `{run.name}`: {states[run.name]}")
            continue
        for task, counts in read_confusions(run).items():
            png = f"confusion-{slugify(run.name)}-{slugify(task)}.png"
            plot_confusion(counts, f"{run.name}: {task}", out_dir / png)
            images.append(f"- `{run.name}`, {task}:\n\n  ![{run.name} {task}]({png})")
    parts.append("\n".join(images) if images else "No run has confusion rows.")

    parts += ["", "## Training diagnosis", ""]
    parts.append(
        "The tuning guide's troubleshooting table (常见问题诊断), applied to each run's logged "
        "curve with the thresholds below; a finding names its evidence and the guide's change."
    )
    rows = []
    for name, curve in curves.items():
        params = flatten(next(r for r in runs if r.name == name).params)
        findings = diagnose(curve, params)
        if not findings:
            losses = len(logged_values(curve, "loss"))
            rows.append([name, "no finding", f"{losses} logged losses", ""])
        for f in findings:
            rows.append([name, f"{f.symptom}: {f.cause}", f.evidence, f.change])
    table = md_table(["run", "finding", "evidence", "suggested change"], rows)
    parts += ["", table if rows else "No run has a training curve to diagnose."]
    parts += ["", "Rules:", "", THRESHOLDS_MD, ""]
    return "\n".join(parts)


def paired_section(
    reference: Run, pairings: dict[str, Pairing], states: dict[str, str | None]
) -> str:
    """Each run's headline scores minus the reference run's on the same test tickets, with a
    95 % paired-bootstrap interval, and the conclusion those intervals support."""
    if states[reference.name]:
        return f"`{reference.name}` is {states[reference.name]}: nothing to pair."
    if not read_predictions(reference.read(PREDICTIONS)):
        return f"`{reference.name}` has no `{PREDICTIONS}`: nothing to pair."
    rows, conclusions = [], []
    for name, paired in pairings.items():
        rows += [
            [name, task, metric, n, f"{d['delta']:+.4f}",
             f"[{d['delta_ci95'][0]:+.4f}, {d['delta_ci95'][1]:+.4f}]", verdict(d)]
            for task, metric, n, d in paired
        ]  # fmt: skip
        beyond = [
            f"{task} {metric} {d['delta']:+.3f}"
            for task, metric, _, d in paired
            if verdict(d) == "beyond noise"
        ]
        conclusions.append(
            f"- `{name}`: "
            + (
                "differs beyond noise on " + ", ".join(beyond)
                if beyond
                else f"no difference from `{reference.name}` beyond noise on any score"
            )
            + "."
        )
    if not rows:
        return f"No other evaluated run has `{PREDICTIONS}` to pair with `{reference.name}`'s."
    header = ["run", "task", "score", "tickets", "change", "95 % interval", ""]
    return "\n".join([
        md_table(header, rows), "",
        f"Each run minus `{reference.name}` on the test tickets both answered (paired "
        "bootstrap, 1000 resamples): a change whose interval excludes 0 is beyond noise.",
        "", *conclusions,
    ])  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--exp", nargs="+", metavar="NAME", help="experiments to compare")
    parser.add_argument("--out", type=Path, default=REPORTS / "report.md",
                        help="markdown file; images go beside it")  # fmt: skip
    parser.add_argument("--title", default="Experiment report", help="the page's heading")
    args = parser.parse_args(argv)

    def write() -> None:
        runs = collect_runs(json.loads(dvc("exp", "show", "--json")), args.exp)
        write_text(args.out, render_report(runs, args.out.parent, args.title))
        print(f"wrote {args.out}")

    run_main(write)


if __name__ == "__main__":
    main()
