"""The S-SCU inside a real run on the demo: auto, ask (accept / veto / expiry), observe,
and the divergence guard. Runs are in-process so a test sink can answer proposals the
moment they are emitted (no sleeping, no polling)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mlx.core as mx
import pytest
from mlx.utils import tree_flatten, tree_unflatten

from scu_tui.events import Command, Event
from scu_tui.presets import load_preset
from scu_tui.run import Run

# On the demo, a 30x learning rate gives erratic, spiky gradients: the S-SCU proposes early,
# first a rollback with the LR x0.25, then ordinary changes.
HOT = {
    "training.learning_rate": 3e-2,
    "scu.lr_bounds": [1e-5, 1e-1],
    "training.max_steps": 80,
    "training.eval_every": 40,
    "training.save_every": 20,
}


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


def start(
    tmp_path: Path, mode: str, react: Callable[[Event, Run], None] | None = None, **updates: Any
) -> tuple[Run, Recorder, int]:
    settings = load_preset("demo").replace({**HOT, "scu.mode": mode, **updates})
    run = Run(settings, output_dir=tmp_path / "run")
    recorder = Recorder(react)
    recorder.run = run
    run.add_sink(recorder)
    code = run.execute()
    return run, recorder, code


def metrics(tmp_path: Path) -> list[dict[str, Any]]:
    return list(json.loads((tmp_path / "run" / "scu_training_metrics.json").read_text()))


def test_auto_mode_applies_and_the_optimizer_runs_with_the_new_value(tmp_path: Path) -> None:
    run, rec, code = start(tmp_path, "auto")
    assert code == 0
    decisions = rec.of("decision")
    assert decisions and all(d["outcome"] == "applied" for d in decisions)
    knob = next(e for e in rec.of("knob") if e["by"] == "controller")
    steps = {e["step"]: e for e in rec.of("step")}
    after = steps[knob["step"] + 1]
    if knob["knob"] == "accumulation":
        assert after["accumulation"] == knob["after"]
        assert after["tokens"] > 1.5 * steps[knob["step"]]["tokens"]
    else:
        assert knob["knob"] == "lr_multiplier"
        base = run.trainer.schedule.lr(knob["step"])
        assert after["lr"] == pytest.approx(base * knob["after"])
    recorded = metrics(tmp_path)
    assert recorded[0]["outcome"] == "applied" and recorded[0]["by"] == "controller"
    assert recorded[0]["reason"] and recorded[0]["evidence"] and recorded[0]["signals"]


def test_ask_mode_accept_applies_and_veto_does_not(tmp_path: Path) -> None:
    answers = iter(["accept", "veto"])

    def answer(event: Event, run: Run) -> None:
        if event.type == "proposal":
            run.submit(Command(next(answers, "veto")))

    _run, rec, code = start(tmp_path, "ask", answer, **{"training.max_steps": 200})
    assert code == 0
    outcomes = [(d["outcome"], d["by"]) for d in rec.of("decision")]
    assert outcomes[0] == ("accepted", "user")
    assert ("vetoed", "user") in outcomes
    accepted = rec.of("proposal")[0]
    knob = next(e for e in rec.of("knob") if e["by"] == "user")
    if accepted["knob"] == "rollback":  # an erratic-gradient rollback waits for the answer
        assert knob["knob"] == "lr_multiplier" and rec.of("rollback")
    else:
        assert knob["knob"] == accepted["knob"]
    assert knob["after"] == pytest.approx(accepted["after"])
    vetoed_ids = {d["id"] for d in rec.of("decision") if d["outcome"] == "vetoed"}
    changed = {e["step"] for e in rec.of("knob")}
    vetoed_steps = {p["step"] for p in rec.of("proposal") if p["id"] in vetoed_ids}
    assert not vetoed_steps & changed  # a vetoed proposal moved nothing
    by_id = {m["id"]: m for m in metrics(tmp_path)}
    assert {by_id[i]["outcome"] for i in vetoed_ids} == {"vetoed"}


def test_ask_mode_unanswered_proposal_expires_after_ttl(tmp_path: Path) -> None:
    _run, rec, code = start(tmp_path, "ask", None, **{"scu.proposal_ttl": 5})
    assert code == 0
    proposal = rec.of("proposal")[0]
    expired = next(d for d in rec.of("decision") if d["id"] == proposal["id"])
    assert expired["outcome"] == "expired" and expired["by"] == "ttl"
    assert expired["step"] == proposal["step"] + 5
    assert not [e for e in rec.of("knob") if e["by"] != "guard"]


def test_observe_mode_only_logs(tmp_path: Path) -> None:
    _run, rec, code = start(tmp_path, "observe")
    assert code == 0 and rec.of("proposal")
    assert rec.of("proposal")[0]["rule"] == "rollback_erratic"  # logged like any other
    assert {d["outcome"] for d in rec.of("decision")} == {"observed"}
    assert not rec.of("knob") and not rec.of("rollback") and not rec.of("pause")


def test_erratic_gradients_roll_back_in_auto_mode(tmp_path: Path) -> None:
    _run, rec, code = start(tmp_path, "auto")
    assert code == 0
    first = rec.of("proposal")[0]
    assert first["rule"] == "rollback_erratic" and first["reason"].startswith("Erratic gradients")
    rollback = rec.of("rollback")[0]
    assert rollback["step"] == first["step"] and rollback["to_step"] < first["step"]
    knob = next(e for e in rec.of("knob") if e["knob"] == "lr_multiplier")
    assert knob["after"] == pytest.approx(0.25) and knob["by"] == "controller"
    assert rec.of("done")[0]["status"] == "completed"


def test_mode_switch_mid_run(tmp_path: Path) -> None:
    def switch(event: Event, run: Run) -> None:
        if event.type == "step" and event.step == 5:
            run.submit(Command("mode", "observe"))

    run, rec, code = start(tmp_path, "auto", switch)
    assert code == 0
    assert rec.of("mode")[0]["mode"] == "observe" and run.mode == "observe"
    assert {d["outcome"] for d in rec.of("decision")} <= {"observed"}


def poison(run: Run) -> None:
    name, value = tree_flatten(run.trainer.model.trainable_parameters())[0]
    run.trainer.model.update(tree_unflatten([(name, value * mx.array(math.nan))]))


def test_divergence_guard_rolls_back_with_a_lower_lr(tmp_path: Path) -> None:
    def nan_at_25(event: Event, run: Run) -> None:
        if event.type == "step" and event.step == 25 and not run.rollbacks:
            poison(run)

    run, rec, code = start(tmp_path, "ask", nan_at_25, **{"training.learning_rate": 1e-3})
    assert code == 0
    skipped = [e for e in rec.of("step") if e["skipped"]]
    assert [e["step"] for e in skipped] == [26]
    rollback = rec.of("rollback")[0]
    assert rollback["step"] == 26 and rollback["to_step"] == 20
    guard = rec.of("proposal")[0]
    assert guard["rule"] == "divergence_guard" and guard["after"] == pytest.approx(0.5)
    assert run.trainer.knobs.lr_multiplier <= 0.5
    final = rec.of("step")[-1]
    assert final["step"] == 80 and math.isfinite(final["loss"])


def test_divergence_in_observe_mode_pauses(tmp_path: Path) -> None:
    def nan_then_stop(event: Event, run: Run) -> None:
        if event.type == "step" and event.step == 25:
            poison(run)
        if event.type == "pause":
            run.submit(Command("stop"))

    run, rec, code = start(tmp_path, "observe", nan_then_stop, **{"training.learning_rate": 1e-3})
    assert code == 0  # a user stop after the pause
    assert rec.of("pause")[0]["by"] == "guard"
    assert not rec.of("rollback") and run.trainer.step == 26
    assert rec.of("done")[0]["status"] == "stopped"


def test_guard_does_not_fire_on_ordinary_batch_to_batch_variation(tmp_path: Path) -> None:
    # At a modest LR the demo's per-batch losses differ several-fold (short and long,
    # with and without a system message) while training is perfectly healthy.
    _run, rec, code = start(
        tmp_path, "auto", None, **{"training.learning_rate": 2e-4, "training.max_steps": 120}
    )
    assert code == 0
    assert not rec.of("rollback")
    assert not [p for p in rec.of("proposal") if p["rule"] == "divergence_guard"]
