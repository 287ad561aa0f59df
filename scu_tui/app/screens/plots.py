"""Full-size plots of the run: loss, validation, learning rate, gradients and knobs."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.color import Color
from textual.screen import Screen
from textual.widgets import Footer, Static

from scu_tui.app.feed import (
    History,
    RunState,
)

if TYPE_CHECKING:
    from textual.events import Resize


PLOT_POINTS = 400


def thin(history: History, points: int = PLOT_POINTS) -> tuple[list[int], list[float]]:
    """At most ``points`` evenly spaced points of a history, always with the newest."""
    steps, values = history.steps, history.values
    if len(steps) <= points:
        return list(steps), list(values)
    stride = math.ceil(len(steps) / points)
    idx = list(range(0, len(steps), stride))
    if idx[-1] != len(steps) - 1:
        idx.append(len(steps) - 1)
    return [steps[i] for i in idx], [values[i] for i in idx]


RGB = tuple[int, int, int]

#: Steps of the exponential moving average drawn over the training loss (at the history's
#: own resolution: a thinned history averages over proportionally more steps).
EMA_SPAN = 20
#: Linear y-axes stop at this multiple of the 95th percentile: one spike must not flatten
#: the rest of a curve (log axes need no cut).
SPIKE_CLIP = 3.0


def ema(values: Sequence[float], span: int = EMA_SPAN) -> list[float]:
    """Exponential moving average; the first value starts it."""
    alpha = 2 / (span + 1)
    out: list[float] = []
    for v in values:
        out.append(v if not out else out[-1] + alpha * (v - out[-1]))
    return out


def step_ticks(low: int, high: int, count: int) -> list[int]:
    """About ``count`` whole-number ticks from ``low`` to ``high`` at a round spacing (1, 2
    or 5 times a power of ten): step 400, 800, 1200, never 133.3 or 3.9e2."""
    span = max(high - low, 1)
    raw = span / max(count, 1)
    power = 10 ** math.floor(math.log10(raw)) if raw >= 1 else 1
    spacing = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    spacing = max(int(spacing), 1)
    first = math.ceil(low / spacing) * spacing
    return list(range(first, high + 1, spacing)) or [low, high]


def robust_top(values: Sequence[float]) -> float:
    """The y-axis top for a linear plot: the maximum, or SPIKE_CLIP x the 95th percentile
    when a few spikes stand far above the rest."""
    ordered = sorted(v for v in values if math.isfinite(v))
    if not ordered:
        return 1.0
    p95 = ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]
    return min(ordered[-1], SPIKE_CLIP * p95) if p95 > 0 else ordered[-1]


def render_plots(
    state: RunState, width: int, height: int, colors: dict[str, RGB], log_y: bool = True
) -> str:
    """Loss (training, its moving average, validation), learning rate, gradient norm and,
    when they moved, weight decay, dropout and accumulation; stacked, with a mark where a
    knob changed (│) and where training rolled back to (┃). Text with ANSI colours.

    ``colors`` maps "train", "val", "lr", "grad", "knob" and "rollback" to the active
    theme's colours; everything else is drawn in the terminal's own colours.
    """
    import plotext as plt

    knob_series = [
        (state.weight_decay_history, "weight decay"),
        (state.dropout_history, "dropout"),
        (state.accumulation_history, "accumulation"),
    ]
    moved = [(h, name) for h, name in knob_series if len(set(h.values)) > 1]
    scale = "log y" if log_y else "linear y"
    rows: list[tuple[str, list[tuple[History, str]], bool]] = [
        (f"loss: train ⠒ · average ━ · val • ({scale})", [(state.loss_history, "train"),
         (state.val_history, "val")], log_y),
        ("learning rate", [(state.lr_history, "lr")], False),
        (f"gradient norm ({scale})", [(state.grad_history, "grad")], log_y),
    ]  # fmt: skip
    for history, name in moved:
        rows.append((name, [(history, name)], False))
    fig: Any = plt.figure
    fig.clear()
    fig.subplots(len(rows), 1)
    fig.plot_size(max(width, 30), max(height, 5 * len(rows)))
    fig.theme("colorless")
    steps = state.loss_history.steps
    low, high = (steps[0], steps[-1]) if steps else (0, 1)
    ticks = step_ticks(low, max(high, low + 1), max(2, width // 12))
    for index, (title, series, log) in enumerate(rows, start=1):
        sub = fig.subplot(index, 1)
        sub.title(title)
        seen: list[float] = []
        for history, name in series:
            xs, ys = thin(history)
            if log:
                xs, ys = [x for x, y in zip(xs, ys, strict=True) if y > 0], [y for y in ys if y > 0]
            if not xs:
                continue
            seen += ys
            color = colors.get(name, colors.get("knob"))
            if name == "val":
                sub.draw(sub.signal(xs, ys, marker=plt.marker("•", color)))
                continue
            if name == "train":  # the raw losses faint, their average bold
                sub.draw(sub.signal(xs, ys, marker=plt.marker("braille", colors.get("faint"))))
                average = sub.signal(xs, ema(ys), marker=plt.marker("braille", color))
                average.lines()
                sub.draw(average)
                continue
            signal = sub.signal(xs, ys, marker=plt.marker("braille", color))
            if len(xs) > 1:
                signal.lines()
            sub.draw(signal)
        if not seen:
            continue
        bottom, top = min(seen), max(seen) if log else robust_top(seen)
        if top <= bottom:  # a flat line needs a range, and a log axis has nothing to show
            pad = abs(top) * 0.1 or 1.0
            bottom, top, log = bottom - pad, top + pad, False
        if log:
            sub.ruler("y").scale("log")
        else:
            sub.ruler("y").lim(bottom, top)
        for step, kind in state.markers:
            if low <= step <= high:
                mark = "┃" if kind == "rollback" else "│"
                sub.draw(
                    sub.segment(
                        [step, step], [bottom, top], marker=plt.marker(mark, colors.get(kind))
                    )
                )
        sub.ruler("x").ticks(ticks, [str(t) for t in ticks])
    return str(fig.build().string())


class PlotsScreen(Screen[None]):
    """Full-size curves of the run so far, redrawn while they change."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,g,q", "close", "Back", id="plots.close", tooltip="Back to the dashboard"),
        Binding("l", "toggle_log", "Log/linear", id="plots.log", tooltip="Log or linear y-axes"),
    ]

    def __init__(self, state: Callable[[], RunState]) -> None:
        super().__init__()
        self.state = state
        self.log_y = True
        self._drawn: tuple[int, int, int, str, bool] = (-1, 0, 0, "", True)

    def compose(self) -> ComposeResult:
        yield Static("", id="plot")
        yield Footer()

    def on_mount(self) -> None:
        self.draw()
        self.set_interval(1.0, self.draw)

    def on_resize(self, event: Resize) -> None:
        self.draw()

    def draw(self) -> None:
        """Redraw when the data or the size changed (plotext is pure Python: not for free)."""
        plot = self.query_one("#plot", Static)
        width, height = plot.size.width, plot.size.height
        state = self.state()
        key = (state.version, width, height, self.app.theme, self.log_y)
        if key == self._drawn or width < 10 or height < 5:
            return
        self._drawn = key
        if not len(state.loss_history):
            plot.update("No steps yet: the curves appear once training runs.")
            return
        text = render_plots(state, width - 2, height, self.theme_colors(), self.log_y)
        plot.update(Text.from_ansi(text, no_wrap=True))

    def theme_colors(self) -> dict[str, RGB]:
        """The curves' colours, taken from the active theme."""
        theme = self.app.current_theme
        picks = {
            "train": theme.primary,
            "val": theme.accent or theme.primary,
            "lr": theme.secondary or theme.primary,
            "grad": theme.warning or theme.primary,
            "knob": theme.success or theme.primary,
            "decision": theme.success or theme.primary,
            "rollback": theme.error or theme.primary,
        }
        colors = {name: Color.parse(value).rgb for name, value in picks.items()}
        faint = Color.parse(theme.primary).blend(Color.parse(theme.background or "black"), 0.6)
        colors["faint"] = faint.rgb
        return colors

    def action_toggle_log(self) -> None:
        self.log_y = not self.log_y
        self.draw()

    def action_close(self) -> None:
        self.dismiss(None)
