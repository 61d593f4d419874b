"""Training curves to PNG with Pillow only: loss, validation top-1/top-5, throughput, learning rate.

``python -m hivedata plot METRICS [--out PNG] [--title T]`` draws a metrics file written by train.py
(.jsonl or .csv, see ``metrics.py``). Missing fields are skipped, NaN/inf break a line, and a panel with no
data says so. A step counter that goes backwards (a resumed run appending to the same file) starts a
new line segment instead of drawing back across the plot.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from hivedata.train.metrics import read_metrics

__all__ = ["DEFAULT_SIZE", "main", "nice_ticks", "plot_metrics", "tick_labels"]

DEFAULT_SIZE = (1200, 860)
_BLUE, _ORANGE, _GREEN, _RED = (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40)
_INK, _GRID, _AXIS = (30, 30, 30), (228, 228, 228), (90, 90, 90)
Point = tuple[float, float]


@dataclass(frozen=True)
class _Series:
    key: str
    label: str
    color: tuple[int, int, int]
    smooth: bool = False


@dataclass(frozen=True)
class _Panel:
    title: str
    x: str
    series: tuple[_Series, ...]
    note: str = "last"  # what the panel title reports about its first series: "last" or "best"


_PANELS = (
    _Panel("training loss", "step", (_Series("loss", "loss", _BLUE, smooth=True),)),
    _Panel("validation accuracy", "step",
           (_Series("val_top1", "top-1", _GREEN), _Series("val_top5", "top-5", _ORANGE)), note="best"),
    _Panel("throughput (samples/s)", "step",
           (_Series("samples_per_s", "train samples/s", _BLUE, smooth=True),
            _Series("loader_images_per_s", "loader images/s", _RED, smooth=True))),
    _Panel("learning rate", "global_epoch", (_Series("lr", "lr", _RED),)),
)


def _num(value: Any) -> float | None:
    """value as a float if it is a number (NaN/inf kept), else None (missing, bool, text)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        return None
    return float(value)


def _segments(rows: Sequence[dict], xkey: str | None, ykey: str) -> list[list[Point]]:
    """(x, y) runs of ykey against xkey (row index if None); NaN/inf y or a decreasing x starts a new run."""
    runs: list[list[Point]] = [[]]
    last_x = -math.inf
    for i, row in enumerate(rows):
        x = float(i) if xkey is None else _num(row.get(xkey))
        y = _num(row.get(ykey))
        if x is None or y is None or not math.isfinite(x):
            continue  # not logged in this row: no break (validation is logged every few epochs only)
        if not math.isfinite(y) or x < last_x:
            runs.append([])
        if math.isfinite(y):
            runs[-1].append((x, y))
        last_x = x
    return [r for r in runs if r]


def _smoothed(run: list[Point], window: int) -> list[Point]:
    """Centered moving average of a run's y values (shrinking at the ends)."""
    if window <= 1 or len(run) < 3:
        return run
    ys = np.array([p[1] for p in run])
    c = np.concatenate([[0.0], np.cumsum(ys)])
    half = window // 2
    idx = np.arange(len(ys))
    lo, hi = np.maximum(idx - half, 0), np.minimum(idx + half + 1, len(ys))
    return [(x, float(v)) for (x, _), v in zip(run, (c[hi] - c[lo]) / (hi - lo), strict=True)]


