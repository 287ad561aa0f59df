"""The dashboard's panels. Each one draws from a :class:`RunState` when the app says so.

Widgets never see the run: the app folds events into plain numbers (and the S-SCU's own
analysis events) and calls ``show(state)`` on each panel once per refresh tick, only when
something changed. No panel computes a signal: what the S-SCU saw is what they show.
Colours come from the theme through TCSS classes, never from Python.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from fractions import Fraction
from typing import ClassVar

from rich.color import Color as RichColor
from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.geometry import Region
from textual.strip import Strip
from textual.widgets import Label, OptionList, ProgressBar, Sparkline, Static
from textual.widgets.option_list import Option, OptionDoesNotExist

from scu_tui.app.feed import (
    PENDING,
    DecisionRecord,
    HoldRecord,
    LogRecord,
    RunState,
    gradient_status,
    trend_words,
)
from scu_tui.protocol import (
    AnalysisEvent,
    Decider,
    Knob,
    ProposalEvent,
    Rollback,
    RunStatus,
)
from scu_tui.sinks import format_duration

SWAP_SHOWN_GB = 0.01  # swap the status line shows as SWAPPING


def mean(values: Sequence[float]) -> float:
    """Sparkline buckets show the mean loss: one noisy batch should not hide the trend."""
    return sum(values) / len(values) if values else 0.0


def num(value: float, spec: str = ".3f") -> str:
    """A number for a panel: ``--`` until there is one."""
    return format(value, spec) if math.isfinite(value) else "--"


def knob_value(value: float) -> str:
    """Learning rates need exponents, the other knobs do not."""
    if not math.isfinite(value):
        return "--"
    if value == 0:
        return "0"
    if abs(value) < 1e-2:
        return f"{value:.2e}"
    return f"{value:.3g}"


class Readout(Label):
    """A label that repaints only when its text changes, and re-lays out only if asked.

    Why: a plain ``update`` re-lays out the whole screen, which at several refreshes a
    second costs the training thread its share of the GIL for nothing.
    """

    def __init__(
        self,
        text: str = "",
        *,
        relayout: bool = False,
        id: str | None = None,
        classes: str | None = None,
    ) -> None:
        super().__init__(text, id=id, classes=classes)
        self._shown: str | Text = text
        self.relayout = relayout

    def show(self, text: str | Text, kind: str | None = None) -> None:
        """Show ``text``; ``kind`` replaces the CSS classes (the colour) when given."""
        if kind is not None and set(self.classes) != {kind}:
            self.set_classes(kind)
        if text == self._shown:
            return
        self._shown = text
        self.update(text, layout=self.relayout)


class Spark(Sparkline):
    """Textual's sparkline, cell for cell, drawn a cheaper way.

    Why: the stock widget builds one styled segment per cell through Rich and recomputes
    every bucket's summary once per row; at 200x60 a chart is about 1,800 cells, and that
    redraw took more of the app's main thread than everything else together, competing
    with training for the CPU. Here each column's summary, bar and colour are computed
    once, a row's cells of one look are a single segment, and the rows are kept until the
    data, the size or the colours change.
    """

    BARS = "▁▂▃▄▅▆▇█"

    def __init__(
        self,
        data: Sequence[float] | None = None,
        *,
        summary_function: Callable[[Sequence[float]], float] | None = None,
        id: str | None = None,
        classes: str | None = None,
    ) -> None:
        super().__init__(data, summary_function=summary_function, id=id, classes=classes)
        self._rows: list[Strip] = []
        self._rows_key: tuple[object, ...] | None = None

    def render_lines(self, crop: Region) -> list[Strip]:
        """Rebuild the rows when what they show changed, then let Textual style them."""
        _, base = self.background_colors
        low = base + self.get_component_styles("sparkline--min-color").color
        high = base + self.get_component_styles("sparkline--max-color").color
        style = self.visual_style.rich_style
        data = tuple(self.data or ())
        key = (data, self.size, low, high, style, self.summary_function)
        if key != self._rows_key:
            self._rows_key = key
            self._rows = spark_rows(
                data,
                self.size.width,
                self.size.height,
                low.rich_color,
                high.rich_color,
                style,
                self.summary_function,
            )
        return super().render_lines(crop)

    def render_line(self, y: int) -> Strip:
        return self._rows[y] if 0 <= y < len(self._rows) else Strip.blank(self.size.width)


def spark_rows(
    data: Sequence[float],
    width: int,
    height: int,
    low: RichColor,
    high: RichColor,
    base: Style,
    summary: Callable[[Sequence[float]], float],
) -> list[Strip]:
    """The rows of ``textual.renderables.sparkline.Sparkline`` over ``base`` (the same
    buckets, bars and colours), one segment per run of equal cells."""
    height = max(height, 1)
    if width <= 0:
        return [Strip([]) for _ in range(height)]
    if len(data) < 2:
        if not data:  # blank rows, then a floor of the lowest bar
            floor = Segment("▁" * width, base + Style.from_color(low))
            return [Strip([]) for _ in range(height - 1)] + [Strip([floor], width)]
        full = Segment("█" * width, base + Style.from_color(high))
        return [Strip([full], width) for _ in range(height)]
    minimum, maximum = min(data), max(data)
    extent = maximum - minimum or 1
    buckets = list(spark_buckets(data, width))
    levels = len(Spark.BARS) * height - 1
    styles: dict[RichColor, Style] = {}
    columns: list[tuple[int, Style]] = []  # (bar index, style) per column
    index, step = 0.0, len(buckets) / width
    for _ in range(width):
        ratio = (summary(buckets[int(index)]) - minimum) / extent
        color = blend(low, high, ratio)
        cell_style = styles.get(color)
        if cell_style is None:
            cell_style = styles[color] = base + Style.from_color(color)
        columns.append((int(ratio * levels), cell_style))
        index += step
    rows: list[Strip] = []
    per_row = len(Spark.BARS)
    for row in reversed(range(height)):
        bottom, top = row * per_row, (row + 1) * per_row
        segments: list[Segment] = []
        text, run_style = "", base
        for bar_index, cell_style in columns:
            if bar_index < bottom:
                char, cell = " ", base
            else:
                char = "█" if bar_index >= top else Spark.BARS[bar_index % per_row]
                cell = cell_style
            if cell is run_style:
                text += char
                continue
            if text:
                segments.append(Segment(text, run_style))
            text, run_style = char, cell
        segments.append(Segment(text, run_style))
        rows.append(Strip(segments, width))
    return rows


def blend(low: RichColor, high: RichColor, ratio: float) -> RichColor:
    """The colour ``ratio`` of the way from ``low`` to ``high``, as textual's sparkline
    blends it (whole RGB steps, rounded down)."""
    if low.triplet is None or high.triplet is None:
        return high
    (r1, g1, b1), (r2, g2, b2) = low.triplet, high.triplet
    return RichColor.from_rgb(
        r1 + (r2 - r1) * ratio, g1 + (g2 - g1) * ratio, b1 + (b2 - b1) * ratio
    )


def spark_buckets(data: Sequence[float], count: int) -> list[Sequence[float]]:
    """``data`` in ``count`` consecutive buckets, the empty ones left out, as textual's
    sparkline partitions it."""
    size = Fraction(len(data), count)
    buckets = []
    for number in range(count):
        part = data[int(size * number) : int(size * (number + 1))]
        if part:
            buckets.append(part)
    return buckets


class StatusPanel(Vertical):
    """Preset, model, progress, throughput, knobs, mode and the run's state word."""

    def compose(self) -> ComposeResult:
        with Horizontal(id="status-top"):
            yield Readout("", relayout=True, id="status-title")
            yield ProgressBar(total=1, show_eta=False, id="progress")
            yield Readout("STARTING", relayout=True, id="status-word", classes="starting")
        yield Readout("", id="status-numbers")
        yield Readout("", id="status-knobs")

    def show_settings(self, preset: str, model: str, max_steps: int) -> None:
        """What is known before the run starts: the settings."""
        self.query_one("#status-title", Readout).show(f"{preset} · {model}")
        self.query_one("#progress", ProgressBar).update(total=max_steps, progress=0)
        self.query_one("#status-numbers", Readout).show(f"step 0/{max_steps}  loading model…")

    def show(self, state: RunState, transient: str = "") -> None:
        """Redraw from the state; ``transient`` is a key's effect not yet confirmed by the run."""
        title = f"{state.preset} · {state.model}" if state.preset else None
        if title:
            self.query_one("#status-title", Readout).show(title)
        if state.max_steps:
            self.query_one("#progress", ProgressBar).update(
                total=state.max_steps, progress=state.step
            )
        failed = state.done is not None and state.done.status == RunStatus.FAILED
        self.set_class(failed or state.lost, "-failed")
        numbers = status_numbers(state)
        knobs = status_knobs(state)
        self.query_one("#status-numbers", Readout).show(numbers)
        self.query_one("#status-knobs", Readout).show(knobs)
        self.show_word(state, transient)

    def show_word(self, state: RunState, transient: str = "") -> None:
        """The one word that says what the run is doing; also called straight from keys."""
        word, kind = state_word(state, transient)
        self.query_one("#status-word", Readout).show(word, kind)


