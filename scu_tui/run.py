"""A run: drives the trainer over what its loader built, takes commands, emits events.

The run owns every file in the output directory and writes them through its
:class:`~scu_tui.runfolder.RunFolder` (lock, checkpoints, adapters, summary, metrics);
what becomes of the S-SCU's proposals is :class:`~scu_tui.control.steering.Steering`'s.
Commands arrive on a thread-safe queue and are carried out between two steps; events go
to every attached sink.

Its collaborators come in from outside: the :class:`~scu_tui.training.loader.Loader`
that builds the model and data (mlx-lm's by default), the S-SCU controller, and, from the
entry point, ``listen``, which starts the control socket once the folder is claimed
(:func:`scu_tui.remote.control.serve`). A run started without it trains with no socket,
and this module never imports :mod:`scu_tui.remote`.
"""

from __future__ import annotations

import contextlib
import math
import queue
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from scu_tui import blas
from scu_tui.config import Settings
from scu_tui.control.controller import Controller
from scu_tui.control.steering import Steering, TrainingFailed
from scu_tui.errors import UserError
from scu_tui.memory_readings import OsMemory, read_os_memory
from scu_tui.protocol import (
    CheckpointEvent,
    CheckpointReason,
    Command,
    CommandKind,
    ComparisonEvent,
    Decider,
    DoneEvent,
    EvalEvent,
    Event,
    ExitCode,
    Knob,
    KnobEvent,
    KnobSetting,
    MessageEvent,
    MessageLevel,
    Mode,
    Outcome,
    PauseEvent,
    ResumeEvent,
    RunFile,
    RunStatus,
    SamplesEvent,
    StartEvent,
    StepEvent,
)
from scu_tui.runfolder import RunFolder, default_output_dir, write_failure_text
from scu_tui.runfolder import load_run_settings as load_run_settings  # the app's import
from scu_tui.sinks import ConsoleSink, JsonlSink, Sink
from scu_tui.training.checkpoint import atomic_write_json
from scu_tui.training.loader import Loaded, Loader, LoraInfo, MlxLmLoader
from scu_tui.training.snapshots import Snapshots

if TYPE_CHECKING:  # the trainer imports MLX: only the types, here
    from scu_tui.check.watchdog import MemoryWatchdog
    from scu_tui.training.data import DataBundle
    from scu_tui.training.trainer import StepResult, Trainer

#: Training losses kept for the summary's final loss.
RECENT_LOSSES = 100


@dataclass
class RunProgress:
    """Plain numbers about the run, for summaries and watchers."""

    started: float = field(default_factory=time.time)
    losses: deque[float] = field(default_factory=lambda: deque(maxlen=RECENT_LOSSES))
    first_val_loss: float = math.nan
    status: RunStatus = RunStatus.RUNNING
    message: str = ""


class Closeable(Protocol):
    """What ``listen`` hands back: closed when the run ends."""

    def close(self) -> None: ...


class Peers(Protocol):
    """The other ranks of a data-parallel run, seen from rank 0
    (:class:`scu_tui.training.distributed.Leader`): they do each step and evaluation with
    this rank and take every knob change, so all ranks train identically."""

    group: Any  # the ``mx.distributed.Group`` the trainer reduces over
    world_size: int
    lost: bool  # a collective or the last word failed: a rank is gone

    def attach(self, trainer: Trainer, on_timeout: Callable[[str], None]) -> None: ...

    def share(self, op: list[Any]) -> None: ...

    def resync(self) -> None: ...

    def collective(self, op: str) -> contextlib.AbstractContextManager[None]: ...

    def heartbeat(self) -> None: ...

    def finish(self, code: int) -> None: ...


#: Starts a run's control channel once its folder is claimed (the entry point passes
#: :func:`scu_tui.remote.control.serve`). Raises OSError when it cannot: the run then
#: trains on with a warning and no socket.
Listen = Callable[["Run"], Closeable]


