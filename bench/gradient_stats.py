"""What the step's gradient statistics cost: the squared norm (for clipping and the report)
and the cosine with Adam's first moment (the S-SCU's alignment signal).

Three arms on the same demo model and data, each in its own process (arms built in one
process time differently by the order they were built in), in rounds that rotate their
order, so machine noise hits all three:

- ``flat``: what the trainer does, ``training.trainer.gradient_stats``: three reductions
  over one concatenation of the gradient and one of the moment;
- ``per-matrix norm``: the norm as one reduction per LoRA matrix, the cosine from the flat
  copies (how the step computed them before);
- ``no alignment``: the per-matrix norm alone, no cosine (the cost of a step without the
  signal).

    python bench/gradient_stats.py                # 150 steps per arm and round, 6 rounds
    python bench/gradient_stats.py --steps 300 --rounds 9
"""

# ruff: noqa: I001  (scu_tui first: it loads the system OpenBLAS before mlx)
from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import scu_tui  # noqa: F401  (loads the system OpenBLAS before mlx, as the app does)

import mlx.core as mx
from mlx.utils import tree_flatten

import scu_tui.training.trainer as trainer_module
from scu_tui import blas
from scu_tui.presets import load_preset
from scu_tui.training.loader import MlxLmLoader

Stats = Callable[[Any, Any], tuple[mx.array, mx.array]]


def _per_matrix_g2(grads: Any) -> mx.array:
    return sum((mx.sum(g.astype(mx.float32) ** 2) for _, g in tree_flatten(grads)), mx.array(0.0))


def per_matrix_norm(grads: Any, state: Any) -> tuple[mx.array, mx.array]:
    g2 = _per_matrix_g2(grads)
    moments = dict(tree_flatten(state))
    named = tree_flatten(grads)
    flat_g = mx.concatenate([g.reshape(-1).astype(mx.float32) for _, g in named])
    flat_m = mx.concatenate([moments[f"{k}.m"].reshape(-1).astype(mx.float32) for k, _ in named])
    denom = mx.sqrt(g2 * mx.sum(flat_m * flat_m))
    cosine = mx.sum(flat_g * flat_m) / mx.maximum(denom, 1e-30)
    return g2, mx.where(denom > 0, cosine, mx.array(math.nan))


def no_alignment(grads: Any, state: Any) -> tuple[mx.array, mx.array]:
    return _per_matrix_g2(grads), mx.array(math.nan)


def child(arm: str, steps: int) -> float:
    """ms per step of one arm's trainer, after its compile and a short warm-up."""
    settings = load_preset("demo").replace(
        {"training.max_steps": 10**6, "training.warmup_steps": 0, "lora.dropout": 0.0}
    )
    trainer_module.gradient_stats = ARMS[arm]  # type: ignore[assignment]  # read when traced
    loaded = MlxLmLoader().load(settings)
    mx.random.seed(settings.training.seed)
    trainer = trainer_module.Trainer(loaded.model, loaded.data, settings)
    for _ in range(10):
        trainer.train_step()
    tic = time.perf_counter()
    for _ in range(steps):
        trainer.train_step()
    return (time.perf_counter() - tic) / steps * 1e3


ARMS: dict[str, Stats] = {
    "flat (the trainer's)": trainer_module.gradient_stats,
    "per-matrix norm": per_matrix_norm,
    "no alignment": no_alignment,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=150, help="timed steps per arm and round")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps({"ms": child(args.child, args.steps)}))
        return

    ms: dict[str, list[float]] = {name: [] for name in ARMS}
    names = list(ARMS)
    for r in range(args.rounds):
        for name in names[r % 3 :] + names[: r % 3]:
            out = subprocess.run(
                [sys.executable, __file__, "--child", name, "--steps", str(args.steps)],
                capture_output=True,
                text=True,
                check=True,
            )
            ms[name].append(float(json.loads(out.stdout.strip().splitlines()[-1])["ms"]))

    base = statistics.median(ms["flat (the trainer's)"])
    print(
        f"demo, {args.steps} timed steps per arm and round, {args.rounds} rounds, each arm "
        f"in its own process; BLAS: {blas.active or blas.reason}"
    )
    print(f"{'gradient statistics':<24}{'ms/step (median)':>18}{'speed vs flat':>15}  all rounds")
    for name, values in ms.items():
        median = statistics.median(values)
        rounds = ", ".join(f"{v:.1f}" for v in values)
        print(f"{name:<24}{median:>18.2f}{base / median:>15.3f}  {rounds}")


if __name__ == "__main__":
    main()
