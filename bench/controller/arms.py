"""The arms: fixed schedules, the S-SCU, and a placebo that changes the LR at random."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from bench.controller.tasks import Task
from scu_tui.config import Settings
from scu_tui.control.controller import Controller
from scu_tui.control.policy import LR, Knobs, Proposal, action_text, bounded_value

#: The arms the target is judged on, in the order they run (the placebo copies the number
#: of changes of its paired S-SCU run).
ARMS = ("constant", "cosine", "plateau", "scu", "placebo")
#: Arms that are measured but not judged (never a cell's best): the S-SCU riding the
#: warmup+cosine base instead of owning the decay on a constant one.
EXTRA_ARMS = ("scu_cosine",)
ARM_LABELS = {
    "constant": "constant",
    "cosine": "warmup+cosine",
    "plateau": "plateau",
    "scu": "S-SCU auto",
    "placebo": "placebo",
    "scu_cosine": "S-SCU on cosine",
}
#: The base schedule under each arm; the S-SCU (and its placebo) own the decay on a
#: constant base (measured against riding cosine: the scu_cosine arm).
SCHEDULES = {
    "constant": "constant",
    "plateau": "plateau",
    "cosine": "cosine",
    "scu": "constant",
    "placebo": "constant",
    "scu_cosine": "cosine",
}
LR_GRID = (0.1, 0.3, 1.0, 3.0, 10.0)
#: The S-SCU's lr bounds, as multiples of the task's base lr: wider than the whole grid,
#: so the bounds never do the controller's work for it.
LR_BOUNDS = (1e-3, 30.0)


class PlaceboController(Controller):
    """Random LR changes at planned control steps, through the same proposal path."""

    def __init__(self, settings: Settings, plan: dict[int, float]) -> None:
        super().__init__(settings.scu, settings.training)
        self.plan = dict(plan)
        self.fired: set[int] = set()
        self.count = 0

    def decide(self, step: int, knobs: Mapping[str, float]) -> Proposal | None:
        factor = self.plan.get(step)
        if factor is None or step in self.fired:
            return None
        self.fired.add(step)
        current = Knobs.from_mapping(knobs, self.training)
        before = current.lr_multiplier
        after = bounded_value(LR, before, before * factor, current, self.scu)
        self.count += 1
        return Proposal(
            id=f"r{self.count:04d}",
            step=step,
            rule="placebo_random",
            diagnosis="placebo",
            knob=LR,
            before=before,
            after=after,
            reason="Placebo: a random LR change",
            action=action_text(LR, before, after),
            evidence={"factor": factor},
        )


def placebo_plan(settings: Settings, changes: int, seed: int) -> dict[int, float]:
    """``changes`` distinct control steps after warm-up, each with a log-uniform factor."""
    if changes <= 0:
        return {}
    t, scu = settings.training, settings.scu
    steps = [
        k
        for k in range(scu.control_frequency, t.max_steps, scu.control_frequency)
        if k > t.warmup_steps
    ]
    rng = np.random.default_rng([seed, 7919])
    picks = rng.choice(steps, size=min(changes, len(steps)), replace=False)
    return {int(k): float(2.0 ** rng.uniform(-1.0, 1.0)) for k in sorted(picks)}


def arm_settings(task: Task, arm: str, factor: float, seed: int) -> Settings:
    lr = task.base_lr * factor
    schedule = SCHEDULES[arm]
    controlled = arm in ("scu", "placebo", "scu_cosine")
    return task.settings.replace(
        {
            "training.learning_rate": lr,
            "training.schedule": schedule,
            "training.seed": seed,
            "scu.enabled": controlled,
            "scu.mode": "auto",
            "scu.lr_bounds": [task.base_lr * LR_BOUNDS[0], task.base_lr * LR_BOUNDS[1]],
        }
    )
