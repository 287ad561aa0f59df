"""The runs under runs/: how each stands, to watch, resume or compare."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static

from scu_tui.app.screens.compare import CompareScreen
from scu_tui.app.screens.confirm import ConfirmScreen
from scu_tui.runs import RunInfo, list_runs

if TYPE_CHECKING:
    pass


@dataclass(frozen=True)
class RunChoice:
    """A run picked in the runs list: watch it (``attach``, live or finished) or go on
    with it from its newest checkpoint (``resume``)."""

    path: Path
    action: str  # "attach" | "resume"


def _when(started: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(started)) if started else "--"


class RunsScreen(Screen[RunChoice | None]):
    """The runs under ``runs/``: name, status, steps, best validation loss, when it started,
    whether it is live. Enter opens one (a live run: attached, steerable; a finished one:
    read-only; an interrupted one: asks whether to resume it); space marks runs and ``c``
    overlays their loss curves."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "open", "Open", id="runs.open", tooltip="Open the run", priority=True),
        Binding("space", "mark", "Mark", id="runs.mark", tooltip="Mark for comparison"),
        Binding("c", "compare", "Compare", id="runs.compare", tooltip="Overlay marked runs"),
        Binding("f5", "refill", "Refresh", id="runs.refresh", tooltip="List the runs again"),
        Binding("escape,q", "close", "Back", id="runs.close", tooltip="Back to the presets"),
    ]

    def __init__(self, runs_dir: Path) -> None:
        super().__init__()
        self.runs_dir = runs_dir
        self.runs: dict[str, RunInfo] = {}
        self.marked: set[str] = set()

    def compose(self) -> ComposeResult:
        yield Static(
            f"[b]Runs under {self.runs_dir}/[/b] — Enter opens, space marks, c compares",
            id="picker-title",
        )
        yield DataTable(cursor_type="row", zebra_stripes=True, id="runs-table")
        yield Static("", id="runs-detail")
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        table.add_columns(" ", "run", "status", "steps", "best val", "started")
        self.action_refill()
        table.focus()

    def action_refill(self) -> None:
        table = self.query_one(DataTable)
        table.clear()
        self.runs = {str(info.path): info for info in list_runs(self.runs_dir)}
        for key, info in self.runs.items():
            table.add_row(*self._row(info), key=key)
        detail = self.query_one("#runs-detail", Static)
        if not self.runs:
            detail.update(f"No runs under {self.runs_dir}/ yet: train one from the presets.")

    def _row(self, info: RunInfo) -> tuple[str, ...]:
        status = f"{info.status} (live)" if info.live else info.status
        best = f"{info.best_val_loss:.4f}" if info.best_val_loss is not None else "--"
        mark = "✓" if str(info.path) in self.marked else ""
        steps = f"{info.steps}/{info.max_steps}"
        return (mark, info.name, status, steps, best, _when(info.started))

    def selected(self) -> RunInfo | None:
        table = self.query_one(DataTable)
        if table.row_count == 0:
            return None
        key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        return self.runs.get(str(key))

    @on(DataTable.RowHighlighted)
    def highlighted(self, event: DataTable.RowHighlighted) -> None:
        info = self.selected()
        if info is None:
            return
        what = (
            "live: Enter attaches (every key works)"
            if info.live
            else "interrupted: Enter offers to resume it"
            if info.resumable
            else "Enter shows it read-only"
        )
        self.query_one("#runs-detail", Static).update(
            Text(f"{info.path}\n{info.preset} · {info.model} · {info.checkpoints} checkpoints"
                 f" · {what}")
        )  # fmt: skip

    def action_open(self) -> None:
        info = self.selected()
        if info is None:
            return
        if info.resumable:
            self.app.push_screen(
                ConfirmScreen(
                    f"{info.name} stopped at step {info.steps} ({info.status}).\n"
                    "Resume it from its newest checkpoint?",
                    yes="Resume",
                    no="Just look",
                ),
                lambda yes: self.dismiss(RunChoice(info.path, "resume" if yes else "attach")),
            )
            return
        self.dismiss(RunChoice(info.path, "attach"))

    def action_mark(self) -> None:
        info = self.selected()
        if info is None:
            return
        key = str(info.path)
        self.marked ^= {key}
        table = self.query_one(DataTable)
        table.update_cell(key, table.ordered_columns[0].key, "✓" if key in self.marked else "")

    def action_compare(self) -> None:
        chosen = [self.runs[k] for k in self.runs if k in self.marked]
        if len(chosen) < 2:
            self.notify("Mark two or more runs with space first", severity="warning")
            return
        self.app.push_screen(CompareScreen(chosen))

    def action_close(self) -> None:
        self.dismiss(None)