def status_knobs(state: RunState) -> str:
    """The status panel's line of knobs, the S-SCU's mode and, distributed, the ranks."""
    k = state.knobs
    accumulation = int(k.get("accumulation", 0))
    batch = f"{state.batch_size}×{accumulation}" if state.batch_size else "--"
    knobs = (
        f"lr {knob_value(k.get('lr', state.lr))}  "
        f"wd {knob_value(k.get('weight_decay', math.nan))}  "
        f"dropout {knob_value(k.get('dropout', math.nan))}  "
        f"batch {batch}  mode {state.mode or '--'}"
    )
    if state.world_size > 1:
        knobs += f"  ×{state.world_size} ranks"
    return knobs


def status_numbers(state: RunState) -> str:
    """The status panel's line of numbers: progress, ETA (or why there is none), speed."""
    if state.done is not None and state.done.status == RunStatus.FAILED:
        return f"failed at step {state.step}: {state.message or 'see the notification'}"
    if state.lost:  # no ETA: nothing is running any more
        return f"lost at step {state.step}: {state.message or 'the run is gone'}"
    eta = "paused" if state.paused else format_duration(state.eta)
    numbers = (
        f"step {state.step}/{state.max_steps}  ETA {eta}  "
        f"{num(state.tokens_per_second, ',.0f')} tok/s  "
        f"peak {num(state.peak_memory_gb, '.2f')} GB"
    )
    if math.isfinite(state.rss_gb):
        numbers += f"  {state.rss_label} {state.rss_gb:.2f} GB"
    numbers += swap_note(state)
    if state.rollbacks:
        numbers += f"  rollbacks {state.rollbacks}"
    return numbers


