"""Running the grid: each (task, LR, seed, arm) through the product's ``Run``, results kept
as JSON lines; and the base-LR sweep."""

from __future__ import annotations

import json
import math
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.controller.analysis import Result
from bench.controller.arms import ARM_SPECS, PlaceboController, applies, arm_settings, placebo_plan
from bench.controller.report import pm, table
from bench.controller.tasks import Task
from scu_tui.config import Settings
from scu_tui.control.divergence import LEVEL_HALF, RECENT, START_SPAN, collapse_ratio
from scu_tui.control.policy import LR
from scu_tui.control.search import LOOK_WINDOW, WINDOW, window_mean, window_start
from scu_tui.protocol import (
    AnalysisEvent,
    DecisionEvent,
    DoneEvent,
    EvalEvent,
    Event,
    MessageEvent,
    Outcome,
    ProposalEvent,
    RollbackEvent,
    StepEvent,
)
from scu_tui.run import Run

# --- one run --------------------------------------------------------------------------------


class Recorder:
    """A sink that keeps what the benchmark scores (no step events)."""

    KEEP = ("eval", "proposal", "decision", "rollback", "done", "message", "step")

    def __init__(self) -> None:
        self.events: list[Event] = []

    def emit(self, event: Event) -> None:
        if event.type in self.KEEP:
            self.events.append(event)

    def close(self) -> None:
        pass


def run_one(
    task: Task,
    arm: str,
    factor: float,
    seed: int,
    workdir: Path,
    plan: dict[int, float],
    settings: Settings | None = None,
) -> Result:
    """One arm of one (task, LR, seed) cell, trained by the product's ``Run`` on the task's
    loader, scored from the events it emitted (``settings``: instead of the arm's)."""
    settings = settings or arm_settings(task, arm, factor, seed)
    out = workdir / f"{task.name}-{arm}-{factor:g}-{seed}"
    shutil.rmtree(out, ignore_errors=True)
    controller = PlaceboController(settings, plan) if arm == "placebo" else None
    run = Run(settings, output_dir=out, controller=controller, loader=task.loader)
    recorder = Recorder()
    run.add_sink(recorder)
    tic, cpu = time.perf_counter(), time.process_time()
    run.execute()
    seconds = time.perf_counter() - tic
    cpu_seconds = time.process_time() - cpu
    scu_seconds = run.steering.seconds
    train_seconds = run.trainer.train_seconds if run.trainer is not None else math.nan
    shutil.rmtree(out, ignore_errors=True)

    events = recorder.events
    evals = [(e.step, float(e.val_loss)) for e in events if isinstance(e, EvalEvent)]
    knob_of = {e.id: e.knob for e in events if isinstance(e, ProposalEvent)}
    rule_of = {e.id: e.rule for e in events if isinstance(e, ProposalEvent)}
    applied = [
        e.id for e in events if isinstance(e, DecisionEvent) and e.outcome == Outcome.APPLIED
    ]
    done = [e for e in events if isinstance(e, DoneEvent)]
    proposals = {e.id: e for e in events if isinstance(e, ProposalEvent)}
    last_way: dict[str, int] = {}
    by_knob: Counter[str] = Counter()
    for i in applied:
        p = proposals[i]
        knob = LR if p.knob == "rollback" else str(p.knob)
        if p.after == p.before:
            continue
        way = 1 if p.after > p.before else -1
        by_knob[knob] += last_way.get(knob, way) != way
        last_way[knob] = way
    # after a rollback the evals of the abandoned steps are superseded by the new ones
    by_step: dict[int, float] = {}
    for step, val in evals:
        by_step = {k: v for k, v in by_step.items() if k < step}
        by_step[step] = val
    ordered = sorted(by_step.items())
    return Result(
        task=task.name,
        arm=arm,
        factor=factor,
        seed=seed,
        status=done[-1].status if done else "unknown",
        initial=evals[0][1] if evals else math.nan,
        final=ordered[-1][1] if ordered else math.nan,
        floor=task.floor,
        evals=ordered,
        rollbacks=sum(1 for e in events if isinstance(e, RollbackEvent)),
        actions=dict(Counter(knob_of[i] for i in applied)),
        rules=dict(Counter(rule_of[i] for i in applied)),
        lr_changes=sum(1 for i in applied if knob_of[i] == LR),
        seconds=seconds,
        reversals=sum(by_knob.values()),
        reversals_by_knob={k: v for k, v in by_knob.items() if v},
        scu_seconds=scu_seconds,
        train_seconds=train_seconds,
        cpu_seconds=cpu_seconds,
        lr_moves=[
            (proposals[i].step, proposals[i].rule, float(proposals[i].after))
            for i in applied
            if proposals[i].knob in (LR, "rollback") and proposals[i].after != proposals[i].before
        ],
        collapse_ratio=lowest_collapse_ratio(events),
        collapses=sum(
            1 for i in applied if proposals[i].evidence.get("collapse") and i in rule_of
        ),
        first_window=search_window(events, settings.training.warmup_steps, WINDOW),
        look_window=search_window(events, settings.training.warmup_steps, LOOK_WINDOW),
    )


