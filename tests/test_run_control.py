"""The S-SCU inside a real run on the demo: auto, ask (accept / veto / expiry), observe,
and the divergence guard. Runs are in-process so a test sink can answer proposals the
moment they are emitted (no sleeping, no polling).

What a proposal does to a run is tested with a scripted stand-in for the S-SCU that
proposes fixed changes at fixed steps: a real controller on a hot learning rate is
chaotic (its fate hangs on the BLAS and the CPU's kernels), so its decisions are tested
on a recorded event stream (test_scu_on_recorded_runs.py), and real hot runs only for
what must hold on any machine.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import mlx.core as mx
import pytest
from helpers import StandInController
from mlx.utils import tree_flatten, tree_unflatten

from scu_tui.config import Settings
from scu_tui.control.controller import GUARD_RULE, SEARCH_RULE, SETTLE_RULE
from scu_tui.control.policy import Proposal, action_text
from scu_tui.presets import load_preset
from scu_tui.protocol import Command, Event, RefusedEvent, event_from_dict
from scu_tui.remote.control import ControlClient, serve
from scu_tui.run import Run

pytestmark = pytest.mark.slow

SHORT = {
    "training.max_steps": 40,
    "training.eval_every": 20,
    "training.save_every": 10,
}
# On the demo a 30x learning rate gives erratic, spiky gradients.
HOT = {
    "training.learning_rate": 3e-2,
    "scu.lr_bounds": [1e-5, 1e-1],
    "training.max_steps": 80,
    "training.eval_every": 40,
    "training.save_every": 20,
}

#: step -> (knob, value after, rule)
Script = dict[int, tuple[str, float, str]]


class ScriptedController(StandInController):
    """A stand-in S-SCU: proposes the scripted changes at the scripted steps, nothing else.

    It tests what the run does with a proposal (apply, queue, expire, log, roll back), not
    what the policy decides.
    """

    def __init__(self, settings: Settings, script: Script) -> None:
        super().__init__(settings.scu, settings.training)
        self.script = dict(script)

    def decide(self, step: int, knobs: Mapping[str, float]) -> Proposal | None:
        if step not in self.script:
            return None
        knob, after, rule = self.script.pop(step)
        before = float(knobs["lr_multiplier" if knob == "rollback" else knob])
        return Proposal(
            id=f"s{step:04d}",
            step=step,
            rule=rule,
            diagnosis="scripted",
            knob=knob,
            before=before,
            after=after,
            reason=f"Scripted change of {knob}",
            action=action_text(knob, before, after),
        )


class Recorder:
    """A sink that keeps every event and can react to one on the training thread."""

    def __init__(self, react: Callable[[Event, Run], None] | None = None) -> None:
        self.events: list[dict[str, Any]] = []
        self.react = react
        self.run: Run | None = None

    def emit(self, event: Event) -> None:
        self.events.append(event.to_dict())
        if self.react is not None and self.run is not None:
            self.react(event, self.run)

    def close(self) -> None:
        pass

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == kind]


def refused_sentence(data: dict[str, Any]) -> str:
    """What the console and the socket print for a recorded refusal."""
    event = event_from_dict(data)
    assert isinstance(event, RefusedEvent)
    return event.sentence


def start(
    tmp_path: Path,
    mode: str,
    react: Callable[[Event, Run], None] | None = None,
    script: Script | None = None,
    base: Mapping[str, Any] = SHORT,
    **updates: Any,
) -> tuple[Run, Recorder, int]:
    settings = load_preset("demo").replace({**base, "scu.mode": mode, **updates})
    controller = ScriptedController(settings, script) if script is not None else None
    # as the command line starts it: with the control socket
    run = Run(settings, output_dir=tmp_path / "run", controller=controller, listen=serve)
    recorder = Recorder(react)
    recorder.run = run
    run.add_sink(recorder)
    code = run.execute()
    return run, recorder, code


def metrics(tmp_path: Path) -> list[dict[str, Any]]:
    return list(json.loads((tmp_path / "run" / "scu_training_metrics.json").read_text()))


def test_auto_mode_applies_each_knob_in_the_running_trainer(tmp_path: Path) -> None:
    script: Script = {
        10: ("lr_multiplier", 2.0, "raise_lr_slow"),
        15: ("weight_decay", 0.05, "raise_weight_decay"),
        20: ("accumulation", 2, "raise_accumulation"),
        25: ("dropout", 0.1, "raise_dropout"),
    }
    run, rec, code = start(tmp_path, "auto", script=script, **{"scu.control_frequency": 5})
    assert code == 0
    decisions = rec.of("decision")
    assert [(d["id"], d["outcome"], d["by"]) for d in decisions] == [
        (f"s{step:04d}", "applied", "controller") for step in sorted(script)
    ]
    knobs = {e["knob"]: e for e in rec.of("knob")}
    assert set(knobs) == {"lr_multiplier", "weight_decay", "accumulation", "dropout"}
    steps = {e["step"]: e for e in rec.of("step")}
    assert steps[11]["lr"] == pytest.approx(run.trainer.schedule.lr(10) * 2.0)
    assert steps[10]["lr"] == pytest.approx(run.trainer.schedule.lr(9))
    assert steps[16]["weight_decay"] == pytest.approx(0.05) and steps[15]["weight_decay"] == 0
    assert steps[21]["accumulation"] == 2 and steps[20]["accumulation"] == 1
    assert steps[26]["dropout"] == pytest.approx(0.1)
    t = run.trainer
    assert float(t.optimizer.state["weight_decay"].item()) == pytest.approx(0.05)
    assert (t.knobs.lr_multiplier, t.knobs.accumulation) == (2.0, 2)
    recorded = metrics(tmp_path)
    assert [m["outcome"] for m in recorded] == ["applied"] * 4
    assert recorded[0]["by"] == "controller" and recorded[0]["reason"]


def test_ask_mode_accept_applies_and_veto_does_not(tmp_path: Path) -> None:
    answers = iter(["accept", "veto"])

    def answer(event: Event, run: Run) -> None:
        if event.type == "proposal":
            run.submit(Command(next(answers)))

    script: Script = {
        10: ("lr_multiplier", 1.5, "raise_lr_slow"),
        20: ("weight_decay", 0.02, "raise_weight_decay"),
    }
    run, rec, code = start(tmp_path, "ask", answer, script=script)
    assert code == 0
    outcomes = [(d["id"], d["outcome"], d["by"]) for d in rec.of("decision")]
    assert outcomes == [("s0010", "accepted", "user"), ("s0020", "vetoed", "user")]
    (knob,) = rec.of("knob")
    assert (knob["knob"], knob["after"], knob["by"]) == ("lr_multiplier", 1.5, "user")
    assert run.trainer.knobs.weight_decay == 0.0  # the vetoed proposal moved nothing
    assert {m["id"]: m["outcome"] for m in metrics(tmp_path)} == {
        "s0010": "accepted",
        "s0020": "vetoed",
    }


def test_ask_mode_unanswered_proposal_expires_after_ttl(tmp_path: Path) -> None:
    script: Script = {10: ("lr_multiplier", 1.5, "raise_lr_slow")}
    _run, rec, code = start(tmp_path, "ask", script=script, **{"scu.proposal_ttl": 5})
    assert code == 0
    (expired,) = rec.of("decision")
    assert (expired["id"], expired["outcome"], expired["by"]) == ("s0010", "expired", "ttl")
    assert expired["step"] == 15
    assert not rec.of("knob")


def test_observe_mode_only_logs(tmp_path: Path) -> None:
    script: Script = {
        10: ("rollback", 0.25, "rollback_scripted"),
        20: ("lr_multiplier", 1.5, "raise_lr_slow"),
    }
    _run, rec, code = start(tmp_path, "observe", script=script)
    assert code == 0
    assert [p["rule"] for p in rec.of("proposal")] == ["rollback_scripted", "raise_lr_slow"]
    assert {d["outcome"] for d in rec.of("decision")} == {"observed"}
    assert not rec.of("knob") and not rec.of("rollback") and not rec.of("pause")


def test_a_mode_following_rollback_in_auto_mode_goes_back_with_the_lr_cut(tmp_path: Path) -> None:
    script: Script = {25: ("rollback", 0.25, "rollback_scripted")}
    run, rec, code = start(tmp_path, "auto", script=script)
    assert code == 0
    (rollback,) = rec.of("rollback")
    assert (rollback["step"], rollback["to_step"]) == (25, 20)  # the newest checkpoint
    (knob,) = rec.of("knob")
    assert (knob["knob"], knob["after"], knob["by"]) == ("lr_multiplier", 0.25, "controller")
    steps = [e["step"] for e in rec.of("step")]
    assert steps[:25] == list(range(1, 26)) and steps[25:] == list(range(21, 41))
    assert run.trainer.knobs.lr_multiplier == 0.25
    assert rec.of("done")[0]["status"] == "completed"


def test_mode_switch_mid_run(tmp_path: Path) -> None:
    def switch(event: Event, run: Run) -> None:
        if event.type == "step" and event.step == 5:
            run.submit(Command("mode", "observe"))

    script: Script = {20: ("lr_multiplier", 1.5, "raise_lr_slow")}
    run, rec, code = start(tmp_path, "auto", switch, script=script)
    assert code == 0
    assert rec.of("mode")[0]["mode"] == "observe" and run.mode == "observe"
    assert [d["outcome"] for d in rec.of("decision")] == ["observed"]
    assert run.trainer.knobs.lr_multiplier == 1.0


def test_a_hot_run_with_the_real_scu_completes_and_learns(tmp_path: Path) -> None:
    """30x the tuned LR with the real S-SCU in auto mode: whatever path the chaos takes on
    this machine's BLAS, the run must end completed, with a finite loss and a validation
    loss below its start; the S-SCU must have acted (a 30x LR is never left alone)."""
    _run, rec, code = start(tmp_path, "auto", base=HOT)
    assert code == 0 and rec.of("done")[0]["status"] == "completed"
    evals = rec.of("eval")
    assert evals[-1]["val_loss"] < evals[0]["val_loss"]
    assert math.isfinite(rec.of("step")[-1]["loss"])
    assert rec.of("proposal") and {d["outcome"] for d in rec.of("decision")} <= {
        "applied",
        "reverted",
        "cancelled",
    }


def poison(run: Run) -> None:
    name, value = tree_flatten(run.trainer.model.trainable_parameters())[0]
    run.trainer.model.update(tree_unflatten([(name, value * mx.array(math.nan))]))


def test_divergence_guard_rolls_back_with_a_lower_lr(tmp_path: Path) -> None:
    def nan_at_25(event: Event, run: Run) -> None:
        if event.type == "step" and event.step == 25 and not run.steering.rollbacks:
            poison(run)

    run, rec, code = start(
        tmp_path, "ask", nan_at_25, script={}, base=HOT, **{"training.learning_rate": 1e-3}
    )
    assert code == 0
    skipped = [e for e in rec.of("step") if e["skipped"]]
    assert [e["step"] for e in skipped] == [26]
    rollback = rec.of("rollback")[0]
    assert rollback["step"] == 26 and rollback["to_step"] == 20
    guard = rec.of("proposal")[0]
    assert guard["rule"] == "rollback" and guard["after"] == pytest.approx(0.5)
    assert guard["analysis"] == -1 and guard["step"] == 26  # the guard, on the step itself
    assert guard["reason"].startswith("Divergence (non-finite loss or gradients)")
    assert run.trainer.knobs.lr_multiplier <= 0.5
    final = rec.of("step")[-1]
    assert final["step"] == 80 and math.isfinite(final["loss"])


def test_divergence_in_observe_mode_pauses_and_says_how_to_go_on(tmp_path: Path) -> None:
    """Nobody may be watching a headless run: the pause says how to continue, and doing
    what it says (over the control socket, as attach does) continues the run."""

    def react(event: Event, run: Run) -> None:
        if event.type == "step" and event.step == 25 and not run.steering.rollbacks:
            poison(run)
        if event.type == "message" and "observe mode" in event.to_dict()["text"]:
            client = ControlClient(run.output_dir)
            try:
                assert client.request("mode", "auto")["ok"]  # so the guard may roll back
                assert client.request("resume")["ok"]
            finally:
                client.close()

    run, rec, code = start(
        tmp_path, "observe", react, script={}, base=HOT, **{"training.learning_rate": 1e-3}
    )
    assert code == 0
    pause = rec.of("pause")[0]
    assert (pause["step"], pause["by"]) == (26, "guard")
    hint = next(m["text"] for m in rec.of("message") if "observe mode" in m["text"])
    assert f"scu-tui attach {run.output_dir}" in hint and "press p" in hint
    assert rec.of("resume")[0]["by"] == "remote"
    assert rec.of("rollback")[0]["to_step"] == 20
    assert rec.of("done")[0]["status"] == "completed"
    assert math.isfinite(rec.of("step")[-1]["loss"]) and run.trainer.step == 80


def test_guard_does_not_fire_on_ordinary_batch_to_batch_variation(tmp_path: Path) -> None:
    # At a modest LR the demo's per-batch losses differ several-fold (short and long,
    # with and without a system message) while training is perfectly healthy.
    _run, rec, code = start(
        tmp_path,
        "auto",
        base=HOT,
        **{"training.learning_rate": 2e-4, "training.max_steps": 120},
    )
    assert code == 0
    assert not rec.of("rollback")
    assert not [p for p in rec.of("proposal") if p["rule"] == "rollback"]


class RollbackAt(ScriptedController):
    """Proposes a mode-following rollback every time training reaches one of ``steps``."""

    def __init__(self, settings: Settings, steps: set[int]) -> None:
        super().__init__(settings, {})
        self.steps = steps

    def decide(self, step: int, knobs: Mapping[str, float]) -> Proposal | None:
        if step in self.steps:
            self.script[step] = ("rollback", knobs["lr_multiplier"] * 0.5, "rollback_scripted")
        return super().decide(step, knobs)


def test_rollbacks_that_make_progress_in_between_never_give_up(tmp_path: Path) -> None:
    # seven rollbacks, more than the cap, but each after training got further than before
    steps = (14, 24, 34, 44, 54, 64, 74)
    script: Script = {
        step: ("rollback", 0.5**i, "rollback_scripted") for i, step in enumerate(steps)
    }
    _run, rec, code = start(tmp_path, "auto", script=script, **{"training.max_steps": 80})
    assert code == 0 and rec.of("done")[0]["status"] == "completed"
    assert [r["step"] for r in rec.of("rollback")] == list(steps)


def test_rollbacks_without_progress_give_up_with_one_clear_line(tmp_path: Path) -> None:
    settings = load_preset("demo").replace({**SHORT, "scu.mode": "auto"})
    controller = RollbackAt(settings, {25})  # back to step 20, and again, and again
    run = Run(settings, output_dir=tmp_path / "run", controller=controller)
    rec = Recorder()
    run.add_sink(rec)
    assert run.execute() == 1
    assert len(rec.of("rollback")) == 5
    (error,) = [m for m in rec.of("message") if m["level"] == "error"]
    assert error["text"].startswith("training diverged 6 times without progress in between")
    assert rec.of("done")[0]["status"] == "failed"


# --- one truth: analyses, answers by id, rollbacks that cut the timeline ---------------------


def test_every_control_period_has_an_analysis_and_proposals_name_theirs(tmp_path: Path) -> None:
    _run, rec, code = start(
        tmp_path, "auto", base=HOT, **{"training.max_steps": 120, "scu.control_frequency": 20}
    )
    assert code == 0
    analyses = rec.of("analysis")
    steps_seen = {e["step"] for e in rec.of("step")}
    # a step has one proposal: where a per-step rule (the guard, the start-up search)
    # made it on a control step, that step is not analysed
    early = {p["step"] for p in rec.of("proposal") if p["analysis"] == -1}
    control = {s for s in steps_seen if s % 20 == 0}
    assert {a["step"] for a in analyses} == control - early
    assert len(control - early) >= len(control) - 1
    for a in analyses:
        assert a["diagnosis"] and a["why"] and a["trend"] and a["gradients"]
        assert {"energy_shares", "level_entropy", "total_entropy"} <= set(a["wavelet"])
    latest: dict[str, Any] = {}  # the newest analysis: a proposal follows its own at once
    for e in rec.events:
        if e["type"] == "analysis":
            latest = e
        elif e["type"] == "proposal" and e["analysis"] == -1:  # a per-step rule's
            assert e["rule"] in (GUARD_RULE, SEARCH_RULE, SETTLE_RULE)
        elif e["type"] == "proposal":
            assert latest["step"] == e["analysis"] == e["step"]
            assert (latest["proposal"], latest["rule"]) == (e["id"], e["rule"])
            assert latest["diagnosis"] == e["diagnosis"]
    analysed = {a["proposal"] for a in analyses if a["proposal"]}
    assert analysed == {p["id"] for p in rec.of("proposal") if p["analysis"] != -1}


def test_a_rollback_cancels_what_its_abandoned_branch_proposed(tmp_path: Path) -> None:
    def accept_the_rollback(event: Event, run: Run) -> None:
        data = event.to_dict()
        if event.type == "proposal" and data["knob"] == "rollback":
            run.submit(Command("accept", data["id"]))
        if event.type == "rollback":
            run.submit(Command("accept", "s0022"))  # too late: its branch is gone

    script: Script = {
        12: ("weight_decay", 0.02, "raise_weight_decay"),  # before the checkpoint at 20
        22: ("lr_multiplier", 1.5, "raise_lr_slow"),  # after it
        25: ("rollback", 0.25, "rollback_scripted"),
    }
    run, rec, code = start(tmp_path, "ask", accept_the_rollback, script=script)
    assert code == 0
    outcomes = {d["id"]: d["outcome"] for d in rec.of("decision")}
    assert outcomes["s0025"] == "accepted" and outcomes["s0022"] == "cancelled"
    assert outcomes.get("s0012") in (None, "expired")  # its branch survives: still open
    refusal = [refused_sentence(r) for r in rec.of("refused") if r["id"] == "s0022"]
    assert refusal == ["proposal s0022 is no longer pending (it was cancelled); nothing done"]
    assert not [m for m in rec.of("message") if "s0022" in m["text"]]  # typed, not prose
    assert run.trainer.knobs.lr_multiplier == 0.25
    by_id = {m["id"]: m for m in metrics(tmp_path)}
    assert by_id["s0022"]["outcome"] == "cancelled" and by_id["s0022"]["by"] == "rollback"
    summary = json.loads((tmp_path / "run" / "scu_training_summary.json").read_text())
    assert summary["proposals"] == 2  # the cancelled one is not counted


def test_answering_an_id_that_is_no_longer_pending_changes_nothing(tmp_path: Path) -> None:
    def late(event: Event, run: Run) -> None:
        if event.type == "proposal" and event.to_dict()["id"] == "s0015":
            run.submit(Command("veto", "s0010"))  # expired at step 13, while on screen

    script: Script = {
        10: ("lr_multiplier", 1.5, "raise_lr_slow"),
        15: ("weight_decay", 0.02, "raise_weight_decay"),
    }
    run, rec, code = start(tmp_path, "ask", late, script=script, **{"scu.proposal_ttl": 3})
    assert code == 0
    assert [(d["id"], d["outcome"]) for d in rec.of("decision")] == [
        ("s0010", "expired"),
        ("s0015", "expired"),
    ]
    (refused,) = rec.of("refused")
    assert refused["id"] == "s0010" and refused["command"] == "veto"
    assert refused["reason"] == "it was expired"
    assert refused_sentence(refused) == (
        "proposal s0010 is no longer pending (it was expired); nothing done"
    )
    assert not rec.of("knob") and run.trainer.knobs.weight_decay == 0.0


def test_near_the_memory_limit_the_run_pauses_with_a_checkpoint_and_says_why(
    tmp_path: Path,
) -> None:
    def stop_when_told(event: Event, run: Run) -> None:
        if event.type == "message" and "of the 0.0 GB" in event.to_dict()["text"]:
            run.submit(Command("stop"))

    _run, rec, code = start(
        tmp_path, "auto", stop_when_told, script={}, **{"training.memory_limit_gb": 0.001}
    )
    assert code == 0
    (pause,) = rec.of("pause")
    assert (pause["step"], pause["by"]) == (1, "guard")
    saved = [c for c in rec.of("checkpoint") if c["reason"] == "memory"]
    assert saved and saved[0]["step"] == 1 and Path(saved[0]["path"]).is_dir()
    (message,) = [m["text"] for m in rec.of("message") if "of the 0.0 GB" in m["text"]]
    # the figure that decides whether this machine pages, by name
    assert message.startswith("peak resident memory (VmHWM) ")
    assert "paused with a checkpoint" in message
    assert rec.of("done")[0]["status"] == "stopped"
