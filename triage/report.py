"""Compare experiments in one markdown report (`make report`), or review a pull request
(`make pr-report BASE=main`).

    python -m triage.report                        # the workspace and every experiment of HEAD
    python -m triage.report --exp rank-16 rank-64  # the workspace and these experiments
    python -m triage.report --pr main              # reports/pr.md: params, metrics, plots vs main

The comparison (`reports/report.md`, images beside it) reads what DVC recorded, nothing else:
params and metrics from `dvc exp show --json`, and each run's committed files (the loss curve
`metrics/train_loss.csv`, confusion rows `metrics/confusion/<task>.csv`, `dvc.lock`) from git.
It shows the params that differ, every task's scores against the TF-IDF baseline of the same
data split (`metrics/baseline.json`), training time and trainable parameters, loss curves and
confusion matrices as PNG images, and a training diagnosis: the troubleshooting table of the
tuning guide (`常见问题诊断`, part 4) applied to the logged curves by `diagnose()`.

A run's `metrics/eval.json` counts only if `dvc.lock` shows it was computed on that run's
merged model; an experiment run only up to `merge` (or whose evaluation is stale) is
"not evaluated".

The pull-request review needs DVC, git, numpy and rouge-score (the CI job installs no more):
it calls `dvc status` (a stage whose params, code or data changed without `dvc repro` makes
the committed metrics stale, and the report says so first), `dvc params diff`,
`dvc metrics diff` (the headline scores only: per-class reports are in files DVC does not
diff) and `dvc plots diff --json`, and pairs the committed per-ticket predictions of both
commits (`data/eval/predictions.jsonl`) to mark each headline change as beyond noise or not
(a paired bootstrap, `triage/scoring.py`).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import re
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from triage.dvc_cli import dvc
from triage.params import PipelineError

if TYPE_CHECKING:  # pandas and matplotlib are imported where used: `--pr` runs without them
    import pandas as pd

REPORTS = Path("reports")
TRAIN_METRICS = "metrics/train.json"
EVAL_METRICS = "metrics/eval.json"
BASELINE_METRICS = "metrics/baseline.json"
LOSS_CURVE = "metrics/train_loss.csv"
TRAINER_STATE = "models/adapter/trainer_state.json"  # DVC-cached: grad_norm per step
CONFUSION_DIR = "metrics/confusion"
PREDICTIONS = "data/eval/predictions.jsonl"  # committed: paired across commits by ticket
PR_MARKER = "<!-- dvc-pr-report -->"  # lets a CI job find and update its own comment


# =============================================================================== diagnosis
# The guide's troubleshooting table (part 4, 常见问题诊断), applied to the logged training
# curve: a DataFrame with columns step, loss and, where logged, eval_loss, grad_norm and
# learning_rate (metrics/train_loss.csv). Each check is a pure function returning a Finding
# with the numbers it saw, or None. The thresholds:

MIN_POINTS = 4  # fewer logged training losses than this: too short to judge, no finding
WINDOW = 0.25  # "start" and "end" of a curve: its first and last quarter (at least 2 points)
FLAT_MIN_DROP = 0.05  # loss not decreasing: the end's mean is less than 5% below the start's ...
FLAT_MIN_LOSS = 0.1  # ... and still above 0.1 (a loss near 0 has nowhere left to go)
OSC_MAX_RISE = 0.05  # loss oscillating: between consecutive logs it rises on average (rises
# counted, falls as 0) by more than 5% of the median loss; a falling curve, however steep or
# noisy-but-small, stays below, while a curve that bounces, spikes or climbs does not
OVERFIT_MIN_RISE = 0.05  # validation loss rising: the last eval_loss is more than 5% above
# the lowest one, logged later than it, while the training loss kept falling
GRAD_NORM_MAX = 10.0  # large gradient norm: a logged (pre-clipping) grad_norm above 10 ...
GRAD_NORM_SPIKE = 10.0  # ... or above 10 x the run's median grad_norm; or a non-finite value


@dataclass(frozen=True)
class Finding:
    symptom: str  # the guide's 现象 (phenomenon)
    cause: str  # its 可能原因 (likely cause)
    change: str  # its 解决方法 (suggested change), with this run's values where known
    evidence: str  # the numbers from the curve that triggered the finding


def _num(x: float | None) -> str:
    """A number as people read it in a table: 4 significant digits, no float noise."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    if isinstance(x, bool) or not isinstance(x, int | float):
        return str(x)
    if isinstance(x, int):
        return f"{x:,}"
    return f"{x:,.0f}" if abs(x) >= 1000 else f"{x:.4g}"