def search_window(events: list[Event], warmup_steps: int, size: int) -> float:
    """The mean update alignment over the ``size`` steps the start-up search judges first
    (after the warm-up), on the run's first branch (nan: fewer steps than that)."""
    history: list[tuple[int, float]] = []
    for event in events:
        if isinstance(event, RollbackEvent):
            break
        if isinstance(event, StepEvent) and not event.skipped:
            history.append((event.step, float(event.alignment)))
    found = window_mean(history, window_start(warmup_steps, -1), size)
    return found[0] if isinstance(found, tuple) else math.nan


def lowest_collapse_ratio(events: list[Event]) -> float:
    """The lowest :func:`collapse_ratio` over the steps the divergence detector judges a
    collapse on (its first steps' window, then every full recent window while the start is
    held), on the run's first branch: up to its first rollback (nan: none judged)."""
    steps: list[tuple[int, float, float]] = []
    for event in events:
        if isinstance(event, RollbackEvent):
            break
        if isinstance(event, StepEvent) and not event.skipped:
            steps.append((event.step, float(event.loss), float(event.grad_norm)))
    first = [(x, g) for s, x, g in steps if 0 < s <= LEVEL_HALF]
    ratios = []
    for end in range(len(steps)):
        step = steps[end][0]
        if step > START_SPAN:
            break
        recent = [(x, g) for s, x, g in steps[: end + 1] if s > LEVEL_HALF][-RECENT:]
        if len(first) == LEVEL_HALF and len(recent) == RECENT:
            ratios.append(collapse_ratio(first, recent))
    finite = [r for r in ratios if math.isfinite(r)]
    return min(finite) if finite else math.nan


class Tracer:
    """A sink that writes each step's alignment, loss and LR, and the controller's
    analyses (the diagnosis and why it acted or not), proposals, answers, rollbacks,
    evaluations and messages, one line each."""

    def __init__(self, write: Callable[[str], None]) -> None:
        self.write = write

    def close(self) -> None:
        pass

    def emit(self, event: Event) -> None:
        if isinstance(event, StepEvent):
            self.write(
                f"step {event.step:5d}  alignment {event.alignment:+.3f}  "
                f"loss {event.loss:.4f}  grad {event.grad_norm:.3g}  lr {event.lr:.3g}"
            )
        elif isinstance(event, ProposalEvent):
            self.write(f"  proposal {event.id} at {event.step}: {event.rule} {event.action}")
            self.write(f"    {event.reason}")
        elif isinstance(event, DecisionEvent):
            self.write(f"  {event.id}: {event.outcome.value}")
        elif isinstance(event, RollbackEvent):
            self.write(f"  rollback at {event.step} to step {event.to_step}")
        elif isinstance(event, EvalEvent):
            self.write(f"  eval at {event.step}: val loss {event.val_loss:.4f}")
        elif isinstance(event, MessageEvent):
            self.write(f"  message at {event.step}: {event.text}")
        elif isinstance(event, AnalysisEvent):
            self.write(f"  analysis at {event.step}: {event.diagnosis}: {event.why}")


