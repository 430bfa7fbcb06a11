"""Review a pull request with DVC (`make pr-report BASE=main`): reports/pr.md.

    python -m triage.pr_review main

Needs DVC, git, numpy and rouge-score only (the CI job installs no more): `dvc status` (a stage
whose params, code or data changed without `dvc repro` makes the committed metrics stale, and
the review says so first), `dvc params diff`, `dvc metrics diff` (the headline scores: per-class
reports are in files DVC does not diff) and `dvc plots diff --json`, and the committed per-ticket
predictions of both commits paired to mark each headline change as beyond noise or not
(`triage.paired`).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
from pathlib import Path
from typing import Any

from triage.dvc_cli import dvc
from triage.files import run_main, write_text
from triage.paired import paired_scores, read_predictions, verdict
from triage.params import PipelineError
from triage.runs import PREDICTIONS, Run
from triage.tables import md_table, number

PR_MARKER = "<!-- dvc-pr-report -->"  # lets a CI job find and update its own comment


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
                f"{len(ys)} pts, {number(ys[0])} → {number(ys[-1])} (min {number(min(ys))}) "
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base", help="the branch or commit to review against (e.g. main)")
    parser.add_argument("--out", type=Path, default=Path("reports/pr.md"), help="markdown file")
    args = parser.parse_args(argv)

    def write() -> None:
        write_text(args.out, pr_report(args.base))
        print(f"wrote {args.out}")

    run_main(write)


if __name__ == "__main__":
    main()
