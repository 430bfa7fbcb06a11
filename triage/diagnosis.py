"""The tuning guide's troubleshooting table (part 4, 常见问题诊断) applied to a training curve.

`diagnose(curve, params)` returns the guide's findings for one run: loss not decreasing, loss
oscillating, validation loss rising, a large gradient norm, each with the numbers that triggered
it and the guide's change with the run's own values. `make report` prints them per run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from triage.tables import number

if TYPE_CHECKING:
    import pandas as pd

# A curve is a DataFrame with columns step, loss and, where logged, eval_loss, grad_norm and
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


def logged_values(curve: pd.DataFrame, column: str) -> pd.Series:
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
    loss = logged_values(curve, "loss")
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
        evidence=f"training loss {number(start)} at the start, {number(end)} at the end "
        f"({-drop:+.1%}) over {len(loss)} logged steps (threshold: a {FLAT_MIN_DROP:.0%} drop)",
    )


def check_loss_oscillating(curve: pd.DataFrame, params: dict[str, Any]) -> Finding | None:
    """Loss 震荡 -> 学习率太大 -> 减小 LR."""
    loss = logged_values(curve, "loss")
    if len(loss) < MIN_POINTS:
        return None
    steps = loss.diff().iloc[1:]
    level = float(loss.median())
    mean_rise = float(steps.clip(lower=0).mean()) / level if level else 0.0
    if mean_rise <= OSC_MAX_RISE:
        return None
    rises = int((steps > 0).sum())
    change = (
        f"lower learning_rate{_current(params, 'learning_rate')}, e.g. halve it "
        "(the guide: 5e-4 often fails to converge, 2e-4 recommended)"
    )
    if params.get("train_sampling_strategy") == "group_by_length":
        # the learning-rate study (docs/studies/README.md): the finding fired at 1e-4..1e-3
        # alike, and a lower learning rate cost priority macro-F1
        change += (
            "; but batches grouped by length make consecutive logs average records of "
            "different lengths, so the logged loss cycles at any learning rate: compare with "
            "train_sampling_strategy: random before lowering it"
        )
    return Finding(
        symptom="loss oscillating (Loss 震荡)",
        cause="learning rate too large (学习率太大)",
        change=change,
        evidence=f"the loss rose between {rises} of {len(steps)} consecutive logs, on average "
        f"by {mean_rise:.1%} of its median {number(level)} per log (threshold "
        f"{OSC_MAX_RISE:.0%}); range {number(float(loss.min()))}..{number(float(loss.max()))}",
    )


def check_eval_loss_rising(curve: pd.DataFrame, params: dict[str, Any]) -> Finding | None:
    """Val loss 上升 -> 过拟合 -> 增加 dropout / 减少 epochs."""
    evals = logged_values(curve, "eval_loss")
    loss = logged_values(curve, "loss")
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
        evidence=f"eval_loss rose from its lowest {number(best)} (step {best_step}) to "
        f"{number(last)} (step {last_step}), {rise:+.1%} (threshold {OVERFIT_MIN_RISE:.0%}), "
        f"while the training loss fell from {number(train_then)} to {number(train_end)}",
    )


def check_grad_norm(curve: pd.DataFrame, params: dict[str, Any]) -> Finding | None:
    """Grad norm 很大 -> 梯度爆炸 -> 减小 LR / 检查数据 (also: a non-finite loss)."""
    import numpy as np

    norms = logged_values(curve, "grad_norm")
    loss = logged_values(curve, "loss")
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
            f"grad_norm peaked at {number(peak)} (step {step.loc[finite.idxmax()]}), median "
            f"{number(median)} (thresholds: > {number(GRAD_NORM_MAX)}, or > "
            f"{number(GRAD_NORM_SPIKE)} x the median)"
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
| large gradient norm → lower LR / check data | a grad_norm above {number(GRAD_NORM_MAX)} or \
above {number(GRAD_NORM_SPIKE)} x the run's median, or a non-finite loss or grad_norm |

Curves with fewer than {MIN_POINTS} logged losses are not judged."""