def trace_one(task: Task, arm: str, factor: float, seed: int, workdir: Path) -> None:
    """One run of one cell with every step written out (``--trace``): what a rule would
    be judged on. A test task's trace must not shape a rule, a threshold or a default."""
    if task.split == "test":
        log(f"{task.name} is a test task: what its trace shows must not shape the S-SCU")
    settings = arm_settings(task, arm, factor, seed)
    out = workdir / f"trace-{task.name}-{arm}-{factor:g}-{seed}"
    shutil.rmtree(out, ignore_errors=True)
    run = Run(settings, output_dir=out, loader=task.loader)
    print(f"# {task.name} ({task.split}), {arm}, LR x{factor:g}, seed {seed}", flush=True)
    run.add_sink(Tracer(lambda line: print(line, flush=True)))
    try:
        run.execute()
    finally:
        shutil.rmtree(out, ignore_errors=True)


# --- the benchmark --------------------------------------------------------------------------


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def run_cell(task: Task, factor: float, seed: int, arms: Sequence[str], tmp: Path) -> list[Result]:
    """Every arm of one (task, LR, seed) cell, in order (the placebo copies the S-SCU's
    number of LR changes)."""
    results = []
    scu_changes = 0
    for arm in arms:
        plan: dict[int, float] = {}
        if arm == "placebo":
            plan = placebo_plan(arm_settings(task, arm, factor, seed), scu_changes, seed)
        r = run_one(task, arm, factor, seed, tmp, plan)
        if arm == "scu":
            scu_changes = r.lr_changes
        results.append(r)
    return results


_WORKER_TASKS: dict[str, Task] = {}


def cell_arms(split: str, factor: float, anchor: float, arms: Sequence[str]) -> list[str]:
    """The arms that run in one cell of a task of this split: those meant for the split,
    and an LR-free arm only at the grid's ``anchor`` (x1), where it stands for the grid."""
    return [
        arm
        for arm in arms
        if applies(arm, split) and (not ARM_SPECS[arm].lr_free or factor == anchor)
    ]


def anchor_of(factors: Sequence[float]) -> float:
    return 1.0 if 1.0 in factors else factors[0]


def plan(
    splits: dict[str, str], factors: Sequence[float], seeds: Sequence[int], arms: Sequence[str]
) -> dict[str, int]:
    """How many runs each task (name -> split) gets on this grid."""
    anchor = anchor_of(factors)
    return {
        name: sum(len(cell_arms(split, f, anchor, arms)) for f in factors) * len(seeds)
        for name, split in splits.items()
    }


def _worker_cell(
    spec: tuple[str, bool, dict[str, int | None], dict[str, Any]],
    factor: float,
    seed: int,
    arms: Sequence[str],
    tmp: str,
) -> list[dict[str, Any]]:
    """A cell in a worker process: tasks are built once per worker, from their names."""
    from bench.controller.tasks import make_tasks

    name, quick, steps, overrides = spec
    if name not in _WORKER_TASKS:
        _WORKER_TASKS[name] = make_tasks([name], quick, steps, overrides)[0]
    return [asdict(r) for r in run_cell(_WORKER_TASKS[name], factor, seed, arms, Path(tmp))]


