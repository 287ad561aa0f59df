"""Screens over the dashboard: preset picker, plots, help, and two small modals.

Each screen is keyboard-first (no mouse needed) and reads the run only through the
app's :class:`~scu_tui.app.feed.RunState`.
"""

from __future__ import annotations

import contextlib
import json
import math
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from rich.markup import escape
from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.color import Color
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen, Screen
from textual.widgets import Button, DataTable, Footer, Input, Label, Static

from scu_tui.app.feed import (
    PENDING,
    DecisionRecord,
    History,
    RunState,
    trend_word,
)
from scu_tui.app.widgets import change_text
from scu_tui.config import Settings, save_toml
from scu_tui.control.signals import trend_change
from scu_tui.errors import UserError
from scu_tui.presets import PresetInfo, list_presets, save_user_preset
from scu_tui.protocol import TAKEN, Rollback, RunFile, event_from_dict, read_events
from scu_tui.runs import RunInfo, list_runs

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


#: What the dashboard's words and numbers mean; shown under the keys in ``?``.
GLOSSARY = (
    (
        "Loss trend",
        "the S-SCU's robust (Theil–Sen) line through the window's losses: "
        "[b]falling[/b] / [b]rising[/b] when Mann–Kendall finds it significant (p < 0.05), "
        "[b]flat[/b] on a plateau, else [b]drifting[/b]. The % is how far the fitted loss "
        "moved over one control period, against where it stood a period before.",
    ),
    (
        "Diagnosis",
        "the S-SCU's one word per control period: improving, slow, plateau, "
        "too_stable, noisy, unstable, degrading, overfitting, diverging.",
    ),
    (
        "Variability",
        "the gradient norm's robust coefficient of variation, 1.4826 × MAD / "
        "median: ~0.1–0.3 is a healthy LoRA run, above 0.5 noisy, above 0.8 erratic (an LR "
        "far too high).",
    ),
    ("Spikes", "gradient norms above median + 8 MAD in the window."),
    (
        "Gradients word",
        "stable, noisy (variability > 0.5), spiky (a spike in the newest period) or non-finite.",
    ),
    (
        "Wavelet bands",
        "a Daubechies decomposition of the detrended loss: D1 the fastest "
        "step-to-step fluctuations, each next D twice as slow, A the slowest part. The bar is "
        "the band's share of the fluctuation energy; H its normalised Shannon entropy (0: one "
        "burst, 1: spread evenly).",
    ),
    (
        "Total entropy",
        "entropy of the energy shares across bands, 0–1: low means the loss "
        "moves on one time scale only (too stable), high means on all of them.",
    ),
    (
        "Sparklines",
        "the newest 120 steps (the panel title gives the span); validation "
        "shows its newest passes.",
    ),
    (
        "Outcomes",
        "applied (auto), accepted / vetoed (you), expired (unanswered), observed "
        "(observe mode), reverted (undone after its effect check), cancelled (its branch was "
        "rolled back).",
    ),
)


class HelpScreen(ModalScreen[None]):
    """Every key and what it does (built from the bindings so it never drifts), then a
    glossary of the dashboard's terms; scrolls, so nothing is cut on a small terminal."""

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
        rows.append("[b]  ↑↓[/b]  Choose a decision in the log (a pending one: a/v answer it)")
        rows.append("[b]Enter[/b]  Inspect the chosen decision")
        with VerticalScroll(classes="dialog help"):
            yield Static("[b]Keys[/b]", classes="question")
            yield Static("\n".join(rows))
            if self.notes:
                yield Static(self.notes, classes="hint")
            yield Static("[b]Glossary[/b]", classes="question glossary-title")
            yield Static(
                "\n".join(f"[b]{term}[/b]: {text}" for term, text in GLOSSARY), id="glossary"
            )
            yield Label("↑↓ scroll · Escape or ? to close", classes="hint")

    def on_mount(self) -> None:
        self.query_one(VerticalScroll).focus()

    def action_close(self) -> None:
        self.dismiss(None)


# --- the decision inspector ---------------------------------------------------------------

