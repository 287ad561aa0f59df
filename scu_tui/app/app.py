"""The live dashboard: a Textual app that drives one :class:`~scu_tui.run.Run`.

How the two sides meet:

- the app constructs the run (cheap, no MLX) and executes it in one Textual thread
  worker, so every MLX call happens on that one thread;
- the run emits events into an :class:`~scu_tui.app.feed.EventFeed` (a sink that only
  appends to bounded buffers); a timer at ``ui.refresh_hz`` drains it, folds the events
  into a :class:`~scu_tui.app.feed.RunState` and redraws the numbers and decisions once
  per tick, the charts in frames that a :class:`FramePacer` spaces to keep the app's CPU
  use small beside training;
- keys become :class:`~scu_tui.events.Command` objects put on the run's queue (never
  blocking) and show their effect at once ("pausing…") until the run confirms it.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

from textual import work
from textual.app import App
from textual.screen import Screen
from textual.timer import Timer
from textual.worker import Worker, WorkerState

from scu_tui.app.effects import InFlight
from scu_tui.app.feed import (
    EventFeed,
    RunState,
)
from scu_tui.app.host import TrainingRun
from scu_tui.app.notices import Notices
from scu_tui.app.screens import (
    ConfirmScreen,
    PresetPicker,
    RunChoice,
)
from scu_tui.app.screens.dashboard import Dashboard
from scu_tui.app.widgets import (
    DecisionLog,
    EntropyPanel,
    GradientPanel,
    LossPanel,
    StatusPanel,
)
from scu_tui.config import Settings
from scu_tui.errors import UserError
from scu_tui.presets import load_preset
from scu_tui.protocol import (
    CommandKind,
    DoneEvent,
    Event,
    ExitCode,
    ModeEvent,
    PauseEvent,
    ResumeEvent,
    RollbackEvent,
    RunFile,
    RunStatus,
    StartEvent,
    event_from_dict,
    read_events,
)
from scu_tui.remote.attach import RemoteRun
from scu_tui.run import Run, load_run_settings
from scu_tui.themes import DEFAULT_THEME, find_theme, textual_themes, theme_names

#: After a hang-up and the run's end, how long the app may take to exit on its own.
HANGUP_GRACE_SECONDS = 3.0
#: The charts (sparklines, wavelet bars) and the analysis behind them redraw at most this
#: often; numbers, progress and decisions follow every ``ui.refresh_hz`` tick. Drawing the
#: charts is most of a frame's cost, and on a small model it competes with training for the
#: CPU and the GIL.
CHART_HZ = 2.0
#: The share of one core the app's thread may spend while training: chart frames come less
#: often than CHART_HZ when they cost more (a big terminal, a slow CPU). On the demo at
#: 200x60 a chart frame is about 25 ms of CPU (docs/benchmarks.md, "The app's cost to
#: training").
CPU_BUDGET = 0.03
#: However costly the frames, the charts move at least this often.
LONGEST_FRAME_SECONDS = 2.0
#: Events after which the charts are drawn at once: the run changed state (a pause, a
#: rollback, the end), and a person looks now.
RESTATING = (StartEvent, PauseEvent, ResumeEvent, ModeEvent, RollbackEvent, DoneEvent)


class FramePacer:
    """When the next frame may be drawn, so the app's thread stays within its CPU budget.

    At each frame the pacer reads how much CPU the thread used since the previous one (that
    frame's drawing, and the ticks between) and spaces the next so the thread's share of a
    core stays under ``budget``: every ``1 / hz`` seconds while frames are cheap, up to
    ``longest`` apart while they are not. Measured, not guessed, because a frame's cost
    depends on the terminal's size, the CPU and what else the thread does.
    """

    def __init__(
        self,
        hz: float = CHART_HZ,
        budget: float = CPU_BUDGET,
        longest: float = LONGEST_FRAME_SECONDS,
    ) -> None:
        self.shortest = 1 / hz
        self.budget = budget
        self.longest = max(longest, self.shortest)
        self.interval = self.shortest  # seconds from the last frame to the next
        self._at = -math.inf  # when the last frame was drawn
        self._cpu_at: float | None = None  # the thread's CPU time then

    def due(self, now: float) -> bool:
        """The budget allows a frame now."""
        return now - self._at >= self.interval

    def drawn(self, now: float, cpu: float) -> None:
        """A frame is drawn at ``now`` (monotonic); ``cpu`` is the thread's CPU time then."""
        if self._cpu_at is not None:
            used = max(cpu - self._cpu_at, 0.0)
            self.interval = min(max(used / self.budget, self.shortest), self.longest)
        self._at, self._cpu_at = now, cpu


RunFactory = Callable[..., TrainingRun]
Matcher = Callable[[Event], bool]



class ScuApp(App[int]):
    """Trains one run and shows it live; see the module docstring for the wiring."""

    CSS_PATH = "app.tcss"
    TITLE = "scu-tui"
    ENABLE_COMMAND_PALETTE = False

    def __init__(
        self,
        settings: Settings | None,
        output_dir: Path | None = None,
        resume: Path | None = None,
        run_factory: RunFactory = Run,
        load: Callable[[str], Settings] = load_preset,
        theme: str = DEFAULT_THEME,
    ) -> None:
        super().__init__()
        self.settings = settings
        self.output_dir = output_dir
        self.resume = resume
        self.run_factory = run_factory
        self.load = load
        self.feed = EventFeed()
        self.state = RunState()
        self.training_run: TrainingRun | None = None
        self.worker: Worker[int] | None = None
        self.quitting = False  # the user confirmed quit: exit when the run is done
        self.signalled = False  # SIGHUP / SIGTERM / SIGINT: stop, checkpoint, exit 130
        self.setup_error_code: int | None = None
        self.in_flight = InFlight()  # keys pressed that the run has not confirmed yet
        self.notices = Notices(self)
        self._drawn = (-1, -1)
        self._waiters: list[tuple[str, Matcher | None, asyncio.Future[Event]]] = []
        self._drain_waiters: list[tuple[int, asyncio.Future[None]]] = []
        self.drain_count = 0
        self._signals: list[signal.Signals] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._previous_hup: Any = None
        self._hangup_thread: threading.Thread | None = None  # waits for a SIGHUP
        self._hangup_fd: int | None = None  # the SIGHUP handler writes here
        self._training_thread: threading.Thread | None = None
        self._codes: list[int] = []  # the training thread's exit code, once it has one
        self.history_until = 0.0  # attached: events before this are replayed history
        self._charts_stale = False  # events arrived that the charts do not show yet
        self._quiet_ticks = 0  # drains in a row that found no events
        self.pacer = FramePacer()
        self.alerts: list[str] = []  # bells rung (see alert)
        self.picked = False  # the run came from the preset picker (Escape goes back there)
        self._drain_timer: Timer | None = None
        for textual_theme in textual_themes():
            self.register_theme(textual_theme)
        self.theme = theme

    # --- lifecycle --------------------------------------------------------------------

    def get_default_screen(self) -> Screen[Any]:
        return Dashboard()

    @property
    def dashboard(self) -> Dashboard:
        screen = self.screen_stack[0]
        assert isinstance(screen, Dashboard)
        return screen

    def on_ready(self) -> None:
        """The dashboard is composed: install the signal handlers and start (or pick)."""
        self._install_signal_handlers()
        if self.settings is not None:
            self.start(self.settings)
        else:
            self.push_screen(PresetPicker(self.load), self._picked)

    def _picked(self, choice: Settings | RunChoice | None) -> None:
        """A preset to train, or a run from the runs list to watch or go on with."""
        self.picked = choice is not None
        if isinstance(choice, Settings):
            self.start(choice)
        elif isinstance(choice, RunChoice):
            try:
                self.open_run(choice)
            except UserError as exc:
                self.notify(str(exc), title="Cannot open the run", severity="error")
                self.push_screen(PresetPicker(self.load), self._picked)

    def open_run(self, choice: RunChoice) -> None:
        """Attach to a run (live: steerable; finished: read-only), or resume it here."""
        if choice.action == "resume":
            self.resume, self.output_dir = choice.path, None
            self.start(load_run_settings(choice.path))
            return
        remote = RemoteRun(choice.path)
        self.run_factory = lambda *args, **kwargs: remote
        self.start(remote.settings)

    def start(self, settings: Settings) -> None:
        """Build the run here (cheap), train it on a worker thread, drain it on a timer."""
        self.settings = settings
        self.state = RunState(window=settings.scu.window)
        if self.resume is not None:  # the plots show the whole surviving history
            self.state.load_history(past_events(self.resume / RunFile.EVENTS))
        self.dashboard.query_one(StatusPanel).show_settings(
            settings.name, settings.model.path, settings.training.max_steps
        )
        run = self.run_factory(settings, output_dir=self.output_dir, resume=self.resume)
        if run.attached:
            self.history_until = time.time()
            older = getattr(run, "older_history", None)
            if older is not None:  # the whole surviving history in the plots, not a tail
                self.state.load_history(older(), resumed=False)
        run.add_sink(self.feed)
        self.training_run = run
        self.worker = self.train()
        if self._drain_timer is not None:  # a second start (back from a failed one)
            self._drain_timer.stop()
        self._drain_timer = self.set_interval(1 / settings.ui.refresh_hz, self.drain, name="drain")
        self.sub_title = settings.name

    @work(thread=True, exclusive=True, exit_on_error=False, group="training")
    def train(self) -> int:
        """Wait for the run on its own thread and hand back its exit code.

        The run gets a fresh thread rather than this pooled one: MLX keeps per-thread
        streams that must be released before the process exits (or it aborts at exit), and
        a released thread can never run MLX again, so it must not go back to a pool.
        """
        codes = self._codes
        thread = threading.Thread(target=self._execute, args=(codes,), name="scu-training")
        self._training_thread = thread
        thread.start()
        thread.join()
        return codes[0] if codes else ExitCode.FAILED

    def _execute(self, codes: list[int]) -> None:
        """The training thread: all MLX work happens inside ``execute``, here."""
        run = self.training_run
        assert run is not None
        try:
            codes.append(run.execute())
        except UserError as exc:  # bad model or data path, output dir in use, ...
            codes.append(self._setup_failed(str(exc), ExitCode.BAD_INPUT))
        except Exception as exc:  # the run reports training failures itself; this is setup
            codes.append(self._setup_failed(f"{type(exc).__name__}: {exc}", ExitCode.FAILED))
        finally:
            release_mlx_thread()

    def _setup_failed(self, message: str, code: int) -> int:
        """The run never started: tell the dashboard the way the run would have (one done
        event with the reason: one notice, not two)."""
        self.setup_error_code = code
        self.feed.emit(DoneEvent(0, status=RunStatus.FAILED, message=message))
        return code

    @property
    def exit_code(self) -> int:
        """0 done or stopped, 130 interrupted by a signal, 1 failed, 2 bad input."""
        if self.setup_error_code is not None:
            return self.setup_error_code
        if self.worker is not None and self.worker.state == WorkerState.SUCCESS:
            result = self.worker.result
            if isinstance(result, int):
                return result
        code = self.state.exit_code
        if code is None:
            return ExitCode.INTERRUPTED if self.signalled else ExitCode.OK
        return code

    async def finish(self) -> None:
        """Exit once the training thread has returned its code."""
        if self.worker is not None:
            with contextlib.suppress(Exception):  # its failure is already on screen
                await self.worker.wait()
        code = self.exit_code
        self.exit(code, return_code=code)

    def on_unmount(self) -> None:
        """Leaving for any reason: never leave the training thread running unattended."""
        run = self.training_run
        if run is not None and not self.feed.done.is_set():
            run.request_stop("signal" if self.signalled else "user")
        self._restore_signal_handlers()
        gone = RuntimeError("the app exited before this happened")
        for *_, future in self._waiters:
            if not future.done():
                future.set_exception(gone)
        for _, tick in self._drain_waiters:
            if not tick.done():
                tick.set_exception(gone)
        self._waiters.clear()
        self._drain_waiters.clear()

    # --- signals (SSH drop, kill) -----------------------------------------------------------

    def _install_signal_handlers(self) -> None:
        """Stop with a checkpoint on SIGHUP (SSH drop), SIGTERM and SIGINT; exit 130.

        Textual leaves SIGHUP alone, so an SSH drop would kill training without a
        checkpoint. SIGHUP gets a plain ``signal.signal`` handler: its terminal is gone, and
        the event loop may soon hang writing to it, so nothing may depend on the loop.
        """
        if threading.current_thread() is not threading.main_thread():
            return
        self._loop = asyncio.get_running_loop()
        # the handler only writes a byte to this pipe: a signal lands between any two
        # bytecodes, so it must not take a lock (starting a thread does) that the code it
        # interrupted may hold
        read_fd, self._hangup_fd = os.pipe()
        self._hangup_thread = threading.Thread(
            target=self._await_hangup, args=(read_fd,), name="scu-hangup", daemon=True
        )
        self._hangup_thread.start()
        self._previous_hup = signal.signal(signal.SIGHUP, self._on_hangup)
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._loop.add_signal_handler(sig, self.on_signal, sig)
            except (NotImplementedError, RuntimeError, ValueError):
                continue
            self._signals.append(sig)

    def _restore_signal_handlers(self) -> None:
        if self._loop is not None:
            for sig in self._signals:
                self._loop.remove_signal_handler(sig)
        self._signals.clear()
        if self._previous_hup is not None:
            signal.signal(signal.SIGHUP, self._previous_hup)
            self._previous_hup = None
        if self._hangup_fd is not None:
            os.close(self._hangup_fd)  # the watcher reads the end of the pipe and goes
            self._hangup_fd = None

    def _on_hangup(self, signum: int, frame: FrameType | None) -> None:
        """SIGHUP, between two bytecodes of the main thread: wake the watcher thread."""
        self.signalled = True
        if self._hangup_fd is not None:
            with contextlib.suppress(OSError):  # os.write: safe inside a signal handler
                os.write(self._hangup_fd, b"h")

    def _await_hangup(self, read_fd: int) -> None:
        """The watcher: a byte means SIGHUP came; the pipe's end means the app is leaving."""
        try:
            woken = os.read(read_fd, 1)
        finally:
            os.close(read_fd)
        if woken:
            self._after_hangup()

    def _after_hangup(self) -> None:
        """Stop the run (it saves a checkpoint), then make sure the process ends.

        The normal path (the loop sees the DoneEvent and exits) works while the terminal
        does; once it is gone Textual's writes can block the loop forever, so after the run
        has finished and a grace period has passed, the process exits with the run's code.
        """
        run = self.training_run
        if run is not None and not self.feed.done.is_set():
            run.request_stop("signal")
        if self._loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is already closed
                self._loop.call_soon_threadsafe(self.on_signal, signal.SIGHUP)
        thread = self._training_thread
        if thread is not None:
            thread.join()
        if self.is_headless:  # tests: the loop is fine, and the process is pytest's
            return
        time.sleep(HANGUP_GRACE_SECONDS)
        os._exit(self._codes[0] if self._codes else ExitCode.INTERRUPTED)

    def on_signal(self, sig: signal.Signals) -> None:
        """Stop after this step with a checkpoint, then exit 130; a second signal hurries."""
        already = self.quitting and self.signalled
        self.signalled = True
        run = self.training_run
        if run is None or self.feed.done.is_set():
            self.exit(ExitCode.INTERRUPTED, return_code=ExitCode.INTERRUPTED)
            return
        if already:
            self.notify("Still saving the checkpoint…", severity="warning")
            return
        run.request_stop("signal")
        self.quitting = True
        self.effect(CommandKind.STOP, "stopping…")

    # --- the drain ------------------------------------------------------------------------

    def drain(self) -> None:
        """Fold what the run emitted since the last tick, redraw the numbers and decisions,
        and the charts when the pacer allows a frame.

        The charts also come at once when the run changes state (a pause or the end never
        waits for a frame) and when it has gone quiet: the second tick in a row without
        news (paused by a guard, evaluating, a slow model) shows everything it emitted.

        Once the app is shutting down it draws nothing: Textual takes the screens apart
        while the app's timers still tick, and a chart half removed has no parts to fill.
        """
        if not self.is_running:
            return
        events = self.feed.drain()
        for event in events:
            self.state.fold(event)
            self.notices.react(event)
        self._quiet_ticks = 0 if events else self._quiet_ticks + 1
        if events:
            self._charts_stale = True
            self.redraw()
        if self._charts_stale:
            now = time.monotonic()
            restated = any(isinstance(event, RESTATING) for event in events)
            if restated or self._quiet_ticks >= 2 or self.pacer.due(now):
                self.pacer.drawn(now, time.thread_time())
                self._charts_stale = False
                self.redraw_charts()
        self.drain_count += 1
        self._resolve(events)
        if self.state.done is not None and self.quitting:
            self.quitting = False
            self.call_later(self.finish)

    def redraw(self) -> None:
        """Status, log and banner (the last two only when they changed); the charts follow
        in :meth:`redraw_charts`."""
        if self.settings is None:
            return
        dash = self.dashboard
        state = self.state
        dash.query_one(StatusPanel).show(state, self.in_flight.text)
        key = (state.decisions_version, len(self.in_flight.answering))
        if key != self._drawn:
            self._drawn = key
            dash.query_one(DecisionLog).show(list(state.log))
            self.dashboard.show_banner()

    def redraw_charts(self) -> None:
        """The loss, gradient and wavelet panels, from the state and the S-SCU's analysis."""
        if self.settings is None:
            return
        dash = self.dashboard
        dash.query_one(LossPanel).show(self.state)
        dash.query_one(GradientPanel).show(self.state)
        dash.query_one(EntropyPanel).show(self.state.analysis)

    def alert(self, text: str) -> None:
        """Call the person back to the terminal: the bell, and a desktop notification
        (OSC 9, which iTerm2, WezTerm, Windows Terminal and others show) unless
        ``ui.notify`` is off. Counted in :attr:`alerts` (tests read it)."""
        if self.settings is not None and not self.settings.ui.notify:
            return
        self.alerts.append(text)
        if self.is_headless or self._driver is None:
            return
        clean = "".join(c for c in text if c.isprintable())[:200]
        self._driver.write(f"\x1b]9;scu-tui: {clean}\x07\x07")

    # --- waiting on events (tests, scripted use) ---------------------------------------------

    def expect(self, kind: str, match: Matcher | None = None) -> asyncio.Future[Event]:
        """A future for the next event of type ``kind`` (and ``match``), once drained.

        Register it before the key press that should cause the event: no race, no sleep.
        """
        future: asyncio.Future[Event] = asyncio.get_running_loop().create_future()
        self._waiters.append((kind, match, future))
        return future

    async def drains(self, count: int = 1) -> None:
        """Wait for ``count`` more refresh ticks."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._drain_waiters.append((self.drain_count + count, future))
        await future

    def _resolve(self, events: list[Event]) -> None:
        for event in events:
            for waiter in list(self._waiters):
                kind, match, future = waiter
                if event.type == kind and (match is None or match(event)):
                    self._waiters.remove(waiter)
                    if not future.done():
                        future.set_result(event)
        for waiter_ in list(self._drain_waiters):
            target, tick = waiter_
            if self.drain_count >= target:
                self._drain_waiters.remove(waiter_)
                if not tick.done():
                    tick.set_result(None)

    # --- keys -----------------------------------------------------------------------------

    def effect(self, kind: CommandKind, text: str) -> None:
        """Show a key's effect now; the matching event clears it."""
        self.in_flight.show(kind, text)
        self.show_word()

    def show_word(self) -> None:
        if self.settings is not None:
            self.dashboard.query_one(StatusPanel).show_word(self.state, self.in_flight.text)

    def show_decisions(self) -> None:
        """Redraw the log and the banner at the next tick (an answer in flight went)."""
        self._drawn = (-1, -1)

    def action_back_to_picker(self) -> None:
        """A run picked from the presets that could not start: back to the presets."""
        if not self.picked or self.setup_error_code is None:  # it trained: q leaves
            return
        self.training_run, self.worker, self.setup_error_code = None, None, None
        self.feed = EventFeed()
        self.state = RunState()
        self.in_flight.forget()
        self.push_screen(PresetPicker(self.load), self._picked)

    def action_cycle_theme(self) -> None:
        names = theme_names()
        index = names.index(self.theme) if self.theme in names else -1
        self.theme = names[(index + 1) % len(names)]
        self.notify(f"Theme {self.theme}", timeout=2)

    def action_cycle_theme_unlisted(self) -> None:
        self.action_cycle_theme()

    @property
    def attached(self) -> bool:
        """Following a run that lives in another process (``scu-tui attach``)."""
        return self.training_run is not None and self.training_run.attached

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Attached, ``q`` detaches (the dashboard's ``x`` stops the run); in-process, ``q``
        quits."""
        if action in ("detach", "cycle_theme_unlisted"):
            return self.attached
        if action in ("request_quit", "cycle_theme"):
            return not self.attached
        return True

    def action_detach(self) -> None:
        """Stop following the run and leave; the run itself never notices."""
        if self.training_run is not None:
            self.training_run.request_stop("user")
        self.call_later(self.finish)

    async def action_quit(self) -> None:
        """Textual's own quit keys (ctrl+q) go through the same confirmation."""
        if self.attached:
            self.action_detach()
        else:
            self.action_request_quit()

    def action_request_quit(self) -> None:
        if self.training_run is None or self.state.done is not None or self.feed.done.is_set():
            self.call_later(self.finish)
            return
        if self.quitting:
            self.notify("Saving a checkpoint before quitting…")
            return
        self.push_screen(
            ConfirmScreen(
                "Stop training and quit?\nA checkpoint is saved first.", yes="Quit", no="Keep"
            ),
            self._confirmed_quit,
        )

    def _confirmed_quit(self, yes: bool | None) -> None:
        if not yes or self.training_run is None:
            return
        if self.feed.done.is_set():
            self.call_later(self.finish)
            return
        self.quitting = True
        self.training_run.request_stop("user")
        self.effect(CommandKind.STOP, "stopping…")


def past_events(path: Path) -> Iterator[Event]:
    """The events a run folder already holds (none when it has no readable events file)."""
    try:
        for data in read_events(path):
            event = event_from_dict(data)
            if event is not None:
                yield event
    except UserError:
        return


def release_mlx_thread() -> None:
    """Free this thread's MLX streams; without it the process may abort when it exits."""
    mx: Any = sys.modules.get("mlx.core")
    if mx is not None and hasattr(mx, "clear_streams"):
        mx.clear_streams()


def make_app(
    settings: Settings | None,
    output_dir: Path | None = None,
    resume: Path | None = None,
    run_factory: RunFactory = Run,
    load: Callable[[str], Settings] = load_preset,
    theme: str | None = None,
) -> ScuApp:
    """The app, ready to ``run()``; ``settings=None`` opens the preset picker first.

    The theme is checked here, so an unknown name is a :class:`UserError` (exit 2) before
    the terminal is taken over.
    """
    name = theme or (settings.ui.theme if settings is not None else DEFAULT_THEME)
    find_theme(name)
    return ScuApp(settings, output_dir, resume, run_factory, load, name)


def attach_app(run_dir: Path, theme: str | None = None) -> ScuApp:
    """The dashboard on a run in its folder; raises :class:`UserError` if it is not a run."""
    remote = RemoteRun(run_dir)

    def follow(settings: Any, output_dir: Any = None, resume: Any = None) -> RemoteRun:
        return remote

    return make_app(
        remote.settings,
        output_dir=run_dir,
        run_factory=follow,
        theme=theme or remote.settings.ui.theme,
    )