def _series(curve: pd.DataFrame, column: str) -> pd.Series:
    """A column as floats without the rows that did not log it (eval_loss: eval steps only)."""
    import pandas as pd

    if column not in curve:
        return pd.Series(dtype=float)
    values = pd.to_numeric(curve[column], errors="coerce")
    return values[values.notna()]


def _ends(values: pd.Series) -> tuple[float, float]:
    """Mean of the first and of the last quarter of a series (at least 2 points each)."""
    k = max(2, int(len(values) * WINDOW))
    return float(values.iloc[:k].mean()), float(values.iloc[-k:].mean())


def _current(params: dict[str, Any], key: str) -> str:
    return f" (now {params[key]})" if params.get(key) is not None else ""


def check_loss_not_decreasing(curve: pd.DataFrame, params: dict[str, Any]) -> Finding | None:
    """Loss 不降 -> 学习率太小 -> 增大 LR."""
    loss = _series(curve, "loss")
    if len(loss) < MIN_POINTS:
        return None
    start, end = _ends(loss)
    drop = (start - end) / start if start else 0.0
    if drop >= FLAT_MIN_DROP or end <= FLAT_MIN_LOSS:
        return None
    return Finding(
        symptom="loss not decreasing (Loss 不降)",
        cause="learning rate too small (学习率太小)",
        change=f"raise learning_rate{_current(params, 'learning_rate')}: the guide's LoRA "
        "range is 1e-4..5e-4, 2e-4 recommended",
        evidence=f"training loss {_num(start)} at the start, {_num(end)} at the end "
        f"({-drop:+.1%}) over {len(loss)} logged steps (threshold: a {FLAT_MIN_DROP:.0%} drop)",
    )


def check_loss_oscillating(curve: pd.DataFrame, params: dict[str, Any]) -> Finding | None:
    """Loss 震荡 -> 学习率太大 -> 减小 LR."""
    loss = _series(curve, "loss")
    if len(loss) < MIN_POINTS:
        return None
    steps = loss.diff().iloc[1:]
    level = float(loss.median())
    mean_rise = float(steps.clip(lower=0).mean()) / level if level else 0.0
    if mean_rise <= OSC_MAX_RISE:
        return None
    rises = int((steps > 0).sum())
    return Finding(
        symptom="loss oscillating (Loss 震荡)",
        cause="learning rate too large (学习率太大)",
        change=f"lower learning_rate{_current(params, 'learning_rate')}, e.g. halve it "
        "(the guide: 5e-4 often fails to converge, 2e-4 recommended)",
        evidence=f"the loss rose between {rises} of {len(steps)} consecutive logs, on average "
        f"by {mean_rise:.1%} of its median {_num(level)} per log (threshold "
        f"{OSC_MAX_RISE:.0%}); range {_num(float(loss.min()))}..{_num(float(loss.max()))}",
    )


def check_eval_loss_rising(curve: pd.DataFrame, params: dict[str, Any]) -> Finding | None:
    """Val loss 上升 -> 过拟合 -> 增加 dropout / 减少 epochs."""
    evals = _series(curve, "eval_loss")
    loss = _series(curve, "loss")
    if len(evals) < 2 or len(loss) < 2:
        return None
    best_at = evals.idxmin()
    best, last = float(evals.min()), float(evals.iloc[-1])
    rise = (last - best) / best if best else 0.0
    if best_at == evals.index[-1] or rise <= OVERFIT_MIN_RISE:
        return None
    # overfitting means the training loss kept falling meanwhile (else the run diverged)
    train_then = float(loss[loss.index <= best_at].iloc[-1:].mean())
    train_end = float(loss.iloc[-1])
    if not train_end < train_then:
        return None
    step = curve["step"] if "step" in curve else curve.index.to_series()
    best_step, last_step = step.loc[best_at], step.loc[evals.index[-1]]
    return Finding(
        symptom="validation loss rising (Val loss 上升)",
        cause="overfitting (过拟合)",
        change=f"raise lora_dropout{_current(params, 'lora_dropout')} (guide range 0-0.2) or "
        f"lower num_train_epochs{_current(params, 'num_train_epochs')}; the lowest eval "
        f"loss was at step {best_step}",
        evidence=f"eval_loss rose from its lowest {_num(best)} (step {best_step}) to "
        f"{_num(last)} (step {last_step}), {rise:+.1%} (threshold {OVERFIT_MIN_RISE:.0%}), "
        f"while the training loss fell from {_num(train_then)} to {_num(train_end)}",
    )


