"""The preset picker: choose a preset to train (or copy one), or a run to open."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static

from scu_tui.app.screens.confirm import ConfirmScreen
from scu_tui.app.screens.name import NameScreen
from scu_tui.app.screens.runs import RunChoice, RunsScreen
from scu_tui.config import Settings, save_toml
from scu_tui.errors import UserError
from scu_tui.presets import PresetInfo, list_presets, save_user_preset

if TYPE_CHECKING:
    pass


class PresetPicker(Screen["Settings | RunChoice"]):
    """Shipped and user presets with their key settings; Enter trains with the selected one.

    ``load`` turns a preset name into settings; the CLI passes one that also applies the
    command line's overrides (``--max-steps``, ``--set`` ...), so what is listed is what
    would run.
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding(
            "enter",
            "start",
            "Train",
            id="picker.start",
            tooltip="Train with this preset",
            priority=True,  # before the table's own Enter, and shown in the footer
        ),
        Binding("n", "save_as", "Save as", id="picker.save_as", tooltip="Copy under a new name"),
        Binding("r", "runs", "Runs", id="picker.runs", tooltip="Runs under runs/: open, compare"),
        Binding(
            "c", "check", "Check", id="picker.check", tooltip="Peak memory and ETA: scu-tui check"
        ),
        Binding("escape,q", "app.quit", "Quit", id="picker.quit", tooltip="Leave scu-tui"),
    ]

    def __init__(self, load: Callable[[str], Settings], runs_dir: Path = Path("runs")) -> None:
        super().__init__()
        self.load = load
        self.runs_dir = runs_dir
        self.loaded: dict[str, Settings | str] = {}  # name -> settings, or why not
        self.checking: str | None = None  # the preset a background check is measuring
        self._check_process: subprocess.Popen[str] | None = None

    def compose(self) -> ComposeResult:
        yield Static(
            "[b]Choose a preset[/b] — Enter trains, n saves a copy, r lists your runs",
            id="picker-title",
        )
        yield DataTable(cursor_type="row", zebra_stripes=True, id="preset-table")
        yield Static("", id="preset-detail")
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        table.add_columns("preset", "from", "model", "steps", "lr", "rank")
        self.refill()
        table.focus()

    def refill(self, select: str | None = None) -> None:
        """(Re)list the presets, keeping or moving the cursor."""
        table = self.query_one(DataTable)
        table.clear()
        self.loaded.clear()
        presets = list_presets()
        for info in presets:
            table.add_row(*self._row(info), key=info.name)
        names = [p.name for p in presets]
        if names:
            target = select if select in names else ("demo" if "demo" in names else names[0])
            table.move_cursor(row=names.index(target))
        self._describe(table.cursor_row)

    def _row(self, info: PresetInfo) -> tuple[str, ...]:
        try:
            settings = self.load(info.name)
        except UserError as exc:
            self.loaded[info.name] = str(exc)
            return (info.name, info.origin, "(invalid)", "", "", "")
        self.loaded[info.name] = settings
        t = settings.training
        return (
            info.name,
            info.origin,
            settings.model.path,
            str(t.max_steps),
            f"{t.learning_rate:g}",
            str(settings.lora.rank),
        )

    def selected(self) -> tuple[str, Settings | str] | None:
        table = self.query_one(DataTable)
        if table.row_count == 0:
            return None
        key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        name = str(key)
        return name, self.loaded.get(name, "not loaded")

    @on(DataTable.RowHighlighted)
    def highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._describe(event.cursor_row)

    def _describe(self, row: int) -> None:
        detail = self.query_one("#preset-detail", Static)
        choice = self.selected()
        if choice is None:
            detail.update("No presets found.")
            return
        name, settings = choice
        if isinstance(settings, str):
            detail.update(Text(f"{name}: {settings}"))
            return
        t, s = settings.training, settings.scu
        detail.update(
            Text(
                f"{settings.description or name}\n"
                f"data {settings.data.path} ({settings.data.format}, "
                f"max {settings.data.max_seq_length} tokens)\n"
                f"LoRA r{settings.lora.rank} α{settings.lora.alpha:g} "
                f"dropout {settings.lora.dropout:g} · batch {t.batch_size}×"
                f"{t.gradient_accumulation_steps} · {t.schedule} lr {t.learning_rate:g}\n"
                f"S-SCU {'on, ' + s.mode if s.enabled else 'off'} every "
                f"{s.control_frequency} steps · eval every {t.eval_every} · "
                f"save every {t.save_every}\n"
                f"{self._check_line(name, settings)}"
            )
        )

    # --- scu-tui check for the highlighted preset ------------------------------------------

    def _check_line(self, name: str, settings: Settings) -> str:
        """The last check of exactly these settings (the CLI's overrides included)."""
        from scu_tui.check.cache import recall, summary_line

        if self.checking == name:
            return "check: measuring memory and time…"
        summary = recall(settings)
        return summary_line(summary) if summary else "check: c estimates peak memory and ETA"

    def action_check(self) -> None:
        """Run ``scu-tui check`` on the highlighted preset in the background."""
        choice = self.selected()
        if choice is None or isinstance(choice[1], str):
            self.notify("Pick a valid preset to check", severity="warning")
            return
        if self.checking is not None:
            self.notify(f"Still checking {self.checking}", severity="warning")
            return
        name, settings = choice[0], choice[1]
        self.checking = name
        self._describe(self.query_one(DataTable).cursor_row)
        work = partial(self._run_check, name, settings)
        self.run_worker(work, thread=True, group="check", exit_on_error=False)

    def _run_check(self, name: str, settings: Settings) -> None:
        """In a worker thread: the check in a process of its own, so its memory peak and
        its MLX state stay out of the app (which may train next)."""
        from scu_tui.check.cache import record

        problem = None
        with tempfile.TemporaryDirectory(prefix="scu-tui-check-") as folder:
            preset = Path(folder) / f"{name}.toml"
            save_toml(settings, preset)
            process = subprocess.Popen(
                [sys.executable, "-m", "scu_tui", "check", "--preset", str(preset), "--json"],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                stdin=subprocess.DEVNULL,
                text=True,
            )
            self._check_process = process
            out, err = process.communicate()
        self._check_process = None
        if process.returncode == 0:
            try:
                record(settings, json.loads(out))
            except ValueError:
                problem = "the check's answer was not JSON"
        elif process.returncode > 0:
            lines = err.strip().splitlines()
            problem = lines[-1] if lines else f"exit code {process.returncode}"
        with contextlib.suppress(RuntimeError):  # the app may be gone
            self.app.call_from_thread(self._check_done, name, problem)

    def _check_done(self, name: str, problem: str | None) -> None:
        self.checking = None
        if problem:
            self.notify(problem, title=f"Check of {name} failed", severity="error")
        self._describe(self.query_one(DataTable).cursor_row)

    def _stop_check(self) -> None:
        process = self._check_process
        if process is not None and process.poll() is None:
            process.terminate()

    def on_unmount(self) -> None:
        self._stop_check()

    def action_start(self) -> None:
        choice = self.selected()
        if choice is None:
            return
        name, settings = choice
        if isinstance(settings, str):
            self.notify(settings, title=f"Cannot use {name}", severity="error")
            return
        self._stop_check()  # training needs the machine
        self.dismiss(settings)

    def action_runs(self) -> None:
        """The runs list; a run chosen there ends the picker with it."""

        def chosen(choice: RunChoice | None) -> None:
            if choice is not None:
                self.dismiss(choice)

        self.app.push_screen(RunsScreen(self.runs_dir), chosen)

    def action_save_as(self) -> None:
        choice = self.selected()
        if choice is None or isinstance(choice[1], str):
            self.notify("Pick a valid preset to copy", severity="warning")
            return
        name, settings = choice
        assert isinstance(settings, Settings)
        self.app.push_screen(
            NameScreen(f"Save '{name}' as a new preset named:", f"{name}-copy"),
            lambda new: self._save(settings, new),
        )

    def _save(self, settings: Settings, new_name: str | None) -> None:
        if not new_name:
            return
        existing = {p.name: p for p in list_presets()}
        if new_name in existing and existing[new_name].origin == "user":
            self.app.push_screen(
                ConfirmScreen(f"A preset called '{new_name}' exists. Overwrite it?"),
                lambda yes: self._write(settings, new_name) if yes else None,
            )
            return
        self._write(settings, new_name)

    def _write(self, settings: Settings, new_name: str) -> None:
        try:
            path = save_user_preset(settings, new_name)
        except (UserError, OSError) as exc:
            self.notify(str(exc), title="Not saved", severity="error")
            return
        self.notify(f"Saved to {path}", title=f"Preset {new_name}")
        self.refill(select=new_name)
