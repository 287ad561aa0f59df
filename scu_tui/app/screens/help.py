"""The keys, and the words the dashboard uses."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Label, Static

if TYPE_CHECKING:
    pass


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
