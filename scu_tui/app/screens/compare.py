"""Runs side by side: their curves and their numbers."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.color import Color
from textual.screen import Screen
from textual.widgets import Footer, Static

from scu_tui.app.feed import (
    RunState,
)
from scu_tui.app.screens.plots import RGB, ema, thin
from scu_tui.errors import UserError
from scu_tui.protocol import RunFile, event_from_dict, read_events
from scu_tui.runs import RunInfo

if TYPE_CHECKING:
    from textual.events import Resize


def render_comparison(
    runs: Sequence[tuple[str, RunState]], width: int, height: int, colors: Sequence[RGB]
) -> str:
    """Validation loss and the training loss's moving average of several runs, overlaid."""
    import plotext as plt

    fig: Any = plt.figure
    fig.clear()
    fig.subplots(2, 1)
    fig.plot_size(max(width, 30), max(height, 12))
    fig.theme("colorless")
    for row, (title, pick) in enumerate(
        (("validation loss", "val"), ("training loss (moving average)", "train")), start=1
    ):
        sub = fig.subplot(row, 1)
        sub.title(title + " — " + "  ".join(f"{i + 1}:{name}" for i, (name, _) in enumerate(runs)))
        for index, (_, state) in enumerate(runs):
            history = state.val_history if pick == "val" else state.loss_history
            xs, ys = thin(history)
            if not xs:
                continue
            ys = ys if pick == "val" else ema(ys)
            color = colors[index % len(colors)] if colors else None
            signal = sub.signal(xs, ys, marker=plt.marker("braille", color))
            signal.lines()
            sub.draw(signal)
    return str(fig.build().string())


class CompareScreen(Screen[None]):
    """Several runs' loss curves on one plot."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,q,c", "close", "Back", id="compare.close", tooltip="Back to the runs"),
    ]

    def __init__(self, runs: Sequence[RunInfo]) -> None:
        super().__init__()
        self.runs = [(info.name, run_history(info.path)) for info in runs]

    def compose(self) -> ComposeResult:
        yield Static("", id="plot")
        yield Footer()

    def on_mount(self) -> None:
        self.draw()

    def on_resize(self, event: Resize) -> None:
        self.draw()

    def draw(self) -> None:
        plot = self.query_one("#plot", Static)
        theme = self.app.current_theme
        picks = [theme.primary, theme.accent, theme.warning, theme.success, theme.secondary]
        colors = [Color.parse(c).rgb for c in picks if c]
        text = render_comparison(self.runs, plot.size.width - 2, plot.size.height, colors)
        plot.update(Text.from_ansi(text, no_wrap=True))

    @property
    def text(self) -> str:
        return str(self.query_one("#plot", Static).render())

    def action_close(self) -> None:
        self.dismiss(None)


def run_history(path: Path) -> RunState:
    """A finished or live run's surviving history, folded from its events file."""
    state = RunState()
    try:
        events = [event_from_dict(data) for data in read_events(path / RunFile.EVENTS)]
    except UserError:
        return state
    state.load_history(e for e in events if e is not None)
    return state