def run_benchmark(
    tasks: Sequence[Task],
    factors: Sequence[float],
    seeds: Sequence[int],
    arms: Sequence[str],
    raw: Path | None,
    jobs: int = 1,
    spec: tuple[bool, dict[str, int | None], dict[str, Any]] = (False, {}, {}),
) -> list[Result]:
    """The grid, cell by cell; with ``jobs`` > 1, cells run in that many worker processes
    (each result is the same as in one process: a cell's runs do not share state)."""
    results: list[Result] = []
    anchor = anchor_of(factors)
    cells = [
        (t, f, s, cell_arms(t.split, f, anchor, arms))
        for t in tasks
        for f in factors
        for s in seeds
    ]
    cells = [c for c in cells if c[3]]
    total = sum(len(c[3]) for c in cells)
    tic = time.perf_counter()

    def record(task: Task, rs: Sequence[Result]) -> None:
        for r in rs:
            results.append(r)
            append_raw(raw, asdict(r))
            done = len(results)
            eta = (time.perf_counter() - tic) / done * (total - done)
            acts = ",".join(f"{k}:{v}" for k, v in sorted(r.rules.items()))
            log(
                f"[{done}/{total}] {task.name} lr x{r.factor:g} seed {r.seed} "
                f"{r.arm:<8} {task.metric} {r.score:.4f}"
                f"{' DIVERGED' if r.diverged else ''}  rollbacks {r.rollbacks}  "
                f"{acts or '-'}  {r.seconds:.1f}s  eta {eta / 60:.1f} min"
            )

    with tempfile.TemporaryDirectory(prefix="scu-bench-") as tmp:
        if jobs <= 1:
            for task, factor, seed, here in cells:
                record(task, run_cell(task, factor, seed, here, Path(tmp)))
            return results
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        quick, steps, overrides = spec
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(jobs, mp_context=context) as pool:
            futures = [
                (
                    task,
                    pool.submit(
                        _worker_cell, (task.name, quick, steps, overrides), f, s, here, tmp
                    ),
                )
                for task, f, s, here in cells
            ]
            for task, future in futures:
                record(task, [Result.from_dict(d) for d in future.result()])
    return results


def load_raw(path: Path) -> tuple[list[Result], dict[str, Any]]:
    """Per-run results and the newest ``{"meta": ...}`` header of a ``--raw`` file."""
    results, meta = [], {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        data = json.loads(line)
        if "meta" in data:
            meta = data["meta"]
            continue
        results.append(Result.from_dict(data))
    return results, meta


def append_raw(path: Path | None, record: dict[str, Any]) -> None:
    if path is not None:
        with path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")


# --- the base-LR sweep ----------------------------------------------------------------------


def sweep(tasks: Sequence[Task], seeds: Sequence[int], arm: str = "cosine") -> str:
    """One arm (warmup+cosine: the tasks' base LR; another: its ``lr_scale``) over a grid
    of base LRs around the task's."""
    lines = ["## Controller benchmark: choosing the tuned base LR", ""]
    lines += [
        f"The {ARM_SPECS[arm].label} arm alone over a grid of base LRs; the tuned base is "
        "the LR with the lowest mean final metric. Reproduce: `python -m bench.controller "
        f"--sweep{'' if arm == 'cosine' else ' --arms ' + arm}` (seeds {list(seeds)}).",
        "",
    ]
    with tempfile.TemporaryDirectory(prefix="scu-sweep-") as tmp:
        for task in tasks:
            base = task.base_lr * ARM_SPECS[arm].lr_scale
            grid = [base * f for f in (0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)]
            rows = []
            best: tuple[float, float] = (math.inf, math.nan)
            for lr in grid:
                scores = []
                for seed in seeds:
                    factor = lr / (task.base_lr * ARM_SPECS[arm].lr_scale)
                    r = run_one(task, arm, factor, seed, Path(tmp), {})
                    scores.append(r.score)
                    log(
                        f"sweep {task.name} lr {lr:g} seed {seed}: {r.score:.4f} ({r.seconds:.1f}s)"
                    )
                m = statistics.fmean(scores)
                best = min(best, (m, lr))
                rows.append([f"{lr:g}", pm(scores)])
            lines += [f"**{task.name}** ({task.metric}, seeds {list(seeds)}):", ""]
            lines += table(["base LR", f"final {task.metric}"], rows)
            lines += ["", f"Lowest: {best[1]:g} (the benchmark uses {base:g}).", ""]
    return "\n".join(lines)
