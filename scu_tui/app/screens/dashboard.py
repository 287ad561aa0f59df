"""The dashboard: the training view and the keys that steer the run.

The app (:mod:`scu_tui.app.app`) runs the run and folds its events; this screen draws
what they say and turns keys into commands.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, cast

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal
from textual.events import Resize
from textual.screen import Screen
from textual.widgets import Footer, OptionList

from scu_tui.app.feed import DECISION_LINES
from scu_tui.app.screens.confirm import ConfirmScreen
from scu_tui.app.screens.help import HelpScreen
from scu_tui.app.screens.inspector import InspectorScreen
from scu_tui.app.screens.plots import PlotsScreen
from scu_tui.app.screens.text import TextScreen, comparison_text, samples_text
from scu_tui.app.widgets import (
    DecisionLog,
    EntropyPanel,
    GradientPanel,
    LossPanel,
    ProposalBanner,
    StatusPanel,
)
from scu_tui.protocol import NOT_RUNNING, Command, CommandKind, Mode, ProposalEvent

if TYPE_CHECKING:
    from scu_tui.app.host import AppHost

#: ``m`` cycles the S-SCU through these modes.
MODE_CYCLE = (Mode.ASK, Mode.AUTO, Mode.OBSERVE)
#: Terminals at least this tall get taller panels.
TALL_HEIGHT = 34
#: The keys' actions that steer a running run: a run that has ended no longer offers them.
STEERING = ("toggle_pause", "accept", "veto", "save", "evaluate", "cycle_mode", "stop_run")
HELP_NOTES = (
    "Proposals wait in [b]ask[/b] mode until you answer them (or they expire); "
    "[b]auto[/b] applies them; [b]observe[/b] only logs them.\n"
    "Quitting stops after the current step and saves a checkpoint; "
    "continue later with --resume DIR."
)
ATTACHED_NOTES = (
    "Attached: [b]q[/b] only leaves, the run goes on; [b]x[/b] stops the run itself "
    "with a checkpoint. Proposals wait in [b]ask[/b] mode for an answer."
)


class Dashboard(Screen[None]):
    """The training view: status, pending proposal, three panels and the S-SCU log, and
    the keys that steer the run (sent as commands; their effect shows until the run
    confirms it)."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("p", "toggle_pause", "Pause", id="pause", tooltip="Pause or resume training"),
        Binding("a", "accept", "Accept", id="accept", tooltip="Accept the pending proposal"),
        Binding("v", "veto", "Veto", id="veto", tooltip="Veto the pending proposal"),
        Binding("s", "save", "Save", id="save", tooltip="Save a checkpoint now"),
        Binding("e", "evaluate", "Eval", id="eval", tooltip="Evaluate on validation now"),
        Binding("m", "cycle_mode", "Mode", id="mode", tooltip="S-SCU mode: ask→auto→observe"),
        Binding("g", "plots", "Plots", id="plots", tooltip="Full-size loss, lr, grad curves"),
        Binding("t", "app.cycle_theme", "Theme", id="theme", tooltip="Next colour theme"),
        Binding(
            "o",
            "samples",
            "Samples",
            id="samples",
            tooltip="What the adapters answer at each evaluation",
            show=False,
        ),
        Binding(
            "c",
            "comparison",
            "Compare",
            id="comparison",
            tooltip="Base model vs adapters on the test split (at the end)",
            show=False,
        ),
        Binding("question_mark", "help", "Help", key_display="?", id="help", tooltip="Keys"),
        Binding("q", "app.request_quit", "Quit", id="quit", tooltip="Save a checkpoint and quit"),
        Binding(
            "escape",
            "app.back_to_picker",
            "Presets",
            id="back",
            tooltip="Back to the presets (a run that could not start)",
            show=False,
        ),
        # attached to a run in another process: q leaves it running, x stops it
        Binding("q", "app.detach", "Detach", id="detach", tooltip="Leave; the run goes on"),
        Binding("x", "stop_run", "Stop", id="stop", tooltip="Stop the run (checkpoint)"),
        # attached, the footer needs room for q and x at 80 columns: t works but is not shown
        Binding(
            "t",
            "app.cycle_theme_unlisted",
            "Theme",
            id="theme.unlisted",
            tooltip="Next colour theme",
            show=False,
        ),
    ]

    def compose(self) -> ComposeResult:
        yield StatusPanel(id="status")
        yield ProposalBanner("", id="banner")
        with Horizontal(id="panels"):
            yield LossPanel(id="loss", classes="panel")
            yield GradientPanel(id="gradients", classes="panel")
            yield EntropyPanel("", id="entropy", classes="panel")
        yield DecisionLog(DECISION_LINES, id="decisions")
        yield Footer(compact=True, show_command_palette=False)

    def on_resize(self, event: Resize) -> None:
        self.set_class(event.size.height >= TALL_HEIGHT, "-tall")

    @property
    def scu(self) -> AppHost:
        """The app this screen belongs to (only a ScuApp pushes it)."""
        return cast("AppHost", self.app)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """A run that has ended (done, failed or lost) offers no key that steers it; only
        an attached app stops the run itself (in-process, quitting does)."""
        if action in STEERING and self.scu.state.done is not None:
            return False
        if action == "stop_run":
            return self.scu.attached
        return True

    def offers(self, action: str) -> bool:
        """Whether a binding's action is offered now (the app's own or this screen's)."""
        if action.startswith("app."):
            return bool(self.scu.check_action(action.removeprefix("app."), ()))
        return bool(self.check_action(action, ()))

    def answer_target(self) -> ProposalEvent | None:
        """The proposal ``a``/``v`` answer: the one highlighted in the log when it waits,
        else the oldest that waits and is not being answered already."""
        pending = self.scu.state.pending
        chosen = self.query_one(DecisionLog).selected_id
        if chosen in pending:
            return pending[chosen]
        waiting = [p for pid, p in pending.items() if pid not in self.scu.in_flight.answering]
        return waiting[0] if waiting else next(iter(pending.values()), None)

    def show_banner(self) -> None:
        target = self.answer_target()
        answering = self.scu.in_flight.answering.get(target.id, "") if target else ""
        self.query_one(ProposalBanner).show(self.scu.state, target, answering)

    def on_option_list_option_highlighted(self, event: OptionList.OptionHighlighted) -> None:
        """Moving in the decision log chooses which pending proposal a/v answer."""
        if isinstance(event.option_list, DecisionLog):
            self.show_banner()

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        """Enter on a decision: the inspector, with everything known about it."""
        if isinstance(event.option_list, DecisionLog) and event.option.id:
            self.action_inspect(event.option.id)

    def action_inspect(self, proposal_id: str) -> None:
        record = self.scu.state.record(proposal_id)
        if record is not None:
            self.app.push_screen(InspectorScreen(lambda: self.scu.state.record(proposal_id)))

    def submit(self, command: Command) -> bool:
        """Queue a command if a run is going; say so when it is not."""
        run = self.scu.training_run
        if self.scu.state.lost:
            self.scu.notify(NOT_RUNNING.capitalize(), severity="warning")
            return False
        if run is None or self.scu.state.done is not None:
            self.scu.notify("No training is running", severity="warning")
            return False
        run.submit(command)
        return True

    def action_toggle_pause(self) -> None:
        flight = self.scu.in_flight
        paused = flight.pause_target if flight.pause_target is not None else self.scu.state.paused
        target = not paused
        if self.submit(Command(CommandKind.PAUSE if target else CommandKind.RESUME)):
            flight.pause_target = target
            self.scu.effect(CommandKind.PAUSE, "pausing…" if target else "resuming…")

    def action_accept(self) -> None:
        self._answer(CommandKind.ACCEPT, "accepting…")

    def action_veto(self) -> None:
        self._answer(CommandKind.VETO, "vetoing…")

    def _answer(self, kind: CommandKind, text: str) -> None:
        """Answer the proposal the banner names, by its id; the run refuses an id that is
        no longer pending (expired a moment ago, say) instead of answering another."""
        target = self.answer_target()
        if target is None:
            self.scu.notify("No pending proposal", severity="warning")
            return
        if target.id in self.scu.in_flight.answering:
            self.scu.notify(f"{target.id} is being answered already", severity="warning")
            return
        if self.submit(Command(kind, value=target.id)):
            self.scu.in_flight.answering[target.id] = f"{text} {target.id}"
            self.show_banner()

    def action_save(self) -> None:
        if self.submit(Command(CommandKind.SAVE)):
            self.scu.effect(CommandKind.SAVE, "saving…")

    def action_evaluate(self) -> None:
        if self.submit(Command(CommandKind.EVAL)):
            self.scu.effect(CommandKind.EVAL, "evaluating…")

    def action_cycle_mode(self) -> None:
        current = self.scu.in_flight.mode_target or self.scu.state.mode
        index = MODE_CYCLE.index(current) if current in MODE_CYCLE else -1
        target = MODE_CYCLE[(index + 1) % len(MODE_CYCLE)]
        if not self.submit(Command(CommandKind.MODE, value=target)):
            return
        if target == self.scu.state.mode:  # back where the run is: it will say nothing
            self.scu.in_flight.confirmed(CommandKind.MODE)
            self.scu.show_word()
        else:
            self.scu.in_flight.mode_target = target
            self.scu.effect(CommandKind.MODE, f"mode→{target}…")

    def action_samples(self) -> None:
        self.app.push_screen(TextScreen("Samples", lambda: samples_text(self.scu.state)))

    def action_comparison(self) -> None:
        self.app.push_screen(
            TextScreen("Did the fine-tune help?", lambda: comparison_text(self.scu.state))
        )

    def action_plots(self) -> None:
        self.app.push_screen(PlotsScreen(lambda: self.scu.state))

    def action_help(self) -> None:
        bindings = [
            b for b in Dashboard.BINDINGS if isinstance(b, Binding) and self.offers(b.action)
        ]
        self.app.push_screen(
            HelpScreen(bindings, ATTACHED_NOTES if self.scu.attached else HELP_NOTES)
        )

    def action_stop_run(self) -> None:
        if self.scu.state.done is not None or self.scu.training_run is None:
            self.scu.notify("The run has already ended", severity="warning")
            return
        self.app.push_screen(
            ConfirmScreen(
                "Stop the run itself?\nIt saves a checkpoint and ends; resume it later with "
                "--resume.",
                yes="Stop",
                no="Keep",
            ),
            self._confirmed_stop,
        )

    def _confirmed_stop(self, yes: bool | None) -> None:
        if yes and self.submit(Command(CommandKind.STOP)):
            self.scu.effect(CommandKind.STOP, "stopping…")