def nice_ticks(lo: float, hi: float, target: int = 5) -> tuple[list[float], float]:
    """Round tick values (1/2/5 x 10^k apart) covering [lo, hi], and their spacing."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        raise ValueError(f"bad tick range [{lo}, {hi}]")
    raw = (hi - lo) / max(target, 1)
    mag = 10.0 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9)
    ticks = [k * step for k in range(first, math.floor(hi / step + 1e-9) + 1)]
    return [0.0 if abs(t) < step * 1e-9 else t for t in ticks], step


def _decimals(step: float) -> int:
    """Digits after the point that tell ticks `step` apart (2.5 x 10^k needs one more)."""
    exp = math.floor(math.log10(step) + 1e-9)
    return max(0, -exp + (1 if round(step / 10.0**exp, 6) == 2.5 else 0))


def tick_labels(ticks: Sequence[float], step: float) -> list[str]:
    """Labels for nice_ticks output sharing one style: 0.25, 12.5k, 3.0M or 2.5e-4."""
    big = max((abs(t) for t in ticks), default=0.0)
    if big >= 1e4 and step >= 100:
        div, suffix = next((d, u) for d, u in ((1e9, "G"), (1e6, "M"), (1e3, "k")) if big >= d)
        d = _decimals(step / div)
        return [f"{t / div:.{d}f}{suffix}" if t else "0" for t in ticks]
    if 0 < big < 1e-3:
        exp = math.floor(math.log10(big))
        d = _decimals(step / 10.0**exp)
        return [f"{t / 10.0**exp:.{d}f}e{exp}" if t else "0" for t in ticks]
    d = _decimals(step)
    return [f"{t:.{d}f}" for t in ticks]


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # Pillow < 10.1 or without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _tint(color: tuple[int, int, int], amount: float = 0.65) -> tuple[int, int, int]:
    r, g, b = (round(c + (255 - c) * amount) for c in color)
    return r, g, b


class _Canvas:
    """One panel's plot area with data-to-pixel mapping."""

    def __init__(self, draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], xr: tuple[float, float],
                 yr: tuple[float, float]) -> None:
        self.draw, self.box, self.xr, self.yr = draw, box, xr, yr

    def px(self, p: Point) -> Point:
        (x0, y0, x1, y1), (a, b), (c, d) = self.box, self.xr, self.yr
        return x0 + (p[0] - a) / (b - a) * (x1 - x0), y1 - (p[1] - c) / (d - c) * (y1 - y0)

    def line(self, run: list[Point], color: tuple[int, int, int], width: int, markers: bool) -> None:
        pts = [self.px(p) for p in run]
        if len(pts) > 1:
            self.draw.line(pts, fill=color, width=width, joint="curve")
        if markers or len(pts) == 1:
            for x, y in pts:
                self.draw.ellipse((x - 3, y - 3, x + 3, y + 3), fill=color)


def _range(values: list[float], pad: float) -> tuple[float, float]:
    lo, hi = min(values), max(values)
    if hi - lo <= 1e-12 * max(abs(lo), abs(hi), 1e-300):
        span = abs(lo) * 0.1 or 1.0
        return lo - span, hi + span
    return lo - (hi - lo) * pad, hi + (hi - lo) * pad


def _panel_note(panel: _Panel, runs: list[list[Point]], bad: int) -> str:
    ys = [y for run in runs for _, y in run]
    parts = []
    if ys:
        value = max(ys) if panel.note == "best" else runs[-1][-1][1]
        parts.append(f"{panel.note} {panel.series[0].label} {value:.4g}")
    parts += [f"{bad} non-finite"] if bad else []
    return f"  ({', '.join(parts)})" if parts else ""


