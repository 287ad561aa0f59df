"""The dashboard's panels. Each one draws from a :class:`RunState` when the app says so.

Widgets never see events or the run: the app folds events into plain numbers and calls
``show(state, analysis)`` on each panel once per refresh tick, only when something
changed. Colours come from the theme through TCSS classes, never from Python.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import Label, Log, ProgressBar, Sparkline, Static

from scu_tui.app.feed import Analysis, DecisionRecord, RunState, trend_words
from scu_tui.sinks import format_duration


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
        tps = state.tokens_per_second
        numbers = (
            f"step {state.step}/{state.max_steps}  ETA {format_duration(state.eta_seconds)}  "
            f"{num(tps, ',.0f')} tok/s  peak {num(state.peak_memory_gb, '.2f')} GB"
        )
        if state.rollbacks:
            numbers += f"  rollbacks {state.rollbacks}"
        failed = state.done is not None and state.done.status == "failed"
        self.set_class(failed or state.lost, "-failed")
        if failed:
            numbers = f"failed at step {state.step}: {state.message or 'see the notification'}"
        elif state.lost:  # no ETA: nothing is running any more
            numbers = f"lost at step {state.step}: {state.message or 'the run is gone'}"
        k = state.knobs
        accumulation = int(k.get("accumulation", 0))
        batch = f"{state.batch_size}×{accumulation}" if state.batch_size else "--"
        knobs = (
            f"lr {knob_value(k.get('lr', state.lr))}  "
            f"wd {knob_value(k.get('weight_decay', math.nan))}  "
            f"dropout {knob_value(k.get('dropout', math.nan))}  "
            f"batch {batch}  mode {state.mode or '--'}"
        )
        self.query_one("#status-numbers", Readout).show(numbers)
        self.query_one("#status-knobs", Readout).show(knobs)
        self.show_word(state, transient)

    def show_word(self, state: RunState, transient: str = "") -> None:
        """The one word that says what the run is doing; also called straight from keys."""
        word, kind = state_word(state, transient)
        self.query_one("#status-word", Readout).show(word, kind)


def state_word(state: RunState, transient: str) -> tuple[str, str]:
    """``(text, css class)`` for the state word: a pending key effect wins until confirmed."""
    if state.done is not None:
        if state.done.status == "failed":
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
    """The pending proposal, impossible to miss, until it is answered."""

    def show(self, state: RunState, answering: str = "") -> None:
        proposal = state.oldest_pending
        self.set_class(proposal is not None, "visible")
        if proposal is None:
            return
        more = len(state.pending) - 1
        tail = f"  (+{more} more)" if more > 0 else ""
        keys = answering or "[b]a[/b] accept / [b]v[/b] veto"
        self.update(
            f"[b]S-SCU proposes[/b] at step {proposal.step}: {proposal.reason}\n"
            f"[b]{proposal.action}[/b]   {keys}{tail}"
        )


class LossPanel(Vertical):
    """Train and validation loss: sparklines, current, best, trend."""

    def compose(self) -> ComposeResult:
        with Horizontal(classes="spark-row", id="loss-row"):
            yield Label("train", classes="spark-label")
            yield Sparkline([], summary_function=mean, id="loss-spark")
        with Horizontal(classes="spark-row", id="val-row"):
            yield Label("val", classes="spark-label")
            yield Sparkline([], summary_function=mean, id="val-spark")
        yield Readout("", id="loss-text")

    def on_mount(self) -> None:
        self.border_title = "Loss"

    def show(self, state: RunState, analysis: Analysis, period: int) -> None:
        self.query_one("#loss-spark", Sparkline).data = state.recent(state.losses)
        self.query_one("#val-spark", Sparkline).data = state.recent(state.val_losses)
        self.query_one("#loss-text", Readout).show(
            f"now {num(state.loss)}  best {num(state.best_train_loss)}\n"
            f"val {num(state.val_loss)}  best {num(state.best_val_loss)}\n"
            f"{trend_words(analysis.trend, period)}"
        )


class GradientPanel(Vertical):
    """Gradient-norm sparkline, robust variability and a one-word verdict."""

    def compose(self) -> ComposeResult:
        yield Sparkline([], id="grad-spark")
        yield Readout("", id="grad-text")
        yield Readout("", id="grad-status")

    def on_mount(self) -> None:
        self.border_title = "Gradients"

    def show(self, state: RunState, analysis: Analysis) -> None:
        self.query_one("#grad-spark", Sparkline).data = state.recent(state.grad_norms)
        g = analysis.gradients
        median = g.median if g is not None else math.nan
        variability = g.variability if g is not None else math.nan
        spikes = g.spikes if g is not None else 0
        self.query_one("#grad-text", Readout).show(
            f"norm {num(state.grad_norm)}  med {num(median)}\n"
            f"variability {num(variability, '.2f')}  spikes {spikes}"
        )
        status = analysis.grad_status
        self.query_one("#grad-status", Readout).show(status, status)


class EntropyPanel(Static):
    """One bar per wavelet band (its share of the loss-fluctuation energy) plus the total.

    Bars are styled through component classes so the theme's TCSS colours them.
    """

    COMPONENT_CLASSES: ClassVar[set[str]] = {"entropy--bar", "entropy--total"}

    def on_mount(self) -> None:
        self.border_title = "Wavelet entropy"
        self.border_subtitle = "energy · H"
        self._analysis = Analysis()

    def show(self, analysis: Analysis) -> None:
        if analysis.entropy != self._analysis.entropy:
            self.refresh()
        self._analysis = analysis

    def render(self) -> Text:
        entropy = getattr(self, "_analysis", Analysis()).entropy
        if entropy is None or entropy.levels == 0:
            return Text("waiting for a window of losses…", style="dim")
        width = max(self.content_size.width, 12)
        bar_width = max(width - 15, 3)  # label 5, " 100%" 5, " 0.00" 5
        labels = [f"D{i + 1}" for i in range(entropy.levels)] + [f"A{entropy.levels}"]
        band_style = self.get_component_rich_style("entropy--bar")
        total_style = self.get_component_rich_style("entropy--total")
        lines = Text()
        rows = zip(labels, entropy.energy_shares, entropy.level_entropy, strict=True)
        for label, share, h in rows:
            lines.append(f"{label:<5}")
            lines.append(bar(share, bar_width), style=band_style)
            lines.append(f" {share:>4.0%} {h:.2f}\n")
        total = entropy.total_entropy
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


class DecisionLog(Log):
    """The S-SCU log: one line per proposal whose outcome is rewritten in place.

    ``Log`` (not ``RichLog``) so a user scrolling back is not yanked to the bottom; it is
    bounded by ``max_lines`` and keeps a parallel list of proposal ids to find a line again.
    """

    def __init__(self, max_lines: int, id: str | None = None) -> None:
        super().__init__(max_lines=max_lines, id=id, auto_scroll=True)
        self._ids: list[str] = []
        self._shown: dict[str, str] = {}

    def on_mount(self) -> None:
        self.border_title = "S-SCU decisions"
        self.border_subtitle = "step · outcome · action · reason"

    @staticmethod
    def line(record: DecisionRecord) -> str:
        """``step outcome action · reason``; who decided shows only when it is news."""
        by = record.by if record.by in ("guard", "resume") else ""
        outcome = record.outcome.upper() if record.outcome == "pending" else record.outcome
        outcome += f"/{by}" if by else ""
        reason = f" · {record.reason}" if record.reason else ""
        return f"{record.step:>6} {outcome:<10} {record.action}{reason}"

    def show(self, records: list[DecisionRecord]) -> None:
        """Add new records and rewrite the lines whose outcome changed."""
        for record in records:
            text = self.line(record)
            if self._shown.get(record.id) == text:
                continue
            if record.id in self._shown and record.id in self._ids:
                self._rewrite(self._ids.index(record.id), text)
            else:
                self._ids.append(record.id)
                self.write_line(text)
                if self.max_lines is not None and len(self._ids) > self.max_lines:
                    del self._ids[: len(self._ids) - self.max_lines]
            self._shown[record.id] = text
        if len(self._shown) > 4 * len(self._ids) + 16:  # forget lines pruned long ago
            keep = set(self._ids)
            self._shown = {k: v for k, v in self._shown.items() if k in keep}

    def _rewrite(self, index: int, text: str) -> None:
        y = index + max(len(self._lines) - len(self._ids), 0)  # write_line: one line per id
        if 0 <= y < len(self._lines):
            self._lines[y] = text
            self._render_line_cache.discard(y)
            self.refresh_lines(y)

    def text(self) -> str:
        """Everything in the log, for tests and screenshots."""
        return "\n".join(self.lines)
