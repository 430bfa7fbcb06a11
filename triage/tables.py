"""Markdown tables for the reports: numbers as people read them, cells that cannot break a row."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any


def number(x: float | None) -> str:
    """A number as people read it in a table: 4 significant digits, no float noise."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    if isinstance(x, bool) or not isinstance(x, int | float):
        return str(x)
    if isinstance(x, int):
        return f"{x:,}"
    return f"{x:,.0f}" if abs(x) >= 1000 else f"{x:.4g}"


def md_table(header: list[str], rows: Iterable[Iterable[Any]]) -> str:
    def cell(v: Any) -> str:
        return (v if isinstance(v, str) else number(v)).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)
