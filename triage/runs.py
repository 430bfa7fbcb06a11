"""The workspace and its experiments as DVC recorded them, and which of a run's outputs it made.

A `Run` reads its committed files from git (or the workspace from disk) and its DVC-cached
files through `dvc.api`; `own_outputs` drops the metrics a run carries over from its parent
commit (an experiment that stopped after configure still holds the parent's scores).
"""

from __future__ import annotations

import io
import json
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from triage.params import PipelineError

if TYPE_CHECKING:  # pandas is imported where used: the pull-request review runs without it
    import pandas as pd

TRAIN_METRICS = "metrics/train.json"
EVAL_METRICS = "metrics/eval.json"
BASELINE_METRICS = "metrics/baseline.json"
LOSS_CURVE = "metrics/train_loss.csv"
TRAINER_STATE = "models/adapter/trainer_state.json"  # DVC-cached: grad_norm per step
CONFUSION_DIR = "metrics/confusion"
PREDICTIONS = "data/eval/predictions.jsonl"  # committed: paired across commits by ticket


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
