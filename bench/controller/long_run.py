"""The long run: the shipped demo preset for thousands of steps, with its S-SCU in auto mode
and without it, same seed. Does a converged run stay put, and end no worse?"""

from __future__ import annotations

import math
import multiprocessing
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.controller.analysis import Result
from bench.controller.report import fmt, table
from bench.controller.running import log, run_one
from bench.controller.tasks import demo_task
from scu_tui.presets import load_preset

ARMS = {"without": "without the S-SCU", "with": "S-SCU auto"}


def settings_for(steps: int, seed: int, enabled: bool) -> Any:
    """The demo preset as shipped (schedule, evaluation, bounds), longer; no samples, which
    only cost time."""
    return load_preset("demo").replace(
        {
            "training.max_steps": steps,
            "training.seed": seed,
            "training.samples": 0,
            "scu.enabled": enabled,
            "scu.mode": "auto",
        }
    )


def _one(steps: int, seed: int, arm: str) -> dict[str, Any]:
    task = demo_task(steps)
    task.name = "demo-long"
    settings = settings_for(steps, seed, arm == "with")
    with tempfile.TemporaryDirectory(prefix="scu-long-") as tmp:
        return asdict(run_one(task, arm, 1.0, seed, Path(tmp), {}, settings))


def long_demo(steps: int, seeds: list[int], jobs: int) -> str:
    jobs_list = [(seed, arm) for seed in seeds for arm in ARMS]
    context = multiprocessing.get_context("spawn")
    results: dict[tuple[int, str], Result] = {}
    with ProcessPoolExecutor(max(1, jobs), mp_context=context) as pool:
        futures = {key: pool.submit(_one, steps, *key) for key in jobs_list}
        for key, future in futures.items():
            results[key] = Result.from_dict(future.result())
            r = results[key]
            log(f"long demo seed {key[0]} {ARMS[key[1]]}: final {r.final:.4f} ({r.seconds:.0f}s)")
    rows, holds, calm = [], True, True
    for seed in seeds:
        base = results[(seed, "without")]
        for arm, label in ARMS.items():
            r = results[(seed, arm)]
            best = min((v for _, v in r.evals if math.isfinite(v)), default=math.nan)
            share = r.scu_seconds / r.train_seconds if r.train_seconds else math.nan
            acts = ", ".join(f"{k} {v}" for k, v in sorted(r.rules.items())) or "—"
            steps = max(1, r.evals[-1][0] if r.evals else 1)
            per_knob = {k: 1000 * v / steps for k, v in r.reversals_by_knob.items()}
            worst = max(per_knob.values(), default=0.0)
            by_knob = ", ".join(f"{k} {v:.2f}" for k, v in sorted(per_knob.items()))
            reversal_text = f"{worst:.2f}" + (f" ({by_knob})" if by_knob else "")
            rows.append(
                [
                    str(seed),
                    label,
                    fmt(r.final),
                    fmt(best),
                    acts,
                    reversal_text if arm == "with" else "—",
                    f"{100 * share:.2f} %" if arm == "with" else "—",
                ]
            )
            if arm == "with":
                holds &= r.final <= base.final
                calm &= worst <= 1.0
    lines = [
        "## Controller: a long run of the shipped demo",
        "",
        "Reproduce:",
        "",
        "```sh",
        f"python -m bench.controller --long-demo {steps} --seeds {len(seeds)}",
        "```",
        "",
        f"The `demo` preset as shipped (its schedule, evaluation every "
        f"{settings_for(steps, 0, True).training.eval_every} steps, S-SCU bounds), run for "
        f"{steps} steps with its S-SCU in auto mode and without it, same seed.",
        "",
    ]
    lines += table(
        [
            "seed",
            "run",
            "final val loss",
            "best val loss",
            "applied S-SCU actions",
            "reversals / 1k steps, most-reversed knob (by knob)",
            "S-SCU time / step time",
        ],
        rows,
        "llrrlrr",
    )
    lines += [
        "",
        f"**Ends no worse than without the S-SCU: {'yes' if holds else 'no'}. "
        f"At most one reversal of any knob per 1,000 steps: {'yes' if calm else 'no'}.**",
    ]
    return "\n".join(lines)
