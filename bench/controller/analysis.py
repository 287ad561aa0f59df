"""Scoring: one run's result, cells over seeds, regret against a cell's best arm."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from bench.controller.arms import ARM_SPECS, ARMS, EXTRA_ARMS

#: Steps to target: the first eval whose metric is <= this x the best arm's mean final
#: metric at the tuned lr (x1). 1.25 rather than 1.05: on the synthetic task the metric is
#: the excess over the floor, and 5 % of it is reached, if at all, only at the last eval.
TARGET_FACTOR = 1.25
#: A run is diverged when its final val loss is non-finite or above its initial one, or
#: when the guard rolled it back at least this many times.
DIVERGED_ROLLBACKS = 5
#: Two-sided 95 % Student t quantiles, t(0.975, df), for small samples.
T975 = {
    1: 12.706,
    2: 4.303,
    3: 3.182,
    4: 2.776,
    5: 2.571,
    6: 2.447,
    7: 2.365,
    8: 2.306,
    9: 2.262,
    10: 2.228,
    12: 2.179,
    15: 2.131,
    20: 2.086,
    30: 2.042,
}


def t975(df: int) -> float:
    if df in T975:
        return T975[df]
    smaller = [d for d in T975 if d <= df]
    return T975[max(smaller)] if df < 30 else 1.96


@dataclass
class Result:
    task: str
    arm: str
    factor: float
    seed: int
    status: str
    initial: float  # val loss at step 0
    final: float  # val loss at the last eval (nan when none)
    floor: float
    evals: list[tuple[int, float]]
    rollbacks: int
    actions: dict[str, int]  # applied proposals by knob (rollback = guard or controller)
    rules: dict[str, int]  # applied proposals by rule
    lr_changes: int  # applied lr_multiplier proposals (what the placebo copies)
    seconds: float
    reversals: int = 0  # applied moves of a knob opposite to its previous applied move
    reversals_by_knob: dict[str, int] = field(default_factory=dict)
    scu_seconds: float = 0.0  # in the S-SCU's own code (observe, guard, analysis)
    train_seconds: float = 0.0  # in training steps (forward, backward, update)
    cpu_seconds: float = 0.0  # the process's CPU time for the run (all its threads)
    #: applied LR moves (rollbacks with their cut included): (step, rule, LR multiplier after)
    lr_moves: list[tuple[int, str, float]] = field(default_factory=list)
    #: the lowest gradient-collapse ratio the divergence detector judged before the run's
    #: first rollback (:func:`scu_tui.control.divergence.collapse_ratio`; nan: none judged)
    collapse_ratio: float = math.nan
    #: rollbacks for collapsed gradients (of ``rollbacks``)
    collapses: int = 0
    #: the mean update alignment over the start-up search's first window and its longer
    #: look (the steps after the warm-up), on the run's first branch (nan: too few steps)
    first_window: float = math.nan
    look_window: float = math.nan

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Result:
        """From ``dataclasses.asdict`` (or a raw file's JSON line)."""
        moves = [(int(s), str(r), float(m)) for s, r, m in data.get("lr_moves", [])]
        evals = [(int(k), float(v)) for k, v in data["evals"]]
        return cls(**{**data, "evals": evals, "lr_moves": moves})

    @property
    def diverged(self) -> bool:
        return (
            not math.isfinite(self.final)
            or self.final > self.initial
            or self.rollbacks >= DIVERGED_ROLLBACKS
            or self.status == "failed"
        )

    @property
    def score(self) -> float:
        """The reported metric; a diverged run scores no better than where it started."""
        final = self.final if math.isfinite(self.final) else math.inf
        if self.status == "failed":
            final = max(final, self.initial) if math.isfinite(final) else self.initial
        return min(final, self.initial) - self.floor

    def steps_to(self, target: float) -> int | None:
        for step, val in self.evals:
            if math.isfinite(val) and val - self.floor <= target:
                return step
        return None


# --- statistics -----------------------------------------------------------------------------


def mean_ci(values: Sequence[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95 % t interval (nan for one value)."""
    xs = [float(v) for v in values]
    m = statistics.fmean(xs)
    if len(xs) < 2:
        return m, math.nan
    return m, t975(len(xs) - 1) * statistics.stdev(xs) / math.sqrt(len(xs))


@dataclass
class Cell:
    """One (task, lr factor, arm) over its seeds."""

    results: list[Result]
    regret: list[float] = field(default_factory=list)  # paired by seed, vs the cell's best arm

    @property
    def scores(self) -> list[float]:
        return [r.score for r in self.results]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.scores)

    @property
    def val_mean(self) -> float:
        """The seed-mean final val loss (the number a user reads; a diverged run counts
        no better than where it started)."""
        return statistics.fmean(r.score + r.floor for r in self.results)


@dataclass
class Analysis:
    tasks: list[str]
    factors: list[float]
    arms: list[str]
    seeds: list[int]
    cells: dict[tuple[str, float, str], Cell]
    best: dict[tuple[str, float], str]
    targets: dict[str, float]
    metric: dict[str, str]
    split: dict[str, str] = field(default_factory=dict)  # task -> "tuning" | "test"

    def cell(self, task: str, factor: float, arm: str) -> Cell:
        return self.cells[(task, factor, arm)]

    def has(self, task: str, arm: str) -> bool:
        """Whether ``arm`` ran on ``task`` at every LR of the grid."""
        return all((task, f, arm) in self.cells for f in self.factors)

    def arms_on(self, task: str) -> list[str]:
        return [arm for arm in self.arms if self.has(task, arm)]

    def tasks_of(self, split: str) -> list[str]:
        return [t for t in self.tasks if self.split.get(t, "tuning") == split]

    # --- against the oracle ---------------------------------------------------------------

    def oracle(self, task: str) -> tuple[float, str, float]:
        """The task's oracle: the lowest seed-mean final val loss of any arm at any LR,
        and which (arm, LR) reached it."""
        return min((c.val_mean, arm, f) for (t, f, arm), c in self.cells.items() if t == task)

    def gap(self, task: str, factor: float, arm: str) -> float:
        """An arm's gap to the task's oracle at one LR: (its seed mean - oracle) / oracle."""
        return oracle_gap(self.cell(task, factor, arm).val_mean, self.oracle(task)[0])

    def worst_gap(self, task: str, arm: str) -> tuple[float, float]:
        """The arm's largest gap over the LR grid, and at which LR."""
        return max((self.gap(task, f, arm), f) for f in self.factors)

    def mean_gap(self, task: str, arm: str) -> float:
        return statistics.fmean(self.gap(task, f, arm) for f in self.factors)

    def gap_to_best_arm(self, task: str, factor: float, arm: str) -> float:
        """The arm's gap, at one LR, to the best judged arm's seed mean at that LR."""
        judged = [x for x in self.arms_on(task) if x in ARMS] or self.arms_on(task)
        best = min(self.cell(task, factor, x).val_mean for x in judged)
        return oracle_gap(self.cell(task, factor, arm).val_mean, best)

    def mean_regret(self, task: str, arm: str) -> float:
        return statistics.fmean(
            statistics.fmean(self.cell(task, f, arm).regret) for f in self.factors
        )

    def relative_regret(self, task: str, factor: float, arm: str) -> float:
        """Regret as a fraction of the best arm's val loss (not the excess) in that cell."""
        best = self.cell(task, factor, self.best[(task, factor)])
        floor = best.results[0].floor
        return statistics.fmean(self.cell(task, factor, arm).regret) / (best.mean + floor)

    def overall_relative(self, arm: str) -> float:
        return statistics.fmean(
            self.relative_regret(t, f, arm) for t in self.tasks for f in self.factors
        )

    def median_steps(self, task: str, factor: float, arm: str) -> float:
        """Median steps to the task's target over the seeds; a run that never reaches it
        counts as never (inf), so a cell that mostly misses has an inf median."""
        steps = [r.steps_to(self.targets[task]) for r in self.cell(task, factor, arm).results]
        return float(statistics.median(math.inf if s is None else s for s in steps))

    def reversals_per_k(self, task: str, factor: float, arm: str = "scu") -> float:
        """Direction reversals of any knob per 1,000 trained steps, over the seeds."""
        rs = self.cell(task, factor, arm).results
        steps = sum(r.evals[-1][0] for r in rs if r.evals) or 1
        return 1000 * sum(r.reversals for r in rs) / steps

    def analysis_share(self, task: str, arm: str = "scu") -> float:
        """The S-SCU's own time as a share of training-step time, over every cell."""
        rs = [r for (t, _, a), c in self.cells.items() if t == task and a == arm for r in c.results]
        train = sum(r.train_seconds for r in rs)
        return sum(r.scu_seconds for r in rs) / train if train > 0 else math.nan

    def divergences(self, arm: str, task: str | None = None) -> int:
        """Diverged runs (an LR-free arm's runs counted once, not once per grid LR)."""
        return sum(r.diverged for r in self.runs(arm) if task is None or r.task == task)

    def runs(self, arm: str, tasks: Sequence[str] | None = None) -> list[Result]:
        """The arm's runs as run (an LR-free arm's once, not once per grid LR)."""
        lr_free = ARM_SPECS[arm].lr_free if arm in ARM_SPECS else False
        return [
            r
            for (t, f, a), c in self.cells.items()
            if a == arm and (tasks is None or t in tasks) and (not lr_free or f == self.x1)
            for r in c.results
        ]

    @property
    def x1(self) -> float:
        return 1.0 if 1.0 in self.factors else self.factors[len(self.factors) // 2]


def oracle_gap(value: float, oracle: float) -> float:
    """(value - oracle) / oracle: 0.05 is 5 % above the oracle."""
    return (value - oracle) / oracle if oracle else math.inf


def spread_lr_free(results: Sequence[Result], factors: Sequence[float]) -> list[Result]:
    """An LR-free arm ran once per seed (at x1): its runs stand for every LR of the grid."""
    out = []
    for r in results:
        if r.arm in ARM_SPECS and ARM_SPECS[r.arm].lr_free:
            out += [replace(r, factor=f) for f in factors]
        else:
            out.append(r)
    return out


def analyse(
    results: Sequence[Result], metric: dict[str, str], split: dict[str, str] | None = None
) -> Analysis:
    tasks = list(dict.fromkeys(r.task for r in results))
    factors = sorted(
        {r.factor for r in results if not (r.arm in ARM_SPECS and ARM_SPECS[r.arm].lr_free)}
    ) or [1.0]
    results = spread_lr_free(results, factors)
    arms = [a for a in (*ARMS, *EXTRA_ARMS) if any(r.arm == a for r in results)]
    seeds = sorted({r.seed for r in results})
    cells: dict[tuple[str, float, str], Cell] = {}
    for r in results:
        cells.setdefault((r.task, r.factor, r.arm), Cell([])).results.append(r)
    for c in cells.values():
        c.results.sort(key=lambda r: r.seed)
    best: dict[tuple[str, float], str] = {}
    for t in tasks:
        for f in factors:
            present = [a for a in arms if (t, f, a) in cells]
            if not present:
                continue
            judged = [a for a in present if a in ARMS] or present
            best[(t, f)] = min(judged, key=lambda a: cells[(t, f, a)].mean)
            ref = {r.seed: r.score for r in cells[(t, f, best[(t, f)])].results}
            for a in present:
                c = cells[(t, f, a)]
                c.regret = [r.score - ref[r.seed] for r in c.results if r.seed in ref]
    targets = {}
    for t in tasks:
        tuned = 1.0 if 1.0 in factors else factors[len(factors) // 2]
        if (t, tuned) in best:
            targets[t] = TARGET_FACTOR * cells[(t, tuned, best[(t, tuned)])].mean
    return Analysis(tasks, factors, arms, seeds, cells, best, targets, metric, split or {})
