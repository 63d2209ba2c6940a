"""The learning-curve PNG of a run (``plots/learning_curve.png``), drawn with Pillow.

Train and validation loss per epoch on the left axis (log scale when every loss is positive),
validation and train accuracy (R² for a regressor) on a right axis, a dot per epoch while
there are few of them (a one-epoch job's curve is one point per series), ticks, grid, a
legend. It is drawn at twice the size and reduced, for smooth lines.

Why not matplotlib: the plot is drawn once for every job, on the job's path to its final
status. Matplotlib's figure, tick and text machinery costs many times what drawing the lines
and labels directly does (bench/RESULTS.md, Service), and this needs no import of matplotlib
in the worker at all.
"""

from __future__ import annotations

import io
import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from core.callbacks import EpochRecord

WIDTH, HEIGHT = 700, 420  # pixels of the PNG
_S = 2  # drawn at _S× and reduced: anti-aliased lines without a slow renderer
_BLUE, _ORANGE = (31, 119, 180), (255, 127, 14)
_INK, _GRID, _FRAME = (40, 40, 40), (225, 225, 225), (90, 90, 90)
_LEFT, _RIGHT, _TOP, _BOTTOM = 0.11, 0.88, 0.05, 0.88  # plot area, fractions of the size
_DOTS_UP_TO = 30  # epochs up to which each point is also drawn as a dot

Font = ImageFont.FreeTypeFont | ImageFont.ImageFont


@lru_cache(maxsize=4)
def _font(size: int) -> Font:
    return ImageFont.load_default(size=size)