def swap_note(state: RunState) -> str:
    """``SWAPPING …`` while the run has pages in swap (Linux), or, where the system cannot
    say that (macOS), while the machine's swap has grown since the run started."""
    if state.swap_gb >= SWAP_SHOWN_GB:
        return f"  SWAPPING {state.swap_gb:.2f} GB"
    grown = state.system_swap_gb - state.system_swap_start_gb
    if math.isnan(state.swap_gb) and grown >= SWAP_SHOWN_GB:
        return f"  machine SWAPPING +{grown:.2f} GB"
    return ""


def state_word(state: RunState, transient: str) -> tuple[str, str]:
    """``(text, css class)`` for the state word: a pending key effect wins until confirmed."""
    if state.done is not None:
        if state.done.status == RunStatus.FAILED:
            return "FAILED", "failed"
        if state.lost:
            return "LOST", "failed"
        return state.done.status.upper(), "done"
    if transient:
        return transient, "transient"
    if state.paused:
        return "PAUSED", "paused"
    if state.status == "starting":
        return "STARTING", "starting"
    return "RUNNING", "running"


class ProposalBanner(Static):
    """The proposal ``a``/``v`` will answer, named by its id, until it is answered."""

    def show(self, state: RunState, target: ProposalEvent | None, answering: str = "") -> None:
        self.set_class(target is not None, "visible")
        if target is None:
            return
        more = len(state.pending) - 1
        tail = f"  +{more} more: ↑↓ in the log" if more > 0 else ""
        keys = answering or f"[b]a[/b]/[b]v[/b] accept/veto {target.id}"
        self.update(
            f"[b]{target.id}[/b] at step {target.step}: {target.reason}\n"
            f"[b]{change_text(target, proposed_lr(state, target))}[/b]   {keys}{tail}"
        )


def proposed_lr(state: RunState, proposal: ProposalEvent) -> float:
    """The learning rate when ``proposal`` was made (steady while it waits)."""
    record = state.record(proposal.id)
    return record.lr if record is not None and math.isfinite(record.lr) else state.lr


def change_text(p: ProposalEvent | DecisionRecord, lr: float = math.nan) -> str:
    """A proposal's change in absolute values: ``LR 2.0e-04 → 3.0e-04 (x1.5)``.

    ``lr`` is the effective learning rate when it was proposed; the LR is steered through
    a multiplier on the base schedule, so its absolute values come from that.
    """
    if p.knob in (Knob.LR_MULTIPLIER, Rollback.ROLLBACK) and math.isfinite(lr) and p.before > 0:
        base = lr / p.before
        factor = p.after / p.before
        what = "rollback, LR" if p.knob == Rollback.ROLLBACK else "LR"
        return f"{what} {base * p.before:.2e} → {base * p.after:.2e} (x{factor:.3g})"
    if p.knob == Knob.ACCUMULATION:
        return f"accumulation {p.before:.0f} → {p.after:.0f}"
    if p.knob in (Knob.WEIGHT_DECAY, Knob.DROPOUT):
        return f"{p.knob.replace('_', ' ')} {p.before:.3g} → {p.after:.3g}"
    return p.action


