"""Learning curves in the terminal (``gradq metrics JOB``): an ASCII chart per section of
metrics (``loss/train`` and ``loss/val`` share the ``loss`` chart), and the same points as
CSV (``--csv``), one row per step."""

from __future__ import annotations

import math
from collections.abc import Iterable

Points = list[tuple[int, float]]
MARKS = "*o+x#@%&"
# the sections charted when no --metric is asked: the losses and the score
DEFAULT_SECTIONS = ("loss", "accuracy", "rmse", "r2")


def sections(curves: dict[str, Points], wanted: Iterable[str] = ()) -> dict[str, dict[str, Points]]:
    """The curves to chart, by section (the name before ``/``): those ``wanted`` (a metric
    such as ``loss/val``, or a section such as ``loss``), else those of DEFAULT_SECTIONS."""
    asked = list(wanted)
    out: dict[str, dict[str, Points]] = {}
    for name, points in sorted(curves.items()):
        section = name.split("/", 1)[0]
        chosen = name in asked or section in asked if asked else section in DEFAULT_SECTIONS
        finite = [(s, v) for s, v in points if v is not None and math.isfinite(v)]
        if chosen and finite:
            out.setdefault(section, {})[name] = finite
    return out


def chart(title: str, series: dict[str, Points], width: int = 60, height: int = 12) -> str:
    """One chart: the y axis labelled at its top, middle and bottom, the steps below it, a
    mark per series (named in the legend); where two series meet, the later's mark shows."""
    steps = [s for points in series.values() for s, _ in points]
    values = [v for points in series.values() for _, v in points]
    x0, x1 = min(steps), max(steps)
    y0, y1 = min(values), max(values)
    if y0 == y1:  # a flat curve: drawn in the middle
        y0, y1 = y0 - 1, y1 + 1
    grid = [[" "] * width for _ in range(height)]
    for mark, points in zip(MARKS, series.values(), strict=False):
        for s, v in points:
            col = round((s - x0) / (x1 - x0) * (width - 1)) if x1 > x0 else 0
            level = round((v - y0) / (y1 - y0) * (height - 1))
            grid[height - 1 - level][col] = mark
    labels = {0: y1, (height - 1) // 2: (y0 + y1) / 2, height - 1: y0}
    pad = max(len(f"{v:.4g}") for v in labels.values())
    lines = [title]
    for i, row in enumerate(grid):
        label = f"{labels[i]:.4g}" if i in labels else ""
        lines.append(f"{label:>{pad}} |{''.join(row)}")
    lines.append(f"{'':>{pad}} +{'-' * width}")
    left, right = f"step {x0}", str(x1)
    lines.append(f"{'':>{pad}}  {left}{right:>{width - len(left)}}")
    legend = "  ".join(f"{mark} {name}" for mark, name in zip(MARKS, series, strict=False))
    lines.append(f"{'':>{pad}}  {legend}")
    return "\n".join(lines)


def to_csv(curves: dict[str, Points]) -> str:
    """``step,<metric>,…`` with a row per step; a cell is empty where a metric has no point."""
    names = sorted(curves)
    rows: dict[int, dict[str, float]] = {}
    for name in names:
        for s, v in curves[name]:
            rows.setdefault(s, {})[name] = v
    lines = [",".join(["step", *names])]
    for s in sorted(rows):
        cells = [repr(rows[s][n]) if n in rows[s] else "" for n in names]
        lines.append(",".join([str(s), *cells]))
    return "\n".join(lines) + "\n"