def check_grad_norm(curve: pd.DataFrame, params: dict[str, Any]) -> Finding | None:
    """Grad norm 很大 -> 梯度爆炸 -> 减小 LR / 检查数据 (also: a non-finite loss)."""
    import numpy as np

    norms = _series(curve, "grad_norm")
    loss = _series(curve, "loss")
    bad = [c for c, s in (("grad_norm", norms), ("loss", loss)) if (~np.isfinite(s)).any()]
    finite = norms[np.isfinite(norms)]
    if not bad and finite.empty:
        return None
    peak = float(finite.max()) if not finite.empty else math.nan
    median = float(finite.median()) if not finite.empty else math.nan
    large = peak > GRAD_NORM_MAX or (median > 0 and peak > GRAD_NORM_SPIKE * median)
    if not bad and not large:
        return None
    step = curve["step"] if "step" in curve else curve.index.to_series()
    if bad:
        evidence = f"non-finite {' and '.join(bad)} logged"
    else:
        evidence = (
            f"grad_norm peaked at {_num(peak)} (step {step.loc[finite.idxmax()]}), median "
            f"{_num(median)} (thresholds: > {_num(GRAD_NORM_MAX)}, or > "
            f"{_num(GRAD_NORM_SPIKE)} x the median)"
        )
    return Finding(
        symptom="large gradient norm (Grad norm 很大)",
        cause="exploding gradients (梯度爆炸)",
        change=f"lower learning_rate{_current(params, 'learning_rate')} and check the data "
        "(very long or malformed records); max_grad_norm clips the update, not the cause",
        evidence=evidence,
    )


CHECKS = (
    check_loss_not_decreasing,
    check_loss_oscillating,
    check_eval_loss_rising,
    check_grad_norm,
)


def diagnose(curve: pd.DataFrame, params: dict[str, Any] | None = None) -> list[Finding]:
    """Every finding of the guide's table for one training curve; [] for a healthy one.

    `params` (the run's params.yaml) only makes the suggested changes concrete. A loss that
    oscillates is not also reported as "not decreasing": the two call for opposite changes,
    and a bouncing curve says the step is too large, not too small.
    """
    params = params or {}
    findings = [f for check in CHECKS if (f := check(curve, params)) is not None]
    if any(f.symptom.startswith("loss oscillating") for f in findings):
        findings = [f for f in findings if not f.symptom.startswith("loss not decreasing")]
    return findings


THRESHOLDS_MD = f"""\
| finding (guide) | rule applied to the logged curve |
|---|---|
| loss not decreasing → raise LR | mean training loss of the last quarter less than \
{FLAT_MIN_DROP:.0%} below the first quarter's, and still above {FLAT_MIN_LOSS} |
| loss oscillating → lower LR | average rise between consecutive logs (falls count 0) above \
{OSC_MAX_RISE:.0%} of the median loss |
| validation loss rising → more lora_dropout / fewer epochs | last eval_loss more than \
{OVERFIT_MIN_RISE:.0%} above its minimum, logged after it, while the training loss fell |
| large gradient norm → lower LR / check data | a grad_norm above {_num(GRAD_NORM_MAX)} or \
above {_num(GRAD_NORM_SPIKE)} x the run's median, or a non-finite loss or grad_norm |

Curves with fewer than {MIN_POINTS} logged losses are not judged."""


# ================================================================================ the runs


