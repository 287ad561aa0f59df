"""Text over the dashboard: what the adapters answer, and whether the fine-tune helped."""

from __future__ import annotations

import math
import shlex
from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar

from rich.markup import escape
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Label, Static

from scu_tui.app.feed import (
    RunState,
)

if TYPE_CHECKING:
    pass


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
