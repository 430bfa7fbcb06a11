"""The pull-request review (`make pr-report`) on a two-commit copy of the repository: no
training, the metrics are committed files.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, run, set_params
from triage import pr_review


def commit(ws: Path, message: str) -> None:
    run(["git", "add", "-A"], ws)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@e", "commit", "-qm", message], ws)


@pytest.fixture(scope="module")
def pr_workspace(make_workspace) -> Path:
    """A copy of the repository with two commits: main, then a branch that changed a param,
    a metric and the loss curve (committed files, as `cache: false` outputs are)."""
    ws = make_workspace("pr")
    curve = "step,loss,eval_loss,learning_rate,grad_norm\n"
    (ws / "metrics" / "train_loss.csv").write_text(
        curve + "".join(f"{s},{3 - 0.2 * s},,0.0002,1.0\n" for s in range(1, 11))
    )
    commit(ws, "loss curve")
    run(["git", "checkout", "-qb", "branch"], ws)
    set_params(ws / "params.yaml", {"lora_rank": 128})
    baseline = json.loads((ws / "metrics" / "baseline.json").read_text())
    baseline["tfidf_all_tickets"]["category"]["accuracy"] = 0.5
    (ws / "metrics" / "baseline.json").write_text(json.dumps(baseline, indent=2))
    (ws / "metrics" / "train_loss.csv").write_text(
        curve + "".join(f"{s},{3 - 0.25 * s},,0.0002,1.0\n" for s in range(1, 11))
    )
    # the branch's model answers every priority right and every category as before
    predictions = ws / "data" / "eval" / "predictions.jsonl"
    rows = [json.loads(line) for line in predictions.read_text().splitlines()]
    for row in rows:
        if row["task"] == "priority":
            row["predicted"] = row["gold"]
    predictions.write_text("".join(json.dumps(row) + "\n" for row in rows))
    commit(ws, "rank 128")
    return ws


def test_pr_report_has_params_metrics_and_changed_plots(pr_workspace: Path) -> None:
    ws = pr_workspace
    show = ["git", "show", "main:params.yaml"]
    rank = yaml.safe_load(run(show, ws).stdout)["lora_rank"]
    show[-1] = "main:metrics/baseline.json"
    accuracy = json.loads(run(show, ws).stdout)["tfidf_all_tickets"]["category"]["accuracy"]
    if shutil.which("make"):
        run(["make", "pr-report", "BASE=main"], ws)
    else:
        run([sys.executable, "-m", "triage.pr_review", "main"], ws)
    text = (ws / "reports" / "pr.md").read_text()
    assert text.startswith(pr_review.PR_MARKER)
    params = text.split("### Params")[1].split("###")[0]
    assert re.search(rf"\| params.yaml\s*\| lora_rank\s*\| {rank}\s*\| 128\s*\|", params)
    metrics = text.split("### Metrics")[1].split("###")[0]
    row = (
        rf"\| metrics/baseline.json\s*\| tfidf_all_tickets.category.accuracy\s*\| {accuracy}"
        rf"\s*\| 0.5\s*\| -0.\d+"
    )
    assert re.search(row, metrics)
    noise = text.split("### Beyond noise?")[1].split("###")[0]
    table = [[c.strip() for c in line.strip("|").split("|")] for line in noise.splitlines()]
    rows = {tuple(cells[:2]): cells for cells in table}
    category = rows[("category", "accuracy")]  # the same answers on both sides
    assert category[5] == "+0.0000" and category[7] == "within noise"
    priority = rows[("priority", "accuracy")]  # every answer right on the branch
    assert float(priority[5]) > 0 and priority[7] == "beyond noise"
    # lora_rank changed without `dvc repro`: the stage that reads it (configure, which writes
    # it into the training config) is stale, so the committed metrics are not this branch's
    stale = text.split("### Params")[0]
    assert "**Stale:**" in stale and "`configure`" in stale
    plots = text.split("### Plots")[1]
    assert "#### Loss curve" in plots
    assert re.search(r"\| loss \| 10 pts, 2.8 → 1 .*\| 10 pts, 2.75 → 0.5 ", plots)


def test_pr_report_needs_no_training_stack(pr_workspace: Path, tmp_path) -> None:
    """CI installs DVC, numpy, rouge-score and PyYAML: the PR path must import nothing else."""
    args = ["main", "--out", str(tmp_path / "pr.md")]
    blocked = ("pandas", "matplotlib", "sklearn", "torch", "transformers", "llamafactory")
    code = (
        "import sys\n"
        "class Blocked:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        f"        if name.partition('.')[0] in {blocked!r}: raise ImportError(name)\n"
        "sys.meta_path.insert(0, Blocked())\n"
        f"from triage import pr_review; pr_review.main({args!r})"
    )
    run([sys.executable, "-c", code], pr_workspace, env={"PYTHONPATH": str(REPO)})
    text = (tmp_path / "pr.md").read_text()
    assert "### Metrics" in text and "beyond noise" in text  # the paired bootstrap ran


def test_stale_means_changed_inputs_not_missing_outputs(tmp_path: Path, monkeypatch) -> None:
    """A CI checkout has no DVC cache: absent outputs are not stale, a changed param is."""
    monkeypatch.chdir(tmp_path)
    run(["git", "init", "-q"], tmp_path)
    dvc_cli = [sys.executable, "-m", "dvc"]
    run([*dvc_cli, "init", "-q"], tmp_path)
    (tmp_path / "params.yaml").write_text("a: 1\n")
    (tmp_path / "dvc.yaml").write_text(
        "stages:\n  s:\n    cmd: echo hi > out.txt\n    params: [a]\n    outs: [out.txt]\n"
    )
    run([*dvc_cli, "repro", "-q"], tmp_path)
    (tmp_path / "out.txt").unlink()  # as in a fresh clone: the output is in nobody's cache
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    assert pr_review.stale_stages() == []
    (tmp_path / "params.yaml").write_text("a: 2\n")
    assert pr_review.stale_stages() == ["s"]


def test_pr_report_without_changes_says_so(pr_workspace: Path, tmp_path: Path) -> None:
    out = tmp_path / "pr.md"
    run([sys.executable, "-m", "triage.pr_review", "HEAD", "--out", str(out)], pr_workspace)
    text = out.read_text()
    assert "No params changed." in text and "No metrics changed." in text
    assert "No plot changed." in text