@dataclass
class Run:
    """The workspace or one experiment, as DVC recorded it."""

    name: str
    rev: str | None  # the experiment's commit; None = the files in the workspace
    params: dict[str, Any]
    metrics: dict[str, dict[str, Any]]  # metrics file -> its data
    files: dict[str, str | None] = field(default_factory=dict)  # read_file cache

    def read(self, path: str) -> str | None:
        """A committed file of this run (git-tracked: metrics, plots, dvc.lock), or None."""
        if path not in self.files:
            if self.rev is None:
                p = Path(path)
                self.files[path] = p.read_text(encoding="utf-8") if p.is_file() else None
            else:
                proc = subprocess.run(
                    ["git", "show", f"{self.rev}:{path}"], capture_output=True, text=True
                )
                self.files[path] = proc.stdout if proc.returncode == 0 else None
        return self.files[path]

    def read_cached(self, path: str) -> str | None:
        """A file of this run that DVC tracks (in its cache, not in git), or None."""
        if self.rev is None:
            return self.read(path)
        if path not in self.files:
            try:
                import dvc.api

                self.files[path] = dvc.api.read(path, repo=".", rev=self.rev)
            except Exception:  # not in the local cache (or not DVC-tracked): no such data
                self.files[path] = None
        return self.files[path]

    def listdir(self, folder: str) -> list[str]:
        if self.rev is None:
            return sorted(str(p) for p in Path(folder).glob("*") if p.is_file())
        proc = subprocess.run(
            ["git", "ls-tree", "--name-only", f"{self.rev}:{folder}"],
            capture_output=True,
            text=True,
        )
        return sorted(f"{folder}/{n}" for n in proc.stdout.split()) if proc.returncode == 0 else []


def _data(node: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """{file: data} of an `exp show --json` params/metrics block (files that failed skipped)."""
    return {path: v["data"] for path, v in (node or {}).items() if isinstance(v.get("data"), dict)}


def _run(entry: dict[str, Any], name: str, rev: str | None) -> Run:
    data = entry.get("data") or {}
    params = _data(data.get("params")).get("params.yaml", {})
    return Run(name=name, rev=rev, params=params, metrics=_data(data.get("metrics")))


def collect_runs(shown: list[dict[str, Any]], chosen: list[str] | None = None) -> list[Run]:
    """The workspace and the experiments of `dvc exp show --json` output.

    `chosen`: experiment names or commit prefixes (default: every finished experiment).
    """
    runs, experiments = [], []
    for entry in shown:
        if entry.get("rev") == "workspace":
            runs.append(_run(entry, "workspace", None))
            continue
        for exp in entry.get("experiments") or []:
            state = (exp.get("executor") or {}).get("state")
            for rev in exp.get("revs") or []:
                if state in (None, "success") and not rev.get("error") and rev.get("data"):
                    experiments.append(_run(rev, rev.get("name") or rev["rev"][:7], rev["rev"]))
    if chosen is None:
        return runs + experiments
    picked = []
    for want in chosen:
        match = [r for r in experiments if want in (r.name, r.rev) or r.rev.startswith(want)]
        if not match:
            known = ", ".join(r.name for r in experiments) or "none"
            raise PipelineError(f"no finished experiment {want!r} on this commit (known: {known})")
        picked.append(match[0])
    return runs + picked


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"prepare": {"max_tickets": 200}} -> {"prepare.max_tickets": 200}."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def differing_params(runs: list[Run]) -> dict[str, list[Any]]:
    """Params (dotted keys) whose values are not the same in every run."""
    flats = [flatten(r.params) for r in runs]
    keys = list(dict.fromkeys(k for f in flats for k in f))
    return {
        k: [f.get(k) for f in flats]
        for k in keys
        if len({json.dumps(f.get(k), sort_keys=True) for f in flats}) > 1
    }


def lookup(params: dict[str, Any], dotted: str) -> Any:
    """params["serve"]["dtype"] for "serve.dtype" (None where a key is missing)."""
    node: Any = params
    for key in dotted.split("."):
        node = node.get(key) if isinstance(node, dict) else None
    return node