class LossPanel(Vertical):
    """Train and validation loss: sparklines (their span in the title), current, best, and
    the trend as the S-SCU measured it."""

    def compose(self) -> ComposeResult:
        with Horizontal(classes="spark-row", id="loss-row"):
            yield Label("train", classes="spark-label")
            yield Spark([], summary_function=mean, id="loss-spark")
        with Horizontal(classes="spark-row", id="val-row"):
            yield Label("val", classes="spark-label")
            yield Spark([], summary_function=mean, id="val-spark")
        yield Readout("", id="loss-text")

    def on_mount(self) -> None:
        self.border_title = "Loss"

    def show(self, state: RunState) -> None:
        self.query_one("#loss-spark", Spark).data = state.recent(state.losses)
        self.query_one("#val-spark", Spark).data = state.recent(state.val_losses)
        first, last = state.span(state.losses)
        self.border_title = f"Loss · steps {first}-{last}" if last else "Loss"
        self.query_one("#loss-text", Readout).show(
            f"now {num(state.loss)}  best {num(state.best_train_loss)}\n"
            f"val {num(state.val_loss)}  best {num(state.best_val_loss)}\n"
            f"{trend_words(state.analysis)}"
        )


class GradientPanel(Vertical):
    """Gradient-norm sparkline, and the S-SCU's robust variability, spikes and verdict."""

    def compose(self) -> ComposeResult:
        yield Spark([], summary_function=max, id="grad-spark")
        yield Readout("", id="grad-text")
        yield Readout("", id="grad-status")

    def on_mount(self) -> None:
        self.border_title = "Gradients"

    def show(self, state: RunState) -> None:
        self.query_one("#grad-spark", Spark).data = state.recent(state.grad_norms)
        first, last = state.span(state.grad_norms)
        self.border_title = f"Gradients · {first}-{last}" if last else "Gradients"
        g = state.analysis.gradients if state.analysis is not None else {}
        self.query_one("#grad-text", Readout).show(
            f"norm {num(state.grad_norm)}  med {num(_number(g.get('median')))}\n"
            f"variability {num(_number(g.get('variability')), '.2f')}  "
            f"spikes {g.get('spikes', '--')}"
        )
        status = gradient_status(state.analysis)
        self.query_one("#grad-status", Readout).show(status, status)


