"""Screens over the dashboard: preset picker, plots, help, and two small modals.

Each screen is keyboard-first (no mouse needed) and reads the run only through the
app's :class:`~scu_tui.app.feed.RunState`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.color import Color
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen, Screen
from textual.widgets import Button, DataTable, Footer, Input, Label, Static

from scu_tui.app.feed import History, RunState
from scu_tui.config import Settings
from scu_tui.errors import UserError
from scu_tui.presets import PresetInfo, list_presets, save_user_preset

if TYPE_CHECKING:
    from textual.events import Resize


# --- small modals -------------------------------------------------------------------------


class ConfirmScreen(ModalScreen[bool]):
    """Yes or no, from the keyboard (y / n) or the buttons; the one confirm dialog."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("y", "answer(True)", "Yes", id="confirm.yes", tooltip="Confirm"),
        Binding("n,escape", "answer(False)", "No", id="confirm.no", tooltip="Cancel"),
    ]

    def __init__(self, question: str, yes: str = "Yes", no: str = "No") -> None:
        super().__init__()
        self.question, self.yes, self.no = question, yes, no

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Static(self.question, classes="question")
            with Horizontal(classes="buttons"):
                yield Button(f"{self.yes} (y)", variant="warning", id="yes")
                yield Button(f"{self.no} (n)", variant="primary", id="no")

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()

    @on(Button.Pressed)
    def pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_answer(self, answer: bool) -> None:
        self.dismiss(answer)


class NameScreen(ModalScreen[str | None]):
    """Ask for a name (a new preset's); Enter confirms, Escape cancels."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "cancel", "Cancel", id="name.cancel", tooltip="Cancel")
    ]

    def __init__(self, prompt: str, value: str = "") -> None:
        super().__init__()
        self.prompt, self.value = prompt, value

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(self.prompt, classes="question")
            yield Input(value=self.value, placeholder="name", id="name-input")
            yield Label("Enter to save, Escape to cancel", classes="hint")

    @on(Input.Submitted)
    def submitted(self, event: Input.Submitted) -> None:
        self.dismiss(event.value.strip() or None)

    def action_cancel(self) -> None:
        self.dismiss(None)


# --- help ---------------------------------------------------------------------------------


class HelpScreen(ModalScreen[None]):
    """Every key and what it does, built from the bindings so it never drifts."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,question_mark,q", "close", "Close", id="help.close", tooltip="Close"),
    ]

    def __init__(self, bindings: Sequence[Binding], notes: str = "") -> None:
        super().__init__()
        self.bindings = bindings
        self.notes = notes

    def compose(self) -> ComposeResult:
        rows = [
            f"[b]{b.key_display or b.key:>5}[/b]  {b.tooltip or b.description}"
            for b in self.bindings
        ]
        with Vertical(classes="dialog help"):
            yield Static("[b]Keys[/b]", classes="question")
            yield Static("\n".join(rows))
            if self.notes:
                yield Static(self.notes, classes="hint")
            yield Label("Escape or ? to close", classes="hint")

    def action_close(self) -> None:
        self.dismiss(None)


# --- preset picker ------------------------------------------------------------------------


class PresetPicker(Screen[Settings]):
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
        Binding("escape,q", "app.quit", "Quit", id="picker.quit", tooltip="Leave scu-tui"),
    ]

    def __init__(self, load: Callable[[str], Settings]) -> None:
        super().__init__()
        self.load = load
        self.loaded: dict[str, Settings | str] = {}  # name -> settings, or why not

    def compose(self) -> ComposeResult:
        yield Static("[b]Choose a preset[/b] — Enter trains, n saves a copy", id="picker-title")
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
                f"save every {t.save_every}"
            )
        )

    def action_start(self) -> None:
        choice = self.selected()
        if choice is None:
            return
        name, settings = choice
        if isinstance(settings, str):
            self.notify(settings, title=f"Cannot use {name}", severity="error")
            return
        self.dismiss(settings)

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


# --- plots --------------------------------------------------------------------------------

#: Most points handed to plotext per curve: more than the columns only costs time.
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


def render_plots(state: RunState, width: int, height: int, colors: dict[str, RGB]) -> str:
    """Loss (train + val), learning rate and gradient norm, stacked; text with ANSI colours.

    ``colors`` maps "train", "val", "lr" and "grad" to the active theme's colours, so the
    curves follow the theme; everything else is drawn in the terminal's own colours.
    """
    import plotext as plt

    fig: Any = plt.figure
    fig.clear()
    fig.subplots(3, 1)
    fig.plot_size(max(width, 30), max(height, 15))
    fig.theme("colorless")
    curves = [
        ("loss: train ⣀⠤⠒ · val •", [(state.loss_history, "train"), (state.val_history, "val")]),
        ("learning rate", [(state.lr_history, "lr")]),
        ("gradient norm", [(state.grad_history, "grad")]),
    ]
    for row, (title, series) in enumerate(curves, start=1):
        sub = fig.subplot(row, 1)
        sub.title(title)
        values_seen: list[float] = []
        for history, name in series:
            xs, ys = thin(history)
            if not xs:
                continue
            values_seen += ys
            symbol = "•" if name == "val" else "braille"
            signal = sub.signal(xs, ys, marker=plt.marker(symbol, colors.get(name)))
            if len(xs) > 1 and name != "val":
                signal.lines()
            sub.draw(signal)
        if values_seen and max(values_seen) == min(values_seen):  # a flat line needs a range
            v = values_seen[0]
            pad = abs(v) * 0.1 or 1.0
            sub.ruler("y").lim(v - pad, v + pad)
    return str(fig.build().string())


class PlotsScreen(Screen[None]):
    """Full-size curves of the run so far, redrawn while they change."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,g,q", "close", "Back", id="plots.close", tooltip="Back to the dashboard"),
    ]

    def __init__(self, state: Callable[[], RunState]) -> None:
        super().__init__()
        self.state = state
        self._drawn: tuple[int, int, int, str] = (-1, 0, 0, "")

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
        key = (state.version, width, height, self.app.theme)
        if key == self._drawn or width < 10 or height < 5:
            return
        self._drawn = key
        if not len(state.loss_history):
            plot.update("No steps yet: the curves appear once training runs.")
            return
        text = render_plots(state, width - 2, height, self.theme_colors())
        plot.update(Text.from_ansi(text, no_wrap=True))

    def theme_colors(self) -> dict[str, RGB]:
        """The curves' colours, taken from the active theme."""
        theme = self.app.current_theme
        picks = {
            "train": theme.primary,
            "val": theme.accent or theme.primary,
            "lr": theme.secondary or theme.primary,
            "grad": theme.warning or theme.primary,
        }
        return {name: Color.parse(value).rgb for name, value in picks.items()}

    def action_close(self) -> None:
        self.dismiss(None)