def learning_curve_png(history: Sequence[EpochRecord]) -> bytes:
    """The PNG bytes of the learning curve of ``history`` (an empty history: empty axes)."""
    w, h = WIDTH * _S, HEIGHT * _S
    img = Image.new("RGB", (w, h), "white")
    draw = ImageDraw.Draw(img)
    font = _font(11 * _S)
    x0, x1 = round(_LEFT * w), round(_RIGHT * w)
    y0, y1 = round(_TOP * h), round(_BOTTOM * h)

    epochs = [float(r.epoch) for r in history]
    loss = {
        part: [getattr(r, part).get("loss", math.nan) for r in history] for part in ("train", "val")
    }
    second = next((k for k in ("accuracy", "r2") if any(k in r.val for r in history)), None)
    scores = {
        part: [getattr(r, part).get(second, math.nan) for r in history] for part in ("train", "val")
    }
    log_y = bool(history) and all(v > 0 for v in loss["train"]) and _all_pos(loss["val"])

    # One epoch: wider margins, so that the loss and score dots of one epoch do not meet.
    pad = 0.3 if len(history) == 1 else 0.05
    xs = _Axis(_finite(epochs) or [1.0], x0, x1, integer=True)
    ys = _Axis(_finite(loss["train"] + loss["val"]) or [1.0], y1, y0, log=log_y, pad=pad)
    ys2 = None
    if second:
        found = _finite(scores["train"] + scores["val"]) or [0.0]
        cap = 1.0 if second == "accuracy" and max(found) <= 1.0 else None
        ys2 = _Axis(found, y1, y0, pad=pad, cap=cap)
    dots = len(history) <= _DOTS_UP_TO

    for t in xs.ticks():  # grid first, lines over it
        draw.line([(xs.px(t), y0), (xs.px(t), y1)], fill=_GRID, width=_S)
    for t in ys.ticks():
        draw.line([(x0, ys.px(t)), (x1, ys.px(t))], fill=_GRID, width=_S)

    legend: list[_Entry] = []
    for part, dashed in (("train", False), ("val", True)):
        if _finite(loss[part]):
            style = _Entry(f"{part} loss", _BLUE, dashed, "circle" if dots else None)
            _series(draw, epochs, loss[part], xs, ys, style, font)
            legend.append(style)
    if second and ys2 is not None:
        for part, dashed in (("train", False), ("val", True)):
            if _finite(scores[part]):
                style = _Entry(f"{part} {second}", _ORANGE, dashed, "square" if dots else None)
                _series(draw, epochs, scores[part], xs, ys2, style, font)
                legend.append(style)

    draw.rectangle([x0, y0, x1, y1], outline=_FRAME, width=_S)
    tick = 4 * _S
    for t in xs.ticks():
        px = xs.px(t)
        draw.line([(px, y1), (px, y1 + tick)], fill=_FRAME, width=_S)
        draw.text((px, y1 + tick + _S), _label(t), fill=_INK, font=font, anchor="mt")
    for t in ys.ticks():
        py = ys.px(t)
        draw.line([(x0 - tick, py), (x0, py)], fill=_FRAME, width=_S)
        draw.text((x0 - tick - 2 * _S, py), _label(t), fill=_INK, font=font, anchor="rm")
    if ys2 is not None:
        for t in ys2.ticks():
            py = ys2.px(t)
            draw.line([(x1, py), (x1 + tick, py)], fill=_FRAME, width=_S)
            draw.text((x1 + tick + 2 * _S, py), _label(t), fill=_INK, font=font, anchor="lm")
    draw.text(((x0 + x1) / 2, h - 8 * _S), "epoch", fill=_INK, font=font, anchor="mb")
    _vertical_text(img, "loss" + (" (log scale)" if log_y else ""), (8 * _S, (y0 + y1) // 2), font)
    if second:
        _vertical_text(img, second, (w - 22 * _S, (y0 + y1) // 2), font)
    _legend(draw, legend, x1 - 8 * _S, (y0 + y1) // 2, font)

    out = io.BytesIO()
    img.reduce(_S).save(out, format="PNG", compress_level=1)
    return out.getvalue()


@dataclass(frozen=True)
class _Entry:
    """One series' look: its legend name, colour, dashes and dot shape (None: no dots)."""

    name: str
    color: tuple[int, int, int]
    dashed: bool
    marker: str | None


def _series(
    draw: ImageDraw.ImageDraw,
    xs_: list[float],
    values: list[float],
    xs: _Axis,
    ys: _Axis,
    style: _Entry,
    font: Font,
) -> None:
    """A polyline broken at non-finite values (and at non-positive ones on a log axis), a
    dot per point while there are few, and for a single epoch its value written beside it."""
    points = [
        (xs.px(x), ys.px(v)) if math.isfinite(v) and (v > 0 or not ys.log) else None
        for x, v in zip(xs_, values, strict=True)
    ]
    run: list[tuple[float, float]] = []
    for p in [*points, None]:
        if p is not None:
            run.append(p)
            continue
        if len(run) > 1:
            if style.dashed:
                _dashed(draw, run, style.color)
            else:
                draw.line(run, fill=style.color, width=2 * _S, joint="curve")
        run = []
    for p in points:
        if p is not None:
            _marker(draw, p, style)
    if len(points) == 1 and points[0] is not None:
        x, y = points[0]
        text = f"{style.name} {values[0]:.4g}"
        draw.text((x + 8 * _S, y), text, fill=style.color, font=font, anchor="lm")


def _marker(draw: ImageDraw.ImageDraw, p: tuple[float, float], style: _Entry) -> None:
    r = 3 * _S
    box = [p[0] - r, p[1] - r, p[0] + r, p[1] + r]
    if style.marker == "circle":
        draw.ellipse(box, fill=style.color)
    elif style.marker == "square":
        draw.rectangle(box, fill=style.color)


def _dashed(
    draw: ImageDraw.ImageDraw, points: list[tuple[float, float]], color: tuple[int, int, int]
) -> None:
    on, off = 7.0 * _S, 4.0 * _S
    pos, drawing = on, True  # pos: length left in the current dash (or gap)
    for (ax, ay), (bx, by) in itertools.pairwise(points):
        seg = math.hypot(bx - ax, by - ay)
        t = 0.0
        while seg > 0 and t < seg:
            step = min(pos, seg - t)
            if drawing:
                f0, f1 = t / seg, (t + step) / seg
                draw.line(
                    [
                        (ax + (bx - ax) * f0, ay + (by - ay) * f0),
                        (ax + (bx - ax) * f1, ay + (by - ay) * f1),
                    ],
                    fill=color,
                    width=2 * _S,
                )
            t += step
            pos -= step
            if pos <= 1e-9:
                drawing = not drawing
                pos = on if drawing else off


def _legend(
    draw: ImageDraw.ImageDraw,
    entries: list[_Entry],
    right: int,
    middle: int,
    font: Font,
) -> None:
    if not entries:
        return
    row, sample, pad = 16 * _S, 24 * _S, 6 * _S
    text_w = max(draw.textlength(e.name, font=font) for e in entries)
    width = pad * 3 + sample + text_w
    top = middle - (row * len(entries) + pad) / 2
    left = right - width
    draw.rectangle(
        [left, top, right, top + row * len(entries) + pad],
        fill=(255, 255, 255),
        outline=(200, 200, 200),
        width=_S,
    )
    for i, e in enumerate(entries):
        y = top + pad + row * i + row / 2
        line = [(left + pad, y), (left + pad + sample, y)]
        if e.dashed:
            _dashed(draw, line, e.color)
        else:
            draw.line(line, fill=e.color, width=2 * _S)
        _marker(draw, (left + pad + sample / 2, y), e)
        draw.text((left + 2 * pad + sample, y), e.name, fill=_INK, font=font, anchor="lm")


def _vertical_text(img: Image.Image, text: str, center: tuple[int, int], font: Font) -> None:
    box = font.getbbox(text)
    label = Image.new("L", (int(box[2]) + 2 * _S, int(box[3]) + 2 * _S), 0)
    ImageDraw.Draw(label).text((_S, _S), text, fill=255, font=font)
    label = label.rotate(90, expand=True)
    ink = Image.new("RGB", label.size, _INK)
    img.paste(ink, (center[0] - label.width // 2, center[1] - label.height // 2), label)


class _Axis:
    """Data → pixel along one axis (``p0`` at the low end, ``p1`` at the high end), with
    padded limits and "nice" ticks (1-2-5 steps; decades on a log axis)."""

    def __init__(
        self,
        values: list[float],
        p0: int,
        p1: int,
        *,
        log: bool = False,
        integer: bool = False,
        pad: float = 0.05,
        cap: float | None = None,
    ) -> None:
        self.log, self.integer, self.p0, self.p1 = log, integer, p0, p1
        f: Callable[[float], float] = math.log10 if log else float
        lo, hi = f(min(values)), f(max(values))
        if cap is not None:  # accuracy: the axis ends at 1, where the curve is heading
            hi = cap
        span = hi - lo
        margin = pad * span if span > 0 else (0.5 if integer else max(abs(lo) * 0.1, 0.05))
        self.lo, self.hi = lo - margin, hi + (0.02 * span if cap is not None else margin)

    def t(self, v: float) -> float:
        return math.log10(v) if self.log else v

    def px(self, v: float) -> float:
        return self.p0 + (self.t(v) - self.lo) / (self.hi - self.lo) * (self.p1 - self.p0)

    def ticks(self) -> list[float]:
        if self.log:
            decades = [10.0**k for k in range(math.ceil(self.lo), math.floor(self.hi) + 1)]
            if len(decades) >= 2:
                return decades
            sub = [
                m * 10.0**k
                for k in range(math.floor(self.lo), math.ceil(self.hi) + 1)
                for m in (1, 2, 5)
                if self.lo <= math.log10(m * 10.0**k) <= self.hi
            ]
            if len(sub) >= 2:
                return sub
            lo, hi = 10.0**self.lo, 10.0**self.hi
        else:
            lo, hi = self.lo, self.hi
        step = _nice_step((hi - lo) / 5)
        if self.integer:
            step = max(1.0, round(step))
        first = math.ceil(lo / step) * step
        out = []
        v = first
        while v <= hi + 1e-12 * abs(hi):
            out.append(round(v, 12))
            v += step
        return out


def _nice_step(raw: float) -> float:
    if raw <= 0 or not math.isfinite(raw):
        return 1.0
    k = math.floor(math.log10(raw))
    for m in (1, 2, 2.5, 5, 10):
        if m * 10.0**k >= raw:
            return m * 10.0**k
    return 10.0 ** (k + 1)


def _label(v: float) -> str:
    return f"{v:g}"


def _finite(values: list[float]) -> list[float]:
    return [v for v in values if math.isfinite(v)]


def _all_pos(values: list[float]) -> bool:
    return all(v > 0 for v in values if math.isfinite(v))


CONFUSION_CELL = 36  # pixels of a cell of the confusion matrix's picture, at most
CONFUSION_MAX = 900  # pixels of the matrix's side, at most (many classes: smaller cells)


def confusion_png(matrix: Sequence[Sequence[int]]) -> bytes:
    """The PNG bytes of a confusion matrix (``matrix[i][j]``: rows of class i predicted j):
    a cell per pair, shaded by its count's share of its true class's rows, the count written
    in it while the cells are large enough; true classes down the left, predicted along the
    top."""
    k = len(matrix)
    cell = max(4, min(CONFUSION_CELL, CONFUSION_MAX // max(k, 1)))
    margin = 48
    side = margin + cell * k + 8
    img = Image.new("RGB", (side, side), "white")
    draw = ImageDraw.Draw(img)
    font = _font(max(8, cell // 3))
    label = _font(11)
    draw.text((margin, 4), "predicted", fill=_INK, font=label)
    draw.text((4, margin - 16), "true", fill=_INK, font=label)
    for i, row in enumerate(matrix):
        total = sum(row) or 1
        for j, count in enumerate(row):
            share = count / total
            shade = tuple(round(255 - share * (255 - c)) for c in _BLUE)
            x, y = margin + j * cell, margin + i * cell
            draw.rectangle([x, y, x + cell - 1, y + cell - 1], fill=shade, outline=_GRID)
            if cell >= 24:
                ink = "white" if share > 0.5 else _INK
                draw.text((x + 3, y + cell // 3), str(count), fill=ink, font=font)
        if cell >= 12:
            draw.text((margin - 20, margin + i * cell + cell // 3), str(i), fill=_INK, font=label)
            draw.text((margin + i * cell + cell // 3, margin - 30), str(i), fill=_INK, font=label)
    out = io.BytesIO()
    img.save(out, format="PNG")
    return out.getvalue()


def confusion_table(confusion: dict[str, list[Any]]) -> dict[str, list[Any]]:
    """The confusion matrix and per-class scores as a table (MLflow's table JSON: columns
    and rows): a row per true class, its counts per predicted class, then its precision,
    recall, F1 and support."""
    k = len(confusion["matrix"])
    columns = ["class", *(f"predicted {j}" for j in range(k))]
    columns += ["precision", "recall", "f1", "support"]
    data = [
        [
            i,
            *row,
            confusion["precision"][i],
            confusion["recall"][i],
            confusion["f1"][i],
            confusion["support"][i],
        ]
        for i, row in enumerate(confusion["matrix"])
    ]
    return {"columns": columns, "data": data}