def _number(value: object) -> float:
    """A float from an analysis field (non-finite values travel as strings)."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return math.nan
    try:
        return float(value)
    except ValueError:
        return math.nan


class EntropyPanel(Static):
    """One bar per wavelet band (its share of the loss-fluctuation energy) plus the total,
    as the S-SCU's newest analysis has them.

    Bars are styled through component classes so the theme's TCSS colours them.
    """

    COMPONENT_CLASSES: ClassVar[set[str]] = {"entropy--bar", "entropy--total"}

    def on_mount(self) -> None:
        self.border_title = "Wavelet entropy"
        self.border_subtitle = "energy · H"
        self._analysis: AnalysisEvent | None = None

    def show(self, analysis: AnalysisEvent | None) -> None:
        if analysis is not self._analysis:
            self._analysis = analysis
            self.border_title = (
                f"Wavelet entropy @{analysis.step}" if analysis else "Wavelet entropy"
            )
            self.refresh()

    def render(self) -> Text:
        analysis: AnalysisEvent | None = getattr(self, "_analysis", None)
        wavelet = analysis.wavelet if analysis is not None else {}
        levels = wavelet.get("levels", 0)
        shares, entropies = wavelet.get("energy_shares", []), wavelet.get("level_entropy", [])
        if not isinstance(levels, int) or levels == 0 or len(shares) != levels + 1:
            return Text("waiting for the S-SCU's first analysis…", style="dim")
        width = max(self.content_size.width, 12)
        bar_width = max(width - 15, 3)  # label 5, " 100%" 5, " 0.00" 5
        labels = [f"D{i + 1}" for i in range(levels)] + [f"A{levels}"]
        band_style = self.get_component_rich_style("entropy--bar")
        total_style = self.get_component_rich_style("entropy--total")
        lines = Text()
        for label, share, h in zip(labels, shares, entropies, strict=True):
            lines.append(f"{label:<5}")
            lines.append(bar(_number(share), bar_width), style=band_style)
            lines.append(f" {_number(share):>4.0%} {_number(h):.2f}\n")
        total = _number(wavelet.get("total_entropy"))
        lines.append("total", style="bold")
        lines.append(bar(total, bar_width), style=total_style)
        lines.append(f"      {total:.2f}", style="bold")
        return lines


def bar(fraction: float, width: int) -> str:
    """A horizontal bar of ``width`` cells, drawn in eighths of a cell."""
    fraction = min(max(fraction if math.isfinite(fraction) else 0.0, 0.0), 1.0)
    eighths = round(fraction * width * 8)
    full, part = divmod(eighths, 8)
    body = "█" * full + ("▏▎▍▌▋▊▉"[part - 1] if part else "")
    return body.ljust(width)


class DecisionLog(OptionList):
    """The S-SCU log: one line per proposal, its outcome rewritten in place.

    Navigable: ↑/↓ move between decisions (a pending one becomes the one ``a``/``v``
    answer), Enter opens the decision inspector. Bounded to ``max_lines``; while the
    highlight sits on the newest line it follows new decisions, and a person who moved it
    back is never yanked away.
    """

    def __init__(self, max_lines: int, id: str | None = None) -> None:
        super().__init__(id=id)
        self.max_lines = max_lines
        self._shown: dict[str, str] = {}

    def on_mount(self) -> None:
        self.border_title = "S-SCU decisions"
        self.border_subtitle = "↑↓ choose · Enter inspect"

    @staticmethod
    def line(record: LogRecord) -> str:
        """``step id outcome action · reason``; who decided shows only when it is news. A
        period that changed nothing: ``step no change · why``."""
        if isinstance(record, HoldRecord):
            why = record.why or "nothing to change"
            if record.diagnosis and not why.startswith(record.diagnosis):
                why = f"{record.diagnosis}: {why}"
            return f"{record.step:>6} no change · {why}"
        news = (Decider.GUARD, Decider.RESUME, Decider.ROLLBACK)
        by = record.by if record.by in news else ""
        outcome = record.outcome.upper() if record.outcome == PENDING else record.outcome
        outcome += f"/{by}" if by and by != Decider.ROLLBACK else ""
        reason = f" · {record.reason}" if record.reason else ""
        return f"{record.step:>6} {record.id} {outcome:<10} {record.action}{reason}"

    @property
    def selected_id(self) -> str | None:
        """The id of the highlighted decision (None when the log is empty)."""
        index = self.highlighted
        if index is None or not 0 <= index < self.option_count:
            return None
        option = self.get_option_at_index(index)
        return None if option.disabled else option.id

    def _last_decision(self) -> int | None:
        """The index of the newest decision (hold lines are not choosable)."""
        for index in range(self.option_count - 1, -1, -1):
            if not self.get_option_at_index(index).disabled:
                return index
        return None

    def show(self, records: list[LogRecord]) -> None:
        """Add new lines and rewrite the decisions whose outcome changed; a period that
        changed nothing is a dimmed line that the highlight skips."""
        newest = self._last_decision()
        following = self.highlighted is None or newest is None or self.highlighted >= newest
        added = False
        for record in records:
            text = self.line(record)
            if self._shown.get(record.id) == text:
                continue
            hold = isinstance(record, HoldRecord)
            prompt = Text(text, style="dim" if hold else "", no_wrap=True, overflow="ellipsis")
            try:
                self.replace_option_prompt(record.id, prompt)
            except OptionDoesNotExist:
                self.add_option(Option(prompt, id=record.id, disabled=hold))
                added = True
            self._shown[record.id] = text
        while self.option_count > self.max_lines:
            oldest = self.get_option_at_index(0).id
            self.remove_option_at_index(0)
            self._shown.pop(oldest or "", None)
        if added and following:
            newest = self._last_decision()
            if newest is not None:
                self.highlighted = newest
            self.call_after_refresh(self._show_newest)

    def _show_newest(self) -> None:
        """The newest lines, as they come, but never at the cost of the chosen decision
        (a pending proposal stays on screen above the periods that held after it)."""
        self.scroll_end(animate=False, immediate=True)
        if self.highlighted is not None:
            self.scroll_to_highlight()

    @property
    def lines(self) -> list[str]:
        return [
            self._shown.get(self.get_option_at_index(i).id or "", "")
            for i in range(self.option_count)
        ]

    def text(self) -> str:
        """Everything in the log, for tests and screenshots."""
        return "\n".join(self.lines)