class Run:
    """One training run. Create, add sinks, then :meth:`execute` on the training thread.

    ``loader`` builds the model and data (default: mlx-lm's); ``controller`` is the S-SCU
    (default: a fresh one when ``scu.enabled``); ``listen`` starts the control socket
    (default: none).
    """

    attached = False  # it runs in this process (see scu_tui.remote.attach.RemoteRun)

    def __init__(
        self,
        settings: Settings,
        output_dir: Path | None = None,
        resume: Path | None = None,
        controller: Controller | None = None,
        *,
        loader: Loader | None = None,
        listen: Listen | None = None,
        peers: Peers | None = None,
    ) -> None:
        self.settings = settings
        self.peers = peers  # the other ranks of a data-parallel run (rank 0 only)
        self.resume_dir = resume
        self.output_dir = resume or output_dir or default_output_dir(settings)
        # SimpleQueue: its put is reentrant, so a signal handler's stop request that lands
        # while this thread is inside get() cannot deadlock on the queue's lock
        self.commands: queue.SimpleQueue[Command] = queue.SimpleQueue()
        self.sinks: list[Sink] = []
        self.status = RunProgress()
        self.paused = False
        self._notes: list[str] = []  # warnings from setup, emitted once the run has started
        self._stop: Decider | None = None  # who asked to stop: a person or a signal
        self._stop_asked = False  # a stop waits in the command queue
        self._last_saved_step = -1
        self._rolled_back = False  # a rollback's state is not in a checkpoint yet
        self.loader: Loader = loader or MlxLmLoader()
        self.tokenizer: Any = None
        self._sample_prompts: list[tuple[str, str]] = []  # chosen at the first evaluation
        self.memory: MemoryWatchdog | None = None  # set once the model is loaded
        self.trainer: Trainer | None = None  # set up by execute()
        self.lora_info: LoraInfo | None = None
        self.data: DataBundle | None = None
        if controller is None and settings.scu.enabled:
            controller = Controller(
                settings.scu, settings.training, dropout=settings.lora.type != "full"
            )
        self.controller = controller
        # every proposal's life, from the controller's proposal to its outcome
        self.steering = Steering(
            controller, self, Mode(settings.scu.mode), settings.scu.proposal_ttl
        )
        self.snapshots = Snapshots()  # recent good states, for a rollback (S-SCU on only)
        self.listen = listen
        self.control: Closeable | None = None
        self.folder = RunFolder(self.output_dir, resuming=resume is not None)

    # --- plumbing -------------------------------------------------------------------------

    def add_sink(self, sink: Sink) -> None:
        self.sinks.append(sink)

    def emit(self, event: Event) -> None:
        for sink in [*self.sinks]:
            try:
                sink.emit(event)
            except OSError:
                if not isinstance(sink, ConsoleSink):
                    raise
                # The console's reader is gone (a closed terminal, an mlx.launch that died
                # of the same signal): the run folder keeps the record, training goes on
                # to its stop and checkpoint instead of failing on a print.
                self.sinks.remove(sink)

    def _emit_quietly(self, event: Event) -> None:
        """Emit to every sink that still works (after a failure: a full disk, say)."""
        for sink in self.sinks:
            with contextlib.suppress(Exception):
                sink.emit(event)

    def submit(self, command: Command) -> None:
        """Thread-safe: queue a command for the next gap between steps."""
        if command.kind == CommandKind.STOP:
            self._stop_asked = True  # for a long stretch of steps (the LR trial) to see
        self.commands.put(command)

    def status_snapshot(self) -> dict[str, Any]:
        """Plain values for watchers on other threads (the control socket)."""
        t = self.trainer
        return {
            "step": self.step,
            "max_steps": self.settings.training.max_steps,
            "paused": self.paused,
            "mode": self.mode,
            "status": self.status.status,
            "pending": self.steering.pending_summary() if t is not None else [],
        }

    @property
    def mode(self) -> Mode:
        """The S-SCU mode of the moment (steering's)."""
        return self.steering.mode

    @property
    def step(self) -> int:
        return int(self.trainer.step) if self.trainer is not None else 0

    @property
    def _trainer(self) -> Trainer:
        """The trainer, for code that runs once :meth:`_setup` has built it."""
        if self.trainer is None:
            raise RuntimeError("the run is not set up yet")
        return self.trainer

    @property
    def _lora(self) -> LoraInfo:
        if self.lora_info is None:
            raise RuntimeError("the run is not set up yet")
        return self.lora_info

    # --- setup ----------------------------------------------------------------------------

    def _setup(self) -> None:
        from scu_tui.training.trainer import Trainer

        s = self.settings
        self.folder.claim()
        if self.resume_dir is not None and not self.folder.has_checkpoint():
            raise UserError(f"--resume {self.resume_dir}: no complete checkpoint to resume")
        loaded: Loaded = self.loader.load(s)
        self.tokenizer = loaded.tokenizer
        self.lora_info = loaded.lora
        self.data = loaded.data
        group = self.peers.group if self.peers is not None else None
        self.trainer = t = Trainer(loaded.model, loaded.data, s, group=group)
        if self.peers is not None:
            self.peers.attach(t, self._lost_peers)
        self.memory = memory_watchdog(s.training.memory_limit_gb)
        if self.resume_dir is not None:
            checkpoint = self._load_newest_intact_checkpoint()
            if self.controller is not None:  # without the S-SCU, no rollback needs them
                self.snapshots.load(checkpoint)
            self._last_saved_step = t.step
            note = self.steering.resume(t.extra_state.get("controller"), t.step)
            if note is not None:
                self._notes.append(note)
            self.status.first_val_loss = float(t.extra_state.get("first_val_loss", math.nan))
            if t.step >= s.training.max_steps:
                raise UserError(
                    f"--resume {self.resume_dir}: already at step {t.step} of "
                    f"{s.training.max_steps}; raise --max-steps to train further"
                )
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.add_sink(JsonlSink(self.output_dir / RunFile.EVENTS))
        self.folder.write_settings(s, loaded.resolved)
        if self.resume_dir is None:
            self.write_metrics(self.steering.book.metrics())
        self._start_listening()

    def _start_listening(self) -> None:
        """Start the control channel, if the entry point asked for one.

        Without one, a ``control.json`` left in the folder is a killed run's (this run
        holds the folder's lock, so no live run can be writing there): it goes, so that
        watchers do not take this run for that dead one.
        """
        if self.listen is None:
            self.folder.forget_dead_control()
            return
        try:
            self.control = self.listen(self)
        except OSError as exc:
            self.control = None
            self.emit(
                MessageEvent(
                    0, level=MessageLevel.WARNING, text=f"no control socket (attach off): {exc}"
                )
            )

    def _stop_listening(self) -> None:
        control, self.control = self.control, None
        if control is not None:
            control.close()

    def _load_newest_intact_checkpoint(self) -> Path:
        """Restore the newest checkpoint that loads; one passed over as damaged is a note."""
        folder, notes = self.folder.load_newest_intact(self._trainer.load_state)
        self._notes.extend(notes)
        return folder

    # --- the loop -------------------------------------------------------------------------

    def execute(self) -> int:
        """Train to the end (or a stop); returns the exit code. UserError propagates."""
        try:
            self._setup()
        except UserError:
            self.folder.release_after_refusal()
            raise
        except OSError as exc:  # the folder cannot be written: the user's to fix, not a bug
            self.folder.release_after_refusal()
            raise UserError(write_failure_text(exc)) from None
        except BaseException:
            self.folder.release_after_refusal()
            raise
        try:
            return self._train()
        finally:
            self._stop_listening()  # after a failure too (a third Ctrl-C, say)
            self.folder.unlock()

    def _train(self) -> int:
        s, t, data = self.settings, self._trainer, self.data
        assert data is not None
        self.emit(
            StartEvent(
                t.step,
                max_steps=s.training.max_steps,
                preset=s.name,
                model=s.model.path,
                data=s.data.path,
                output_dir=str(self.output_dir),
                trainable_parameters=self._lora.trainable,
                total_parameters=self._lora.total,
                train_examples=len(data.train),
                valid_examples=len(data.valid),
                truncated=data.train.truncated,
                resumed=self.resume_dir is not None,
                knobs=self.knob_values(),
                mode=self.mode,
                world_size=self.peers.world_size if self.peers is not None else 1,
            )
        )
        for note in data.notes:
            self.emit(MessageEvent(t.step, level=MessageLevel.INFO, text=note))
        for note in self._notes:
            self.emit(MessageEvent(t.step, level=MessageLevel.WARNING, text=note))
        if blas.late_import():
            self.emit(MessageEvent(t.step, level=MessageLevel.WARNING, text=blas.LATE_IMPORT))
        try:
            if t.step == 0:
                self._evaluate()
                if self.controller is not None:
                    self._keep_state()
                    self.save_checkpoint(CheckpointReason.START)  # the first rollback target
            while t.step < s.training.max_steps:
                self._handle_commands()
                if self._stop:
                    break
                if self.steering.trial_due(one_process=self.peers is None):
                    self._lr_trial()
                else:
                    self._one_step()
            if self._stop is None:
                self._finish_checkpoint(CheckpointReason.FINAL)
                if s.training.compare_at_end and self._real_model_and_data:
                    self._compare_at_end()
                return self._done(RunStatus.COMPLETED, ExitCode.OK)
            if self._stop == Decider.SIGNAL:
                self._finish_checkpoint(CheckpointReason.SIGNAL)
                return self._done(RunStatus.INTERRUPTED, ExitCode.INTERRUPTED)
            self._finish_checkpoint(CheckpointReason.USER)
            return self._done(RunStatus.STOPPED, ExitCode.OK)
        except Exception as exc:  # a failure in training: report it, keep the last checkpoint
            if isinstance(exc, OSError):
                message = write_failure_text(exc)
            elif isinstance(exc, TrainingFailed):
                message = str(exc)
            else:
                message = f"{type(exc).__name__}: {exc}"
            self._emit_quietly(MessageEvent(self.step, level=MessageLevel.ERROR, text=message))
            return self._done(RunStatus.FAILED, ExitCode.FAILED, message)

    def _one_step(self) -> None:
        s = self.settings
        result = self._train_and_report()
        last = result.step == s.training.max_steps
        if result.step % s.training.eval_every == 0 or last:
            self._evaluate()
        self.steering.step(
            result.step, result.loss, result.grad_norm, result.lr, result.skipped, result.alignment
        )
        if self.controller is not None:
            self._keep_state()
        if self._rolled_back:  # the state it went back to, as the step ends
            self.save_checkpoint(CheckpointReason.ROLLBACK)
        elif result.step % s.training.save_every == 0 and not last:
            self.save_checkpoint(CheckpointReason.SCHEDULE)

    def _train_and_report(self) -> StepResult:
        """One optimizer step, and its event (and warnings)."""
        import mlx.core as mx

        s, t = self.settings, self._trainer
        with self._together("step"):
            result = t.train_step()
        if math.isfinite(result.loss):
            self.status.losses.append(result.loss)
        reading = read_os_memory()
        self.emit(
            StepEvent(
                result.step,
                loss=result.loss,
                grad_norm=result.grad_norm,
                lr=result.lr,
                tokens=result.tokens,
                tokens_per_second=result.tokens / max(result.seconds, 1e-9),
                peak_memory_gb=mx.get_peak_memory() / 1e9,
                step_seconds=result.seconds,
                eta_seconds=t.eta_seconds(),
                max_steps=s.training.max_steps,
                weight_decay=t.knobs.weight_decay,
                dropout=t.knobs.dropout,
                batch_size=s.training.batch_size,
                accumulation=t.knobs.accumulation,
                skipped=result.skipped,
                alignment=result.alignment,
                active_memory_gb=mx.get_active_memory() / 1e9,
                cache_memory_gb=mx.get_cache_memory() / 1e9,
                **reading.event_fields(),
            )
        )
        self._watch_memory(result.step, reading)
        if result.skipped:
            self.emit(
                MessageEvent(
                    result.step,
                    level=MessageLevel.WARNING,
                    text="non-finite loss or gradient: the update was skipped",
                )
            )
        return result

    def _lr_trial(self) -> None:
        """The LR trial (:mod:`scu_tui.control.trial`): from the state of this step,
        TRIAL_STEPS steps at the LR, then the same batches again from the same state at
        FACTOR x the LR; the run goes on from the winning branch's last state, with both
        branches' steps counted. Nothing else happens during it: no analysis, no kept
        state, no checkpoint, and a validation pass due inside it runs once at its end, on
        the state the run goes on from. A stop asked for during it abandons it, back to
        where it began (a resumed run holds it again, the same way); the run then
        checkpoints the state it goes on from. It is held between two steps, where the
        run handles commands: a resumed run whose checkpoint is the state a trial was due
        from holds it first."""
        from scu_tui.control.trial import FACTOR, TRIAL_STEPS, judge
        from scu_tui.training import snapshots as kept

        s, t = self.settings, self._trainer
        first, position, multiplier = t.step, t.stream.state(), t.knobs.lr_multiplier
        start = kept.take(t)
        self.steering.trial_started(first)
        branches: list[list[StepResult]] = []
        current_end: kept.Snapshot | None = None
        for factor in (1.0, FACTOR):
            if branches:  # the same batches again, from the same state
                current_end = kept.take(t)
                kept.restore(t, start)
                t.stream.load_state(position)
                t.step = first + TRIAL_STEPS
                t.set_knob(Knob.LR_MULTIPLIER, multiplier * factor)
            steps: list[StepResult] = []
            for _ in range(TRIAL_STEPS):
                if self._stop_asked:
                    kept.restore(t, start)
                    t.stream.load_state(position)
                    return
                steps.append(self._train_and_report())
            branches.append(steps)
        current, tried = branches
        verdict = judge([r.loss for r in current], [r.loss for r in tried])
        if not verdict.tried_wins:
            assert current_end is not None
            kept.restore(t, current_end)
        t.step = first + 2 * TRIAL_STEPS
        t.set_knob(Knob.LR_MULTIPLIER, multiplier)  # the trial's move applies the lower one
        self.steering.trial_done(first, verdict, tried if verdict.tried_wins else current)
        every = s.training.eval_every
        if (t.step // every) > (first // every):
            self._evaluate()
        self.save_checkpoint(CheckpointReason.TRIAL)  # the state the run goes on from

    @contextlib.contextmanager
    def _together(self, op: str) -> Iterator[None]:
        """Run ``op`` (a step or an evaluation) on every rank at once, if there are others."""
        if self.peers is None:
            yield
            return
        with self.peers.collective(op):
            yield

    def _lost_peers(self, text: str) -> None:
        """The other ranks stopped answering (the watchdog's thread; the process ends
        next): record the failure, best effort; the last checkpoint stays as it was."""
        if self.status.status != RunStatus.RUNNING:
            return
        self.status.status = RunStatus.FAILED
        self.status.message = text
        with contextlib.suppress(Exception):
            self._write_summary()
        self._emit_quietly(MessageEvent(self.step, level=MessageLevel.ERROR, text=text))
        self._emit_quietly(DoneEvent(self.step, status=RunStatus.FAILED, message=text))
        for sink in self.sinks:
            with contextlib.suppress(Exception):
                sink.close()

    def _evaluate(self) -> None:
        t = self._trainer
        tic = time.perf_counter()
        previous_best = t.best_val_loss
        with self._together("eval"):
            val_loss = t.evaluate()
        is_best = val_loss < previous_best
        if math.isnan(self.status.first_val_loss):
            self.status.first_val_loss = val_loss
        self.emit(
            EvalEvent(
                t.step,
                val_loss=val_loss,
                best_val_loss=t.best_val_loss,
                is_best=is_best,
                seconds=time.perf_counter() - tic,
            )
        )
        self.steering.evaluated(t.step, val_loss, is_best)
        if is_best and t.step > 0:
            self._save_best()
        if self.settings.training.samples and self._real_model_and_data:
            self._answer_samples()

    def _watch_memory(self, step: int, reading: OsMemory) -> None:
        """Near the memory this machine gives a run, or paging already: pause with a
        checkpoint and say why (which figure), before the system pages for hours (a Mac)
        or kills the process (Linux). A machine that swaps for other reasons is a warning."""
        import mlx.core as mx

        if self.memory is None:
            return
        alarm = self.memory.check(mx.get_peak_memory(), reading)
        if alarm is None or (alarm.pause and self.paused):
            return
        if alarm.pause:
            self.save_checkpoint(CheckpointReason.MEMORY)
            self._apply(Command(CommandKind.PAUSE, by=Decider.GUARD))
        self.emit(MessageEvent(step, level=MessageLevel.WARNING, text=alarm.text))

    def _answer_samples(self) -> None:
        """The adapters' answers to a few fixed validation prompts (a person sees them
        improve); a failure here is a warning, never the run's end."""
        from scu_tui.extras import sample_answers

        try:
            samples = sample_answers(
                self._trainer.model, self.tokenizer, self.settings, self._sample_prompts
            )
        except (UserError, ValueError, RuntimeError, OSError) as exc:
            self.settings = self.settings.replace({"training.samples": 0})
            note = f"no samples: {exc}"
            self.emit(MessageEvent(self.step, level=MessageLevel.WARNING, text=note))
            return
        self._sample_prompts = [(s["prompt"], s["reference"]) for s in samples]
        self.emit(SamplesEvent(self.step, samples=samples))

    def _compare_at_end(self) -> None:
        """Did the fine-tune help: the base model and the best adapters on the test split,
        in ``comparison.json`` and as an event; a failure here is a warning only."""
        from scu_tui.compare import COMPARISON_FILE, adapter_folder, compare_model, load_test_set

        t = self._trainer
        try:
            adapters = adapter_folder(self.output_dir)
            if adapters != self.output_dir:  # the best, not the last: load them to compare
                t.model.load_weights(str(adapters / RunFile.ADAPTERS), strict=False)
            tests = load_test_set(self.settings, self.tokenizer)
            result = compare_model(
                t.model,
                self.tokenizer,
                self.settings,
                tests,
                str(adapters),
                samples=self.settings.training.compare_samples,
            )
            atomic_write_json(self.output_dir / COMPARISON_FILE, result.to_dict())
        except (UserError, ValueError, RuntimeError, OSError) as exc:
            note = f"no comparison: {exc}"
            self.emit(MessageEvent(self.step, level=MessageLevel.WARNING, text=note))
            return
        data = result.to_dict()
        self.emit(
            ComparisonEvent(
                self.step,
                split=result.split,
                rows=result.rows,
                adapters=result.adapters,
                base_loss=result.base_loss,
                tuned_loss=result.tuned_loss,
                fixed=data["fixed"],
                broke=data["broke"],
                examples=data["examples"],
            )
        )

    @property
    def _real_model_and_data(self) -> bool:
        """The model and data came from their paths (not from a loader passed in by a bench
        or a test): only then can they be read again, or named in a command."""
        return isinstance(self.loader, MlxLmLoader)

    def _farewell(self) -> dict[str, Any]:
        """Where the run went and how to use it, for the done event."""
        from scu_tui.compare import adapter_folder
        from scu_tui.generate import example_prompt, mlx_lm_command

        if not self._real_model_and_data:
            return {"output_dir": str(self.output_dir)}
        try:
            adapters = adapter_folder(self.output_dir)
            command = mlx_lm_command(self.output_dir, self.settings, example_prompt(self.settings))
        except (UserError, ValueError, OSError):
            return {"output_dir": str(self.output_dir)}
        best = self._trainer.best_val_loss if self.trainer is not None else math.nan
        return {
            "output_dir": str(self.output_dir),
            "best_val_loss": best,
            "adapters": str(adapters),
            "command": command,
        }

    # --- what steering needs of the run (scu_tui.control.steering.SteeredRun) -----------

    def go_back(self, to_step: int | None) -> int:
        """Restore the kept good state of ``to_step`` or, without one, the newest intact
        checkpoint, past the batches that led here (a rollback: the data position stays);
        the tokens, time and skipped steps so far and the best validation loss (best/ holds
        its adapters) still count.

        The run then checkpoints the state it went back to, once the rollback is complete
        (its lower LR, the controller's and steering's records) and the step or command
        that made it is over: exactly what the run goes on from. That checkpoint replaces
        any of the same step and, being the newest state, removes those of later steps
        (the abandoned branch's, taken during the damage) after it is in place
        (:meth:`RunFolder.save_checkpoint`). So ``--resume``, which takes the newest
        checkpoint by step, continues the branch the run is on, exactly as if it had not
        stopped, even with no checkpoint at or before the step it went back to; and a
        kill at any point of it leaves every checkpoint up to that step intact. Removing
        the later ones alone would resume from an older checkpoint, replaying the damage
        without what a person did since; the top-level adapters follow the checkpoint, and
        ``best/`` keeps the best adapters seen, from whichever branch.
        """
        t = self._trainer
        self._rolled_back = True
        if to_step is not None and self.snapshots.restore(t, to_step):
            if self.peers is not None:
                self.peers.resync()  # every rank goes back with it
            return t.step
        data_position = t.stream.state()
        kept = (t.tokens_seen, t.train_seconds, t.skipped_steps, t.best_val_loss)
        self._notes.clear()
        self._load_newest_intact_checkpoint()
        for note in self._notes:
            self.emit(MessageEvent(t.step, level=MessageLevel.WARNING, text=note))
        t.stream.load_state(data_position)  # skip the batches that led here
        if self.peers is not None:
            self.peers.resync()  # every rank goes back with it
        t.tokens_seen, t.train_seconds, t.skipped_steps, t.best_val_loss = kept
        self.snapshots.drop_after(t.step)
        return t.step

    def _keep_state(self) -> None:
        """Keep the trainer's state in memory when the S-SCU's cadence says so."""
        assert self.controller is not None
        step = self._trainer.step
        if self.controller.snapshot_due(step):
            self.snapshots.take(self._trainer)
            self.snapshots.retain(self.controller.snapshot_taken(step))

    def pause(self, by: Decider) -> None:
        self._apply(Command(CommandKind.PAUSE, by=by))

    def write_metrics(self, records: list[dict[str, Any]]) -> None:
        self.folder.write_metrics(records)

    def paused_hint(self) -> str:
        """How to go on after the guard paused an observe-mode run (nobody may be watching)."""
        return (
            f"training paused at step {self.step}: the loss diverged and the S-SCU is in "
            f"observe mode. To continue, run 'scu-tui attach {self.output_dir}' and press p "
            '(m switches the mode), or send {"cmd": "resume"} to the socket named in '
            f"{self.output_dir / RunFile.CONTROL}"
        )

    # --- commands -------------------------------------------------------------------------

    def _handle_commands(self) -> None:
        """Carry out queued commands; while paused, wait here for more."""
        while True:
            try:
                command = self.commands.get(block=self.paused, timeout=0.5 if self.paused else None)
            except queue.Empty:
                if self.paused and not self._stop:
                    if self.peers is not None:
                        self.peers.heartbeat()  # the other ranks wait on this one
                    continue
                return
            self._apply(command)
            if self._rolled_back:  # an accepted rollback
                self.save_checkpoint(CheckpointReason.ROLLBACK)
            if self._stop:
                return

    def _apply(self, command: Command) -> None:
        t = self._trainer
        kind, value = command.kind, command.value
        if self.steering.command(command):  # mode, accept, veto
            return
        if kind == CommandKind.PAUSE and not self.paused:
            self.paused = True
            self.emit(PauseEvent(t.step, by=command.by))
        elif kind == CommandKind.RESUME and self.paused:
            self.paused = False
            self.emit(ResumeEvent(t.step, by=command.by))
        elif kind == CommandKind.SAVE:
            self.save_checkpoint(CheckpointReason.USER)
        elif kind == CommandKind.STOP:
            self._stop = Decider.SIGNAL if value == Decider.SIGNAL else Decider.USER
            self.paused = False
        elif kind == CommandKind.EVAL:
            self._evaluate()
        elif kind == CommandKind.SET and isinstance(value, KnobSetting):
            self.set_knob(value.knob, value.value, by=command.by)

    def set_knob(self, knob: Knob, value: float, by: Decider) -> None:
        """Change a knob before the next step (a person's, the S-SCU's or a rollback's)."""
        try:
            before, after = self._trainer.set_knob(knob, value)
        except ValueError as exc:
            note = f"cannot set {knob}: {exc}"
            self.emit(MessageEvent(self.step, level=MessageLevel.WARNING, text=note))
            return
        if self.peers is not None:
            self.peers.share(["set", knob, after])
        self.emit(KnobEvent(self.step, knob=knob, before=before, after=after, by=by))

    def knob_values(self) -> dict[str, float]:
        """The effective lr and every knob, by name (what the controller and events see)."""
        t = self._trainer
        return {"lr": t.current_lr(), **t.knobs.values()}

    def request_stop(self, reason: str = Decider.SIGNAL) -> None:
        """Thread- and signal-safe: stop after the current step, saving a checkpoint.
        ``reason``: ``"signal"`` (exit 130) or anything else (a person's stop, exit 0)."""
        by = Decider.SIGNAL if reason == Decider.SIGNAL else Decider.USER
        self.submit(Command(CommandKind.STOP, value=by, by=by))

    # --- files ----------------------------------------------------------------------------

    def save_checkpoint(self, reason: CheckpointReason) -> Path:
        """Write ``checkpoints/step-NNNNNN`` atomically (and remove those of later steps: a
        branch a rollback abandoned), then refresh the top-level adapters."""
        t = self._trainer
        steering = self.steering.state()
        if steering is not None:
            t.extra_state["controller"] = steering
        t.extra_state["first_val_loss"] = self.status.first_val_loss
        final = self.folder.save_checkpoint(t.step, self._save_state, self._lora.adapter_config)
        self._last_saved_step = t.step
        self._rolled_back = False
        self._write_top_level_adapters()
        self.folder.prune(self.settings.training.keep_checkpoints)
        self._write_summary()
        self.emit(CheckpointEvent(t.step, path=str(final), reason=reason))
        return final

    def _save_state(self, folder: Path) -> None:
        """The trainer's state and, with the S-SCU, the kept good states (resume keeps the
        same ones); a run without it keeps none, and writes no snapshot files."""
        self._trainer.save_state(folder)
        if self.controller is not None:
            self.snapshots.save(folder)

    def _finish_checkpoint(self, reason: CheckpointReason) -> None:
        if self._last_saved_step != self._trainer.step or self._rolled_back:
            self.save_checkpoint(reason)
        else:
            self._write_top_level_adapters()

    def _write_top_level_adapters(self) -> None:
        self.folder.write_adapters(self._trainer.save_adapters, self._lora.adapter_config)

    def _save_best(self) -> None:
        t = self._trainer
        final = self.folder.save_best(
            t.save_adapters, self._lora.adapter_config, t.step, t.best_val_loss
        )
        self.emit(CheckpointEvent(self.step, path=str(final), reason=CheckpointReason.BEST))

    def _write_summary(self) -> None:
        t = self._trainer
        losses = list(self.status.losses)
        book = self.steering.book
        by_kind = Counter(str(r.proposal.knob) for r in book.taken())
        summary = {
            "status": self.status.status,
            "message": self.status.message,
            "steps": t.step,
            "max_steps": self.settings.training.max_steps,
            "tokens": t.tokens_seen,
            "train_seconds": round(t.train_seconds, 3),
            "wall_seconds": round(time.time() - self.status.started, 3),
            "final_train_loss": sum(losses[-10:]) / len(losses[-10:]) if losses else None,
            "first_val_loss": _finite_or_none(self.status.first_val_loss),
            "last_val_loss": _finite_or_none(t.last_val_loss),
            "best_val_loss": _finite_or_none(t.best_val_loss),
            "skipped_steps": t.skipped_steps,
            "scu_seconds": round(self.steering.seconds, 4),
            "proposals": sum(1 for r in book if r.outcome != Outcome.CANCELLED),
            "actions_by_kind": dict(by_kind),
            "knobs": self.knob_values(),
            "world_size": self.peers.world_size if self.peers is not None else 1,
            "blas": blas.active or f"bundled ({blas.reason})",
            "model": self.settings.model.path,
            "data": self.settings.data.path,
            "memory": self._memory_summary(),
        }
        self.folder.write_summary(summary)
        self.write_metrics(book.metrics())

    def _memory_summary(self) -> dict[str, Any]:
        """MLX's figures beside the system's (what the watchdog saw), in GB."""
        import mlx.core as mx

        mlx_side = {
            "peak_memory_gb": mx.get_peak_memory() / 1e9,
            "active_memory_gb": mx.get_active_memory() / 1e9,
            "cache_memory_gb": mx.get_cache_memory() / 1e9,
        }
        return {**mlx_side, **(self.memory.summary() if self.memory is not None else {})}

    def _done(self, status: RunStatus, code: ExitCode, message: str = "") -> int:
        """Record the end; after a failure, every write is best effort (the disk may be full)
        and nothing here may raise over the message the user must see."""
        self.status.status = status
        self.status.message = message
        try:
            self._write_summary()
        except (OSError, RuntimeError):
            if code == ExitCode.OK:
                raise
        if self.peers is not None:
            self.peers.finish(code)  # every rank ends with this one
            if self.peers.lost and status in (RunStatus.INTERRUPTED, RunStatus.STOPPED):
                # A rank died as this one stopped: mlx.launch signals the others when one
                # dies, and the signal can come before this rank's next collective fails.
                # The ranks ignore a person's signals and wait for this rank's word, so a
                # rank missing here was lost, whatever stopped this one. (A run that
                # completed stays completed: its work is done and saved.)
                status, code = RunStatus.FAILED, ExitCode.FAILED
                message = "a rank was lost; the last checkpoint is kept (resume from it)"
                self.status.status, self.status.message = status, message
                with contextlib.suppress(OSError, RuntimeError):
                    self._write_summary()
        farewell = self._farewell() if self.trainer is not None else {}
        done = DoneEvent(self.step, status=status, message=message, **farewell)
        if code == ExitCode.OK:
            self.emit(done)
        else:
            self._emit_quietly(done)
        self._stop_listening()
        for sink in self.sinks:
            with contextlib.suppress(Exception):
                sink.close()
        return code


def memory_watchdog(limit_gb: float) -> MemoryWatchdog:
    """The watchdog on ``training.memory_limit_gb`` (0: what this machine gives a run)."""
    from scu_tui.check.environment import backend, memory_limit_bytes
    from scu_tui.check.watchdog import MemoryWatchdog

    limit = int(limit_gb * 1e9) if limit_gb > 0 else memory_limit_bytes()
    return MemoryWatchdog(limit, os_figure=backend() in ("CPU", "Metal"))


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None
