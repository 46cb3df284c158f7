"""Line charts in the terminal, drawn with rich: braille dots (2 x 4 per cell), a y axis with values
(linear, or logarithmic for a loss), an x axis of steps or of wall-clock time, and several series in
their own colours with a legend (to compare tasks). No Textual here: `chart()` returns rich Text.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from rich.text import Text

COLOURS = ("cyan", "magenta", "yellow", "green", "bright_blue", "red", "bright_white", "orange3")
DOTS = ((0x01, 0x08), (0x02, 0x10), (0x04, 0x20), (0x40, 0x80))  # braille bit of (row, column) in a cell


@dataclass
class Series:
    name: str
    points: list[tuple[float, float]]  # (x, y), x ascending
    colour: str = "cyan"


def _ticks(lo: float, hi: float, log: bool) -> list[float]:
    if log:
        return [lo, math.sqrt(lo * hi), hi]
    return [lo, (lo + hi) / 2, hi]


def _label(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1e4 or abs(value) < 1e-3:
        return f"{value:.1e}"
    return f"{value:.4g}"


def _x_label(value: float, clock: bool, span: float) -> str:
    if not clock:
        return f"{value:,.0f}"
    return time.strftime("%H:%M:%S" if span < 86_400 else "%d %H:%M", time.localtime(value))


def chart(series: list[Series], width: int, height: int, log_y: bool = False, clock: bool = False,
          x_title: str = "step") -> Text:
    """`series` in a `width` x `height` block of text (legend, plot and x axis included). log_y: a log
    scale (values <= 0 are left out); clock: x values are wall-clock seconds since the epoch."""
    series = [Series(s.name, [(x, y) for x, y in s.points if y is not None and math.isfinite(y)
                              and (y > 0 or not log_y)], s.colour) for s in series]
    points = [p for s in series for p in s.points]
    text = Text()
    if len(series) > 1:
        for s in series:
            text.append("━ ", style=s.colour).append(f"{s.name}  ")
        text.append("\n")
        height -= 1
    if not points or height < 3 or width < 20:
        return text.append("no points yet" if not points else "too small to draw", style="dim")
    ys = [math.log10(y) if log_y else y for _, y in points]
    xs = [x for x, _ in points]
    y_lo, y_hi = min(ys), max(ys)
    if y_hi - y_lo < 1e-12:
        y_lo, y_hi = y_lo - 0.5, y_hi + 0.5
    x_lo, x_hi = min(xs), max(xs)
    if x_hi - x_lo < 1e-12:
        x_lo, x_hi = x_lo - 1, x_hi + 1
    ticks = _ticks(10 ** y_lo if log_y else y_lo, 10 ** y_hi if log_y else y_hi, log_y)
    gutter = max(len(_label(t)) for t in ticks) + 1
    rows, cols = height - 2, width - gutter - 1  # plot cells; two lines for the x axis
    dots_x, dots_y = cols * 2, rows * 4
    grid = [[0] * cols for _ in range(rows)]
    colour = [[""] * cols for _ in range(rows)]

    def to_dot(x: float, y: float) -> tuple[int, int]:
        v = math.log10(y) if log_y else y
        dx = round((x - x_lo) / (x_hi - x_lo) * (dots_x - 1))
        dy = round((y_hi - v) / (y_hi - y_lo) * (dots_y - 1))
        return dx, dy

    def plot(dx: int, dy: int, c: str) -> None:
        cell_y, cell_x = dy // 4, dx // 2
        grid[cell_y][cell_x] |= DOTS[dy % 4][dx % 2]
        colour[cell_y][cell_x] = c

    for s in series:
        previous = None
        for x, y in s.points:
            dot = to_dot(x, y)
            if previous is None:
                plot(*dot, s.colour)
            else:  # a straight line of dots from the previous point
                (x0, y0), (x1, y1) = previous, dot
                steps = max(abs(x1 - x0), abs(y1 - y0), 1)
                for k in range(steps + 1):
                    plot(round(x0 + (x1 - x0) * k / steps), round(y0 + (y1 - y0) * k / steps), s.colour)
            previous = dot
    tick_rows = {0: ticks[2], (rows - 1) // 2: ticks[1], rows - 1: ticks[0]}
    for r in range(rows):
        label = _label(tick_rows[r]) if r in tick_rows else ""
        text.append(f"{label:>{gutter - 1}} ", style="dim").append("┤" if r in tick_rows else "│", style="dim")
        for c in range(cols):
            bits = grid[r][c]
            text.append(chr(0x2800 + bits) if bits else " ", style=colour[r][c] or None)
        text.append("\n")
    title = f" {x_title}{', log y' if log_y else ''} "
    rule = "─" * 2 + title + "─" * max(cols - 2 - len(title), 0)
    text.append(" " * gutter + "└" + rule[:cols] + "\n", style="dim")
    span = x_hi - x_lo
    left, mid, right = (_x_label(v, clock, span) for v in (x_lo, (x_lo + x_hi) / 2, x_hi))
    axis = [" "] * (cols + 1)
    for pos, label in ((0, left), ((cols - len(mid)) // 2, mid), (cols + 1 - len(right), right)):
        for i, ch in enumerate(label):
            if 0 <= pos + i < len(axis):
                axis[pos + i] = ch
    return text.append(" " * gutter + "".join(axis), style="dim")