def file_md5(run: Run, path: str) -> str | None:
    """DVC's md5 of a file dependency (of its bytes) as this run has it in git or, for the
    workspace, on disk; None for a folder or a file it does not have."""
    import hashlib

    if run.rev is None:
        p = Path(path)
        data = p.read_bytes() if p.is_file() else None
    else:
        proc = subprocess.run(["git", "cat-file", "blob", f"{run.rev}:{path}"], capture_output=True)
        data = proc.stdout if proc.returncode == 0 else None
    return None if data is None else hashlib.md5(data).hexdigest()


def lock_stages(run: Run) -> dict[str, dict[str, Any]]:
    """The `stages` of the run's dvc.lock ({} if it has none)."""
    import yaml

    return (yaml.safe_load(run.read("dvc.lock") or "{}") or {}).get("stages", {})


def foreign_stages(run: Run) -> dict[str, str]:
    """{stage: why} for each stage whose recorded outputs this run did not produce.

    dvc.lock keeps a stage's entry from whichever run last ran it: an experiment that stopped
    after configure still carries the parent's train, evaluate and compare entries and their
    metrics. A stage's entry is this run's only if its params are the run's params, each
    dependency another stage writes has the hash that stage's entry recorded, each file
    dependency in git has its hash, and every stage upstream is this run's too.
    """
    lock = lock_stages(run)
    writer = {o["path"]: (name, o.get("md5")) for name, st in lock.items()
              for o in st.get("outs") or []}  # fmt: skip
    stale: dict[str, str] = {}
    changed = True
    while changed:  # until no stage turns stale: staleness flows downstream
        changed = False
        for name, st in lock.items():
            if name in stale:
                continue
            why = None
            for key, value in ((st.get("params") or {}).get("params.yaml") or {}).items():
                if why is None and lookup(run.params, key) != value:
                    why = f"it ran with another {key}"
            for dep in st.get("deps") or []:
                path = dep["path"]
                if why is not None:
                    break
                if path in writer:
                    up, md5 = writer[path]
                    if up in stale:
                        why = f"{up} did not run in it"
                    elif md5 != dep.get("md5"):
                        why = f"it ran on another {path}"
                elif (md5 := file_md5(run, path)) is not None and md5 != dep.get("md5"):
                    why = f"it ran with another {path}"
            if why is not None:
                stale[name] = why
                changed = True
    return stale


def produced_by(run: Run) -> dict[str, str]:
    """{output path: the stage that writes it}, from the run's dvc.lock."""
    return {o["path"]: name for name, st in lock_stages(run).items() for o in st.get("outs") or []}


def not_produced(run: Run) -> dict[str, str]:
    """{output path: why this run did not produce it} for its stale stages' outputs."""
    stale = foreign_stages(run)
    return {
        path: f"not produced by this run ({stage}: {stale[stage]})"
        for path, stage in produced_by(run).items()
        if stage in stale
    }


def own_outputs(run: Run) -> dict[str, str]:
    """Drop from `run.metrics` every file this run did not produce; returns {path: why}."""
    foreign = not_produced(run)
    run.metrics = {path: data for path, data in run.metrics.items() if path not in foreign}
    for path in foreign:  # plots and curves read through run.read() see nothing either
        run.files[path] = None
    return foreign


def evaluation_state(run: Run, foreign: dict[str, str] | None = None) -> str | None:
    """None if the run's metrics/eval.json scores its own merged model, else why not."""
    foreign = not_produced(run) if foreign is None else foreign
    if EVAL_METRICS in foreign:
        return foreign[EVAL_METRICS]
    if EVAL_METRICS not in run.metrics:
        return "not evaluated"
    return None


def read_curve(run: Run) -> pd.DataFrame | None:
    """metrics/train_loss.csv, with grad_norm per step added from the trainer state if the
    curve lacks it (LlamaFactory's trainer_log.jsonl, which the train stage converts, has no
    grad_norm; Hugging Face's trainer_state.json, kept in models/adapter/, has)."""
    import pandas as pd

    text = run.read(LOSS_CURVE)
    if not text:
        return None
    curve = pd.read_csv(io.StringIO(text))
    if "grad_norm" not in curve and "step" in curve:
        state = json.loads(run.read_cached(TRAINER_STATE) or "{}")
        norms = [
            (e["step"], e["grad_norm"]) for e in state.get("log_history", []) if "grad_norm" in e
        ]
        if norms:
            norms_df = pd.DataFrame(norms, columns=["step", "grad_norm"]).drop_duplicates("step")
            curve = curve.merge(norms_df, on="step", how="left")
    return curve


