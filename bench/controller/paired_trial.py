"""Does a short paired trial tell which LR a run should go on with?

For each (task, LR, seed): a run of the task at a constant-then-decay LR (the `wsd` arm,
no controller) is trained to step ``--at``; from that one state, three branches of
``--length`` steps each, at 0.5x, 1x and 2x the LR, on the same batches in the same order;
each branch is then trained on to the run's end at its LR. The table gives, for the halved
and the doubled branch against the 1x one, the mean log ratio of the step losses of the
trial (paired batch by batch) with its t-value, and how the branch's final validation loss
(the whole validation split) compares. A trial that tells the LR would have the ratio's sign
agree with the final's.

    python -m bench.controller.paired_trial --tasks demo-lora,completions,json,sort-text \\
        --factors 0.3,1,3 --seeds 0,1
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from dataclasses import dataclass

import scu_tui  # noqa: F401  (before MLX: the system BLAS)
from bench.controller.arms import arm_settings
from bench.controller.tasks import DEFAULT_TASKS, make_tasks
from scu_tui.protocol import Knob
from scu_tui.training import snapshots
from scu_tui.training.loader import MlxLmLoader
from scu_tui.training.trainer import Trainer

MULTIPLIERS = (0.5, 1.0, 2.0)


@dataclass(frozen=True)
class Branch:
    losses: list[float]  # the trial's steps
    final: float  # validation loss at the run's end


def branches(task_name: str, factor: float, seed: int, at: int, length: int) -> dict[float, Branch]:
    """The three branches of one (task, LR, seed)."""
    (task,) = make_tasks([task_name], False, {})
    settings = arm_settings(task, "wsd", factor, seed)
    loaded = (task.loader or MlxLmLoader()).load(settings)
    t = Trainer(loaded.model, loaded.data, settings)
    for _ in range(at):
        t.train_step()
    start, position = snapshots.take(t), t.stream.state()
    out = {}
    for m in MULTIPLIERS:
        snapshots.restore(t, start)
        t.stream.load_state(position)
        t.set_knob(Knob.LR_MULTIPLIER, m)
        losses = [t.train_step().loss for _ in range(length)]
        while t.step < settings.training.max_steps:
            t.train_step()
        out[m] = Branch(losses, t.evaluate())
    return out


def paired(current: list[float], tried: list[float]) -> tuple[float, float]:
    """Mean log ratio of the tried branch's step losses over the current's, and its t."""
    logs = [math.log(b / a) for a, b in zip(current, tried, strict=True)]
    mean = statistics.fmean(logs)
    se = statistics.stdev(logs) / math.sqrt(len(logs))
    return mean, mean / se if se > 0 else math.nan


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default=",".join(DEFAULT_TASKS[:4]))
    parser.add_argument("--factors", default="0.3,1,3")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--at", type=int, default=25, help="the step the branches start from")
    parser.add_argument("--length", type=int, default=20, help="steps in each branch")
    args = parser.parse_args(argv)
    tic = time.perf_counter()
    rows = []
    agree = total = 0
    for name in args.tasks.split(","):
        for factor in (float(f) for f in args.factors.split(",")):
            cells: dict[float, list[str]] = {0.5: [], 2.0: []}
            for seed in (int(s) for s in args.seeds.split(",")):
                got = branches(name, factor, seed, args.at, args.length)
                base = got[1.0]
                for m in (0.5, 2.0):
                    ratio, t = paired(base.losses, got[m].losses)
                    change = got[m].final / base.final - 1
                    cells[m].append(f"{ratio:+.2f} ({t:+.1f}), final {100 * change:+.0f} %")
                    total += 1
                    agree += (ratio < 0) == (change < 0)
                print(f"{name} x{factor:g} seed {seed} done", file=sys.stderr, flush=True)
            rows.append((name, factor, "; ".join(cells[0.5]), "; ".join(cells[2.0])))
    print(f"Branches of {args.length} steps from step {args.at}, seeds {args.seeds}:\n")
    print("| task | LR | halved: log ratio (t), final, each seed | doubled: the same |")
    print("|:--|:--|:--|:--|")
    for name, factor, half, double in rows:
        print(f"| {name} | x{factor:g} | {half} | {double} |")
    print(f"\nThe ratio's sign agrees with the final's on {agree} of {total} branches.")
    print(f"({(time.perf_counter() - tic) / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