#: Evidence keys in words: (label, how to show the number).
EVIDENCE_WORDS: dict[str, tuple[str, str]] = {
    "relative_improvement": ("loss fall per control period", "pct"),
    "target": ("target fall per period", "pct"),
    "slope": ("loss slope per step", ".3g"),
    "mk_z": ("Mann–Kendall z", ".2f"),
    "p_value": ("trend p-value", ".3g"),
    "grad_variability": ("gradient variability (robust CV)", ".2f"),
    "spikes": ("gradient spikes in the period", "d"),
    "grad_median": ("median gradient norm", ".3g"),
    "wavelet_entropy": ("total wavelet entropy", ".2f"),
    "val_trend": ("validation change per period", "pct"),
    "gap": ("validation − training loss", ".3g"),
    "gap_trend": ("gap change per period", "pct"),
    "val_loss": ("validation loss", ".4g"),
    "train_slope": ("training loss slope per step", ".3g"),
    "nonfinite": ("non-finite values", "d"),
    "loss_ratio": ("newest losses / the ones before", ".2f"),
    "reverts": ("undoes proposal", "s"),
    "before": ("measured before", ".4g"),
    "after": ("measured after", ".4g"),
    "factor": ("factor", ".3g"),
}


def evidence_lines(evidence: dict[str, Any]) -> list[str]:
    """The evidence of a proposal as ``label: value`` lines a person can read."""
    lines = []
    for key, value in evidence.items():
        label, spec = EVIDENCE_WORDS.get(key, (key.replace("_", " "), ".4g"))
        if isinstance(value, bool) or not isinstance(value, int | float):
            shown = str(value)
        elif spec == "pct":
            shown = f"{100 * value:+.2f} %"
        elif spec == "d":
            shown = f"{value:.0f}"
        elif spec == "s":
            shown = str(value)
        else:
            shown = format(value, spec)
        lines.append(f"  {label}: {shown}")
    return lines


def effect_text(record: DecisionRecord) -> str:
    """The effect check's verdict in words, or where it stands."""
    effect = record.effect
    if effect is None:
        if record.outcome in TAKEN and record.knob != Rollback.ROLLBACK:
            return "not judged yet (it needs the steps or the evaluation that follow)"
        return "none (the change was not made)" if record.outcome != PENDING else "--"
    what = "validation loss" if effect.get("metric") == "val_loss" else "training loss"
    change = effect.get("change")
    pct = f" ({100 * change:+.1f} %)" if isinstance(change, int | float) else ""
    verdict = "worse: a revert was proposed" if effect.get("verdict") == "worse" else "kept"
    return (
        f"{what} {_fmt(effect.get('before'))} → {_fmt(effect.get('after'))}{pct} "
        f"by step {effect.get('step')}: {verdict}"
    )


def _fmt(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, int | float) else str(value)


def inspector_text(record: DecisionRecord) -> str:
    """Everything known about one decision, as markup for the inspector."""
    decided = f" at step {record.decided_step}" if record.decided_step is not None else ""
    by = f" by {record.by}" if record.by else ""
    lines = [
        f"[b]{record.id}[/b] · step {record.step} · rule {record.rule or '--'} · "
        f"diagnosis {record.diagnosis or '--'}",
        "",
        escape(record.reason) or "(proposed before this view started)",
        "",
        f"[b]Change[/b]   {change_text(record, record.lr)}",
        f"[b]Outcome[/b]  {record.outcome}{by}{decided}",
        f"[b]Effect[/b]   {effect_text(record)}",
    ]
    if record.evidence:
        lines += ["", "[b]Evidence[/b]", *evidence_lines(record.evidence)]
    a = record.analysis
    if a is not None:
        change = trend_change(a.trend, a.period)
        rate = "--" if change is None else f"{100 * change:+.1f} %"
        g = a.gradients
        lines += [
            "",
            f"[b]What the S-SCU saw[/b] (analysis at step {a.step}, window {a.window} steps)",
            f"  trend: {trend_word(a.trend)} {rate} per {a.period} steps",
            f"  gradients: median {_fmt(g.get('median'))}, variability "
            f"{_fmt(g.get('variability'))}, spikes {g.get('spikes', '--')}",
            f"  wavelet entropy: {_fmt(a.wavelet.get('total_entropy'))}",
            f"  validation: {_fmt(a.validation.get('loss'))} "
            f"(change per period {_fmt(a.validation.get('trend'))})",
            f"  why: {escape(a.why)}",
        ]
    return "\n".join(lines)