def _draw_panel(draw: ImageDraw.ImageDraw, rows: Sequence[dict], panel: _Panel, box: tuple[int, int, int, int],
                font: Any, small: Any) -> None:
    left, top, right, bottom = box
    xkey: str | None = panel.x
    if not any(_num(r.get(panel.x)) is not None for r in rows):
        xkey = "step" if any(_num(r.get("step")) is not None for r in rows) else None
    xlabel = {None: "row", "step": "step", "global_epoch": "global epoch"}.get(xkey, xkey)
    data = [(s, _segments(rows, xkey, s.key)) for s in panel.series]
    data = [(s, runs) for s, runs in data if runs]
    first_runs = data[0][1] if data and data[0][0] == panel.series[0] else []
    key = panel.series[0].key
    bad = sum(1 for r in rows if (v := _num(r.get(key))) is not None and not math.isfinite(v))
    draw.text((left, top), panel.title + _panel_note(panel, first_runs, bad), fill=_INK, font=font)
    plot = (left + 62, top + 26, right - 8, bottom - 40)
    draw.rectangle(plot, outline=_AXIS)
    if not data:
        draw.text(((plot[0] + plot[2]) / 2, (plot[1] + plot[3]) / 2), "no data", fill=_AXIS, font=font, anchor="mm")
        return
    xs = [x for _, runs in data for run in runs for x, _ in run]
    ys = [y for _, runs in data for run in runs for _, y in run]
    canvas = _Canvas(draw, plot, _range(xs, 0.02), _range(ys, 0.06))
    for axis, (lo, hi) in enumerate((canvas.xr, canvas.yr)):
        ticks, step = nice_ticks(lo, hi, 6 if axis == 0 else 5)
        for t, label in zip(ticks, tick_labels(ticks, step), strict=True):
            if axis == 0:
                x = canvas.px((t, 0.0))[0]
                draw.line((x, plot[1] + 1, x, plot[3] - 1), fill=_GRID)
                draw.line((x, plot[3], x, plot[3] + 4), fill=_AXIS)
                draw.text((x, plot[3] + 6), label, fill=_INK, font=small, anchor="mt")
            else:
                y = canvas.px((0.0, t))[1]
                draw.line((plot[0] + 1, y, plot[2] - 1, y), fill=_GRID)
                draw.line((plot[0] - 4, y, plot[0], y), fill=_AXIS)
                draw.text((plot[0] - 6, y), label, fill=_INK, font=small, anchor="rm")
    draw.rectangle(plot, outline=_AXIS)
    draw.text(((plot[0] + plot[2]) / 2, bottom - 2), xlabel, fill=_INK, font=small, anchor="md")
    for series, runs in data:
        n = sum(len(r) for r in runs)
        sparse = n <= 60
        if series.smooth and n > 100:
            for run in runs:
                canvas.line(run, _tint(series.color), 1, False)
            for run in runs:
                canvas.line(_smoothed(run, max(3, n // 60)), series.color, 2, False)
        else:
            for run in runs:
                canvas.line(run, series.color, 2, sparse)
    if len(panel.series) > 1:
        _legend(draw, canvas, [s for s, _ in data], [p for _, runs in data for run in runs for p in run], small)


def _legend(draw: ImageDraw.ImageDraw, canvas: _Canvas, series: list[_Series], points: list[Point], font: Any) -> None:
    """Series labels in the plot corner that covers the fewest data points."""
    left, top, right, bottom = canvas.box
    w = max(draw.textlength(s.label, font=font) for s in series) + 30
    h = 18 * len(series) + 6
    pixels = [canvas.px(p) for p in points]
    xr, yb = right - w - 4, bottom - h - 4
    corners = [(xr, top + 4), (xr, yb), (left + 4, top + 4), (left + 4, yb)]

    def covered(c: Point) -> int:
        return sum(c[0] - 4 <= x <= c[0] + w + 4 and c[1] - 4 <= y <= c[1] + h + 4 for x, y in pixels)

    x0, y0 = min(corners, key=covered)
    draw.rectangle((x0, y0, x0 + w, y0 + h), fill="white", outline=_GRID)
    for i, s in enumerate(series):
        y = y0 + 5 + 18 * i
        draw.rectangle((x0 + 6, y + 4, x0 + 20, y + 10), fill=s.color)
        draw.text((x0 + 26, y), s.label, fill=_INK, font=font)


def plot_metrics(rows: list[dict], out_png: str | Path, *, title: str = "",
                 size: tuple[int, int] = DEFAULT_SIZE) -> None:
    """Draws loss, validation accuracy, throughput and learning-rate panels (2x2) of metric rows to a PNG."""
    width, height = size
    if width < 400 or height < 300:
        raise ValueError(f"plot size {size} is too small (at least 400x300)")
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    font, small = _font(15), _font(12)
    head = 34
    draw.text((width / 2, 8), title or "training metrics", fill=_INK, font=_font(18), anchor="ma")
    pw, ph = (width - 30) // 2, (height - head - 10) // 2
    for i, panel in enumerate(_PANELS):
        x0, y0 = 10 + (i % 2) * (pw + 10), head + (i // 2) * ph
        _draw_panel(draw, rows, panel, (x0, y0, x0 + pw, y0 + ph - 6), font, small)
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    img.save(out, format="PNG", optimize=True)


def main(argv: list[str] | None = None) -> int:
    """CLI: plot METRICS [--out PNG] [--title T]; returns the exit status."""
    p = argparse.ArgumentParser(prog="hivedata plot", description="draw a training metrics file to PNG")
    p.add_argument("metrics", help="metrics file written by train.py (.jsonl or .csv)")
    p.add_argument("--out", default=None, help="PNG path (default: the metrics path with a .png suffix)")
    p.add_argument("--title", default=None, help="plot title (default: the metrics file name)")
    args = p.parse_args(argv)
    path = Path(args.metrics)
    try:
        rows = read_metrics(path)
    except (OSError, ValueError) as e:
        print(f"hivedata plot: {e}", file=sys.stderr)
        return 1
    out = Path(args.out) if args.out else path.with_suffix(".png")
    plot_metrics(rows, out, title=args.title if args.title is not None else path.name)
    print(f"{len(rows)} rows -> {out}")
    return 0
