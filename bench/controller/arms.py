"""The arms: fixed schedules, the S-SCU, and a placebo that changes the LR at random."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from bench.controller.tasks import Task
from scu_tui.config import Settings
from scu_tui.control.controller import Controller
from scu_tui.control.policy import LR, Knobs, Proposal, action_text, bounded_value


@dataclass(frozen=True)
class Arm:
    """One arm, as data: adding an arm is one entry of ``ARM_SPECS``.

    ``settings`` are applied over the task's (``"training.optimizer": "prodigy"``, say);
    ``judged`` arms can be a cell's best and are the ones the targets compare; an
    ``lr_free`` arm ignores the LR grid (it runs once per seed, at x1, and stands for every
    LR of the grid); ``only`` keeps an arm to the tuning or the test tasks."""

    label: str
    marker: str
    schedule: str = "constant"
    scu: bool = False
    judged: bool = True
    settings: Mapping[str, object] = field(default_factory=dict)
    lr_free: bool = False
    only: str | None = None  # "tuning" | "test" | None (every task)
    lr_scale: float = 1.0  # its own tuned base: this x the task's (from ``--sweep --arms``)


#: Every arm, in the order a cell runs them (the placebo copies the number of LR changes of
#: the ``scu`` run of its cell, so it comes after it).
ARM_SPECS: dict[str, Arm] = {
    "constant": Arm("constant", "c"),
    "cosine": Arm("warmup+cosine", "w", schedule="cosine"),
    "plateau": Arm("plateau", "p", schedule="plateau"),
    "wsd": Arm("warmup+stable+decay", "l", schedule="wsd"),
    # the S-SCU on the presets' base: held, then decayed over the run's last fifth (a lower
    # mean gap than a constant base on the tuning tasks, seeds 0-3; docs/benchmarks.md)
    "scu": Arm("S-SCU auto", "S", schedule="wsd", scu=True),
    "placebo": Arm("placebo", "r", schedule="wsd", scu=True),
    # the optimizers a user could pick instead of a controller (need training.optimizer);
    # Schedule-Free gets its own base LR: its lr_scale, from `--sweep --arms schedule_free
    # --split tuning` (seed 0: lowest at 10x AdamW's base on demo-lora, json and sort-text,
    # at 5x on completions; 10x has the lower mean gap to each task's lowest, 2.4 % vs 2.6 %)
    "schedule_free": Arm(
        "Schedule-Free AdamW",
        "f",
        settings={"training.optimizer": "schedule_free"},
        lr_scale=10.0,
    ),
    "prodigy": Arm(
        "Prodigy",
        "d",
        settings={"training.optimizer": "prodigy", "training.learning_rate": 1.0},
        lr_free=True,
    ),
    # measured, never a cell's best: the S-SCU riding cosine, other analysis periods
    # (test tasks), the S-SCU on the other optimizers (tuning tasks: choosing its base)
    "scu_cosine": Arm("S-SCU on cosine", "s", schedule="cosine", scu=True, judged=False),
    "scu_constant": Arm(
        "S-SCU on a constant base", "K", schedule="constant", scu=True, judged=False
    ),
    "scu_cf10": Arm(
        "S-SCU, control_frequency 10",
        "1",
        scu=True,
        judged=False,
        settings={"scu.control_frequency": 10},
        only="test",
    ),
    "scu_cf50": Arm(
        "S-SCU, control_frequency 50",
        "5",
        scu=True,
        judged=False,
        settings={"scu.control_frequency": 50},
        only="test",
    ),
    "scu_sf": Arm(
        "S-SCU on Schedule-Free",
        "F",
        scu=True,
        judged=False,
        settings={"training.optimizer": "schedule_free"},
        only="tuning",
    ),
    "scu_prodigy": Arm(
        "S-SCU on Prodigy",
        "D",
        scu=True,
        judged=False,
        settings={"training.optimizer": "prodigy", "training.learning_rate": 1.0},
        lr_free=True,
        only="tuning",
    ),
}
#: The arms the targets compare, and those measured beside them.
ARMS = tuple(k for k, v in ARM_SPECS.items() if v.judged)
EXTRA_ARMS = tuple(k for k, v in ARM_SPECS.items() if not v.judged)
ARM_LABELS = {k: v.label for k, v in ARM_SPECS.items()}
SCHEDULES = {k: v.schedule for k, v in ARM_SPECS.items()}
#: What runs without ``--arms``: the judged arms this build of the product can run.
DEFAULT_ARMS = ("constant", "cosine", "plateau", "scu", "placebo", "schedule_free", "prodigy")
LR_GRID = (0.1, 0.3, 1.0, 3.0, 10.0)
#: The S-SCU's lr bounds, as multiples of the task's base lr: wider than the whole grid,
#: so the bounds never do the controller's work for it.
LR_BOUNDS = (1e-3, 30.0)
#: The largest LR (and LR bound) the product accepts.
MAX_LR = 10.0


class PlaceboController(Controller):
    """Random LR changes at planned control steps, through the same proposal path."""

    def __init__(self, settings: Settings, plan: dict[int, float]) -> None:
        super().__init__(settings.scu, settings.training)
        self.plan = dict(plan)
        self.fired: set[int] = set()
        self.count = 0

    def check_search(self, step: int, knobs: Mapping[str, float]) -> Proposal | None:
        return None  # its LR changes are the random ones only: no start-up LR search

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
    """The task's settings for one run of ``arm`` at ``factor`` x the task's base LR."""
    spec = ARM_SPECS[arm]
    overrides: dict[str, object] = {
        "training.learning_rate": task.base_lr * spec.lr_scale * factor,
        "training.schedule": spec.schedule,
        "training.seed": seed,
        "scu.enabled": spec.scu,
        "scu.mode": "auto",
        "scu.lr_bounds": [
            task.base_lr * spec.lr_scale * LR_BOUNDS[0],
            task.base_lr * spec.lr_scale * LR_BOUNDS[1],
        ],
    }
    overrides.update(spec.settings)
    overrides.update(task.overrides)  # --set: applied to every arm of every task
    if spec.lr_free:  # its own LR (Prodigy's 1): the S-SCU's bounds follow it
        lr = float(overrides["training.learning_rate"])  # type: ignore[arg-type]
        # the product's LR stops at 10: Prodigy's LR is a multiplier of its own step size
        overrides["scu.lr_bounds"] = [lr * LR_BOUNDS[0], min(lr * LR_BOUNDS[1], MAX_LR)]
    return task.settings.replace(overrides)


def applies(arm: str, split: str) -> bool:
    """Whether ``arm`` runs on a task of this split."""
    only = ARM_SPECS[arm].only
    return only is None or only == split