class InspectorScreen(ModalScreen[None]):
    """One decision in full: its whole reason, the evidence in words, the values before and
    after, what became of it and, once known, the effect check's verdict. Follows the run
    while open (an outcome or a verdict may arrive)."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,enter,q", "close", "Close", id="inspector.close", tooltip="Close"),
    ]

    def __init__(self, record: Callable[[], DecisionRecord | None]) -> None:
        super().__init__()
        self.record = record
        self._shown = ""

    def compose(self) -> ComposeResult:
        with VerticalScroll(classes="dialog inspector"):
            yield Static("", id="inspector-body")
            yield Label("↑↓ scroll · Escape to close", classes="hint")

    def on_mount(self) -> None:
        self.refresh_text()
        self.set_interval(0.5, self.refresh_text)
        self.query_one(VerticalScroll).focus()

    def refresh_text(self) -> None:
        record = self.record()
        text = inspector_text(record) if record is not None else "This decision left the log."
        if text != self._shown:
            self._shown = text
            self.query_one("#inspector-body", Static).update(text)

    @property
    def text(self) -> str:
        """What the inspector shows, as plain text."""
        return Text.from_markup(self._shown).plain

    def action_close(self) -> None:
        self.dismiss(None)


# --- preset picker ------------------------------------------------------------------------


@dataclass(frozen=True)
class RunChoice:
    """A run picked in the runs list: watch it (``attach``, live or finished) or go on
    with it from its newest checkpoint (``resume``)."""

    path: Path
    action: str  # "attach" | "resume"


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


# --- runs -----------------------------------------------------------------------------------


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


def run_history(path: Path) -> RunState:
    """A finished or live run's surviving history, folded from its events file."""
    state = RunState()
    try:
        events = [event_from_dict(data) for data in read_events(path / RunFile.EVENTS)]
    except UserError:
        return state
    state.load_history(e for e in events if e is not None)
    return state


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


# --- what the adapters answer -----------------------------------------------------------------


def samples_text(state: RunState) -> str:
    """The sample prompts and what the adapters answered at each evaluation, newest first."""
    if not state.samples:
        return (
            "No samples yet. Turn them on with --set training.samples=2: at each evaluation "
            "the adapters answer that many validation prompts."
        )
    lines: list[str] = []
    for event in reversed(state.samples):
        lines.append(f"[b]step {event.step}[/b]")
        for sample in event.samples:
            answer = " ⏎ ".join(str(sample.get("answer") or "(nothing)").splitlines())
            lines.append(f"  {escape(str(sample.get('prompt')))}")
            lines.append(f"    → {escape(answer)}")
            lines.append(f"    [dim]reference: {escape(str(sample.get('reference')))}[/dim]")
    return "\n".join(lines)


def comparison_text(state: RunState) -> str:
    """Base model and adapters side by side, once the run has compared them."""
    c = state.comparison
    if c is None:
        return (
            "The comparison comes when the run completes (training.compare_at_end): the base "
            "model and the best adapters on the test split. For any run: scu-tui compare DIR."
        )
    base_ppl, tuned_ppl = math.exp(min(c.base_loss, 50.0)), math.exp(min(c.tuned_loss, 50.0))
    lines = [
        f"[b]{c.split} split, {c.rows} rows[/b] — adapters {escape(c.adapters)}",
        f"loss        base {c.base_loss:.4f}   adapters {c.tuned_loss:.4f}",
        f"perplexity  base {base_ppl:.2f}   adapters {tuned_ppl:.2f}",
        f"{len(c.examples)} sampled prompts: [b]{c.fixed} fixed[/b], [b]{c.broke} broke[/b]",
        "",
    ]
    for e in c.examples:
        verdict = escape(f"[{e.get('verdict')}]")
        lines.append(f"[b]{verdict}[/b] {escape(str(e.get('prompt')))}")
        lines.append(f"  reference  {escape(str(e.get('reference')))}")
        for who, key in (("base", "base_answer"), ("adapters", "tuned_answer")):
            answer = " ⏎ ".join(str(e.get(key) or "(nothing)").splitlines()[:2])
            lines.append(f"  {who:<9}  {escape(answer)}")
    run = shlex.quote(state.output_dir) if state.output_dir else "DIR"
    lines += ["", f"As a model of its own, the adapters fused in: scu-tui fuse {escape(run)}"]
    return "\n".join(lines)


class TextScreen(ModalScreen[None]):
    """A scrolling page of text that follows the run while open (samples, comparison)."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,q", "close", "Close", id="text.close", tooltip="Close"),
    ]

    def __init__(self, title: str, text: Callable[[], str]) -> None:
        super().__init__()
        self.title_text = title
        self.make_text = text
        self._shown = ""

    def compose(self) -> ComposeResult:
        with VerticalScroll(classes="dialog inspector"):
            yield Static(f"[b]{self.title_text}[/b]", classes="question")
            yield Static("", id="text-body")
            yield Label("↑↓ scroll · Escape to close", classes="hint")

    def on_mount(self) -> None:
        self.refresh_text()
        self.set_interval(1.0, self.refresh_text)
        self.query_one(VerticalScroll).focus()

    def refresh_text(self) -> None:
        text = self.make_text()
        if text != self._shown:
            self._shown = text
            self.query_one("#text-body", Static).update(text)

    @property
    def text(self) -> str:
        return Text.from_markup(self._shown).plain

    def action_close(self) -> None:
        self.dismiss(None)