def read_confusions(run: Run) -> dict[str, pd.DataFrame]:
    """{task: counts (actual x predicted)} from metrics/confusion/<task>.csv."""
    import pandas as pd

    found = {}
    for path in run.listdir(CONFUSION_DIR):
        m = re.fullmatch(rf"{CONFUSION_DIR}/(\w+)\.csv", path)
        text = run.read(path) if m else None
        if text:
            rows = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
            found[m.group(1)] = pd.crosstab(rows["actual"], rows["predicted"])
    return found


# ================================================================================ rendering


def md_table(header: list[str], rows: Iterable[Iterable[Any]]) -> str:
    def cell(v: Any) -> str:
        return (v if isinstance(v, str) else _num(v)).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


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
            rows.append([name, "no finding", f"{len(_series(curve, 'loss'))} logged losses", ""])
        for f in findings:
            rows.append([name, f"{f.symptom}: {f.cause}", f.evidence, f.change])
    table = md_table(["run", "finding", "evidence", "suggested change"], rows)
    parts += ["", table if rows else "No run has a training curve to diagnose."]
    parts += ["", "Rules:", "", THRESHOLDS_MD, ""]
    return "\n".join(parts)


# ============================================================================ pull request


def sparkline(values: list[float], lo: float | None = None, hi: float | None = None) -> str:
    """Unicode bars (▁..█) of a series, resampled to at most 24 points; lo/hi: a scale shared
    with the other revision's series, so that the two lines compare."""
    bars = "▁▂▃▄▅▆▇█"
    values = [v for v in values if math.isfinite(v)]
    if not values:
        return ""
    if len(values) > 24:
        values = [values[int(i * len(values) / 24)] for i in range(24)]
    lo = min(values) if lo is None else lo
    hi = max(values) if hi is None else hi
    return "".join(bars[int((v - lo) / (hi - lo) * 7) if hi > lo else 3] for v in values)


