"""The decision inspector: everything known about one proposal."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

from rich.markup import escape
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Label, Static

from scu_tui.app.feed import (
    PENDING,
    DecisionRecord,
    trend_word,
)
from scu_tui.app.widgets import change_text
from scu_tui.control.signals import trend_change
from scu_tui.protocol import TAKEN, Rollback

if TYPE_CHECKING:
    pass


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
