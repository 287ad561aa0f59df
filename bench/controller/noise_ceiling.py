"""Does the alignment, measured against its own noise ceiling, tell a LR too low?

The update alignment (the cosine between each gradient and Adam's first moment ``m``
before the update) reads high at a LR far too low only where the gradient's noise is
small: with a noisy gradient even a tiny LR reads low, since the new gradient's noise is
unrelated to ``m``. How high it could read at a vanishing LR follows from the two norms
the step already has. With a fixed true gradient ``G`` and a noise of total variance
``N`` per step, after ``k`` updates (no bias correction, ``beta1`` 0.9)::

    E|g|^2 = G^2 + N        E|m|^2 = A^2 G^2 + B N        E[g . m] = A G^2
    A = 1 - beta1^k         B = (1 - beta1^(2k)) (1 - beta1) / (1 + beta1)

so over a window ``G^2 = (Y - B X) / (A^2 - B)`` from the window's means ``X`` of
``|g|^2`` (after clipping) and ``Y`` of ``|m|^2``, and the ceiling is ``c = A G^2 /
sqrt(X Y)``. The table gives, per window of steps, the mean alignment ``a``, the ceiling
``c`` and their ratio ``q = a / c`` (blank where ``c`` is under 0.02), at a constant LR
(the ``constant`` arm, no controller). A ratio that tells a LR too low would stay near 1
at 0.1x and 0.3x the tuned LR and low at it, on every task and batch size.

    python -m bench.controller.noise_ceiling --tasks demo-lora,completions,json,sort-text \\
        --factors 0.1,0.3,1,3 --seeds 0 [--set training.batch_size=1]
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence

import scu_tui  # noqa: F401  (before MLX: the system BLAS)
from bench.controller.arms import arm_settings
from bench.controller.tasks import DEFAULT_TASKS, TASKS, make_tasks, parse_set
from scu_tui.training.loader import MlxLmLoader
from scu_tui.training.trainer import Trainer

BETA1 = 0.9
WINDOWS = ((6, 10), (11, 20), (21, 30), (31, 40))

Step = tuple[int, float, float, float]  # step, alignment, |g|^2 as applied, |m_(t-1)|^2


def momentum_sq(trainer: Trainer) -> float:
    """|m|^2 over every trainable parameter, from the optimizer's state."""
    import mlx.core as mx
    from mlx.utils import tree_flatten

    total = mx.array(0.0)
    for key, value in tree_flatten(trainer.optimizer.state):
        if key.endswith(".m"):
            total = total + mx.sum(value.astype(mx.float32) ** 2)
    return float(total.item())


def trace(
    task_name: str, factor: float, seed: int, steps: int, sets: dict[str, object]
) -> list[Step]:
    (task,) = make_tasks([task_name], False, {}, sets)
    settings = arm_settings(task, "constant", factor, seed)
    clip = settings.training.grad_clip
    loaded = (task.loader or MlxLmLoader()).load(settings)
    t = Trainer(loaded.model, loaded.data, settings)
    out: list[Step] = []
    before = momentum_sq(t)
    for _ in range(steps):
        r = t.train_step()
        norm = min(r.grad_norm, clip) if clip > 0 else r.grad_norm
        out.append((r.step, r.alignment, norm * norm, before))
        before = momentum_sq(t)
    return out


def window(rows: Sequence[Step], first: int, last: int) -> tuple[float, float]:
    """(mean alignment, ceiling) over the window's steps."""
    w = [r for r in rows if first <= r[0] <= last and math.isfinite(r[1])]
    a = sum(r[1] for r in w) / len(w)
    x = sum(r[2] for r in w) / len(w)
    y = sum(r[3] for r in w) / len(w)
    k = sum(r[0] - 1 for r in w) / len(w)
    big_a = 1 - BETA1**k
    big_b = (1 - BETA1 ** (2 * k)) * (1 - BETA1) / (1 + BETA1)
    g2 = (y - big_b * x) / (big_a * big_a - big_b)
    return a, big_a * g2 / math.sqrt(x * y)


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    tuning = [name for name in DEFAULT_TASKS if TASKS[name][3] == "tuning"]
    p.add_argument("--tasks", default=",".join(tuning), help="default: the tuning tasks")
    p.add_argument("--factors", default="0.1,0.3,1,3")
    p.add_argument("--seeds", default="0")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args(argv)
    sets = parse_set(args.set)
    steps = WINDOWS[-1][1]
    head = " | ".join(f"steps {a}-{b}: a, c, q" for a, b in WINDOWS)
    print(f"| task | LR | seed | {head} |")
    print("|:--|:--|--:|" + "--:|" * len(WINDOWS))
    for name in args.tasks.split(","):
        if TASKS.get(name, (None, None, None, ""))[3] == "test":
            print(f"{name} is a test task: its rows must not shape the S-SCU", file=sys.stderr)
        for factor in (float(f) for f in args.factors.split(",")):
            for seed in (int(s) for s in args.seeds.split(",")):
                rows = trace(name, factor, seed, steps, sets)
                cells = []
                for first, last in WINDOWS:
                    a, c = window(rows, first, last)
                    q = f"{a / c:+.2f}" if c >= 0.02 else ""
                    cells.append(f"{a:+.2f}, {c:+.2f}, {q}")
                print(f"| {name} | x{factor:g} | {seed} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