def _float(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def summarise_plot(points: list[dict[str, Any]], revs: list[str], x_field: str | None) -> str:
    """A compact markdown table of one plot's data per revision: lines or label pairs."""
    by_rev = {rev: [p for p in points if p.get("rev") == rev] for rev in revs}
    sample = points[0]
    if "dvc_inferred_y_value" in sample:  # several y columns in one plot: one series each
        names = list(dict.fromkeys(p.get("field") for p in points))

        def series(rows: list[dict], name: str) -> list[float]:
            ys = [_float(p["dvc_inferred_y_value"]) for p in rows if p.get("field") == name]
            return [y for y in ys if y is not None]

    else:
        keys = [k for k in sample if k not in ("rev", x_field, "step")]
        names = [k for k in keys if any(_float(p.get(k)) is not None for p in points)]

        def series(rows: list[dict], name: str) -> list[float]:
            return [y for p in rows if (y := _float(p.get(name))) is not None]

    if names:
        rows = []
        for name in names:
            per_rev = [series(by_rev[rev], name) for rev in revs]
            every = [y for ys in per_rev for y in ys]
            if not every or all(ys == per_rev[0] for ys in per_rev):  # nothing to compare
                continue
            rows.append([name] + [
                f"{len(ys)} pts, {_num(ys[0])} → {_num(ys[-1])} (min {_num(min(ys))}) "
                f"{sparkline(ys, min(every), max(every))}" if ys else "—"
                for ys in per_rev
            ])  # fmt: skip
        if not rows:
            return "(data changed; its series are equal: x values or row order differ)"
        return md_table(["series", *revs], rows)
    # categorical pairs (the confusion template: actual, predicted)
    fields = [k for k in sample if k != "rev"][:2]
    cells = []
    for rev in revs:
        rows = by_rev[rev]
        same = sum(str(p.get(fields[0])) == str(p.get(fields[-1])) for p in rows)
        cells.append(f"{len(rows)} rows, {same / len(rows):.1%} {fields[0]} = {fields[-1]}"
                     if rows else "—")  # fmt: skip
    return md_table(["", *revs], [["rows", *cells]])


def plots_section(base: str) -> str:
    """The plots whose data differ between base and the workspace, each summarised."""
    try:
        shown = json.loads(dvc("plots", "diff", base, "--json"))
    except (PipelineError, json.JSONDecodeError) as e:
        return f"`dvc plots diff {base}` failed: {str(e)[:500]}"
    parts = []
    unchanged = []
    for plot_id, renders in (shown.get("data") or {}).items():
        for render in renders:
            if render.get("type") != "vega":
                continue
            content = render.get("content") or {}
            points = (content.get("data") or {}).get("values") or []
            if not points:
                continue
            revs = [base, "workspace"]  # how DVC labels the two sides
            per_rev = [
                sorted(json.dumps({k: v for k, v in p.items() if k != "rev"}, sort_keys=True)
                       for p in points if p.get("rev") == rev)
                for rev in revs
            ]  # fmt: skip
            if per_rev[0] == per_rev[1]:
                unchanged.append(plot_id)
                continue
            x_field = ((content.get("encoding") or {}).get("x") or {}).get("field")
            try:
                summary = summarise_plot(points, revs, x_field)
            except Exception as e:  # a template this summary does not know: still say it changed
                summary = f"(changed; not summarised: {type(e).__name__})"
            parts += [f"#### {plot_id}", "", summary, ""]
    if not parts:
        parts.append("No plot changed.")
    if unchanged:
        parts.append("Unchanged: " + ", ".join(f"`{p}`" for p in unchanged) + ".")
    parts.append(f"\nDraw them with `dvc plots diff {base}` (HTML).")
    return "\n".join(parts)


def _table_or_none(md: str) -> str | None:
    """A markdown table from DVC, or None when it has no rows (nothing changed)."""
    lines = [line for line in md.strip().splitlines() if line.strip()]
    return "\n".join(lines) if len(lines) > 2 else None


def read_predictions(text: str | None) -> dict[tuple[str, str], tuple[str, str]]:
    """(ticket id, task) -> (gold, predicted) from a predictions.jsonl text."""
    rows = [json.loads(line) for line in (text or "").splitlines() if line.strip()]
    return {(r["id"], r["task"]): (r["gold"], r["predicted"] or "") for r in rows}


def paired_scores(
    before: dict[tuple[str, str], tuple[str, str]],
    after: dict[tuple[str, str], tuple[str, str]],
    kinds: dict[str, str],
) -> list[tuple[str, str, int, dict[str, Any]]]:
    """(task, score, tickets, paired_deltas entry) for each headline score, on the test tickets
    both prediction sets answered with the same gold answer."""
    from triage.scoring import paired_deltas  # numpy and rouge-score: the CI job installs both

    rows = []
    for task in dict.fromkeys(t for _, t in after):
        keys = [k for k in after if k[1] == task and k in before and before[k][0] == after[k][0]]
        if not keys:
            continue
        gold = [after[k][0] for k in keys]
        answers = [before[k][1] for k in keys], [after[k][1] for k in keys]
        for metric, d in paired_deltas(gold, *answers, kinds.get(task, "classification")).items():
            rows.append((task, metric, len(keys), d))
    return rows


def verdict(d: dict[str, Any]) -> str:
    low, high = d["delta_ci95"]
    return "beyond noise" if low > 0 or high < 0 else "within noise"


Pairing = list[tuple[str, str, int, dict[str, Any]]]  # paired_scores' rows


def pair_with_reference(
    reference: Run, runs: list[Run], kinds: dict[str, str], states: dict[str, str | None]
) -> dict[str, Pairing]:
    """{run: paired_scores against the reference} for each evaluated run with predictions
    (none where the reference has none): computed once, read by the summary and the
    ticket-by-ticket section."""
    before = {} if states[reference.name] else read_predictions(reference.read(PREDICTIONS))
    pairings = {}
    for run in runs:
        after = {} if states[run.name] else read_predictions(run.read(PREDICTIONS))
        if before and after:
            pairings[run.name] = paired_scores(before, after, kinds)
    return pairings


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


def noise_section(base: str) -> str:
    """Each headline change between `base`'s committed predictions and the workspace's, on the
    test tickets both answered with the same gold answer, with a paired-bootstrap interval."""
    before = read_predictions(Run("base", base, {}, {}).read(PREDICTIONS))
    after = read_predictions(Run("head", None, {}, {}).read(PREDICTIONS))
    if not before or not after:
        side = "`" + base + "`" if not before else "this branch"
        return f"No per-ticket predictions ({PREDICTIONS}) at {side}: nothing to pair."
    kinds = {name: task.get("kind", "classification") for name, task in yaml_tasks().items()}
    rows = []
    for task, metric, n, d in paired_scores(before, after, kinds):
        low, high = d["delta_ci95"]
        rows.append([
            task, metric, n, d["base"], d["head"], f"{d['delta']:+.4f}",
            f"[{low:+.4f}, {high:+.4f}]", verdict(d),
        ])  # fmt: skip
    if not rows:
        return "The two commits share no test ticket with the same gold answer: nothing to pair."
    header = ["task", "score", "tickets", base, "this branch", "change", "95 % interval", ""]
    return (
        md_table(header, rows)
        + "\n\nPaired bootstrap over the test tickets both commits answered (1000 resamples): "
        "a change whose interval excludes 0 is beyond noise."
    )


def yaml_tasks() -> dict[str, Any]:
    """The workspace's `tasks:` in params.yaml: the kind of each task."""
    import yaml

    return (yaml.safe_load(Path("params.yaml").read_text(encoding="utf-8")) or {}).get("tasks", {})


def stale_stages() -> list[str]:
    """Stages whose code, params or committed inputs changed since dvc.lock (`dvc status`):
    their committed metrics are not this branch's. A file that is merely absent ("deleted":
    a model or prepared data in the DVC cache, not in a CI checkout) does not count."""
    status = json.loads(dvc("status", "--json") or "{}")

    def changed(entry: Any) -> bool:
        if isinstance(entry, list):
            return any(changed(e) for e in entry)
        if isinstance(entry, dict):
            return any(changed(v) for k, v in entry.items() if k not in ("changed outs", "deleted"))
        return entry != "deleted"

    return sorted(name.split(":")[-1] for name, entries in status.items() if changed(entries))


def pr_report(base: str) -> str:
    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    params = _table_or_none(dvc("params", "diff", base, "--md"))
    metrics = _table_or_none(dvc("metrics", "diff", base, "--md"))
    stale = stale_stages()
    warning = (
        f"**Stale:** {', '.join(f'`{s}`' for s in stale)} changed since `dvc.lock` (params, "
        "code or data) and did not rerun: the metrics below are not this branch's. Run "
        "`dvc repro` and commit `dvc.lock` and `metrics/`."
        if stale
        else "Every stage is up to date with `dvc.lock` (`dvc status`)."
    )
    return "\n".join([
        PR_MARKER,
        f"## DVC: this branch ({head or 'workspace'}) vs `{base}`",
        "",
        warning,
        "",
        "### Params",
        "",
        params or "No params changed.",
        "",
        "### Metrics",
        "",
        metrics or "No metrics changed.",
        "",
        "### Beyond noise?",
        "",
        noise_section(base),
        "",
        "### Plots",
        "",
        plots_section(base),
        "",
    ])  # fmt: skip


# ==================================================================================== main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--exp", nargs="+", metavar="NAME", help="experiments to compare")
    parser.add_argument("--pr", metavar="BASE", help="review the workspace against BASE")
    parser.add_argument("--out", type=Path, help="markdown file (default reports/report.md, "
                        "with --pr reports/pr.md); images go beside it")  # fmt: skip
    parser.add_argument("--title", default="Experiment report", help="the page's heading")
    args = parser.parse_args(argv)
    try:
        if args.pr:
            out = args.out or REPORTS / "pr.md"
            text = pr_report(args.pr)
        else:
            out = args.out or REPORTS / "report.md"
            runs = collect_runs(json.loads(dvc("exp", "show", "--json")), args.exp)
            text = render_report(runs, out.parent, args.title)
    except PipelineError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
