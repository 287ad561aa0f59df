"""Does starting at `scu-tui check --find-lr`'s suggestion beat the preset's learning rate?

On the embedded demo, per seed: the LR range test (the product's own, through its
``Trainer``) suggests a rate; then the demo-lora task of the controller benchmark (LoRA r8,
batch 4, 150 steps, 10 warm-up steps, cosine, validation on 10 batches) trains at the
suggestion, at the preset's tuned rate and at scu-tui's default rate, same seed, same data
order; the final validation losses are compared pairwise.

    python bench/find_lr.py                 # 5 seeds; writes its section of docs/benchmarks.md
    python bench/find_lr.py --seeds 2 --no-write

Progress goes to stderr, the section to stdout.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from typing import Any

from docs_section import write_section  # bench/ is on the path of a script run from it

import scu_tui  # noqa: F401  (loads the system OpenBLAS before mlx, as the app does)
from scu_tui.config import Settings
from scu_tui.presets import load_preset

STEPS = 150
#: docs/benchmarks.md's base-LR sweep of the demo: 1e-3 is best; 5e-4 and 2e-3, its
#: neighbours on the grid, end within 50 % of it; 2e-4 and 5e-3 end far worse.
TUNED_RANGE = (5e-4, 2e-3)
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def task(seed: int, lr: float | None = None) -> Settings:
    s = load_preset("demo").replace(
        {
            "training.max_steps": STEPS,
            "training.eval_batches": 10,
            "training.warmup_steps": 10,
            "training.schedule": "cosine",
            "training.seed": seed,
        }
    )
    return s if lr is None else s.replace({"training.learning_rate": lr})


def setup(settings: Settings) -> tuple[Any, Any]:
    import mlx.core as mx

    from scu_tui.training.data import load_data
    from scu_tui.training.model import apply_lora, load_model

    model, tokenizer = load_model(settings.model.path)
    data = load_data(settings.data, tokenizer, settings.training.seed)
    mx.random.seed(settings.training.seed)
    apply_lora(model, settings.lora, settings.model.path)
    return model, data


def suggested_lr(seed: int) -> tuple[float, float]:
    """The range test's suggestion and the LR of its smoothed minimum."""
    from scu_tui.check.find_lr import lr_range_test

    settings = task(seed)
    model, data = setup(settings)
    curve = lr_range_test(model, data, settings)
    assert curve.suggestion is not None and curve.min_loss_lr is not None
    return curve.suggestion, curve.min_loss_lr


def final_val_loss(settings: Settings) -> float:
    """Train the task through the product's Trainer; the validation loss at the end."""
    from scu_tui.training.trainer import Trainer

    model, data = setup(settings)
    trainer = Trainer(model, data, settings)
    for _ in range(settings.training.max_steps):
        trainer.train_step()
    return trainer.evaluate()


def ci(values: list[float]) -> float:
    n = len(values)
    if n < 2:
        return math.nan
    return T975.get(n - 1, 1.96) * statistics.stdev(values) / math.sqrt(n)


def compare(rows: list[dict[str, float]], key: str) -> tuple[str, str]:
    """``(numbers, verdict)`` of the suggestion against the rate in ``key``, paired by seed."""
    diffs = [r["at_suggestion"] - r[key] for r in rows]
    mean, half = statistics.fmean(diffs), ci(diffs)
    better = sum(d < 0 for d in diffs)
    if mean + half < 0:
        verdict = "**beats** it"
    elif mean - half > 0:
        verdict = "**loses** to it"
    elif better == 0:
        verdict = "worse on every seed, though the 95 % CI includes 0: it **loses**, by a little"
    elif better == len(diffs):
        verdict = "better on every seed, though the 95 % CI includes 0: it **wins**, by a little"
    else:
        verdict = "no significant difference (95 % CI includes 0)"
    numbers = f"{mean:+.4f} ± {half:.4f}, lower on {better} of {len(diffs)} seeds"
    return numbers, verdict


def render(
    rows: list[dict[str, float]], preset_lr: float, default_lr: float, seconds: float
) -> str:
    inside = sum(TUNED_RANGE[0] <= r["suggestion"] <= TUNED_RANGE[1] for r in rows)
    vs_preset, verdict_preset = compare(rows, "at_preset")
    vs_default, verdict_default = compare(rows, "at_default")
    lines = [
        "## `scu-tui check --find-lr`: a starting LR from evidence",
        "",
        "Reproduce: `python bench/find_lr.py` "
        f"(about {math.ceil(seconds / 60)} min on x86_64 Linux, 2 CPU cores, MLX CPU backend).",
        "",
        "Per seed, the LR range test (100 steps, LR from 1e-6 to 1 exponentially, on a copy "
        "of the adapters; the suggestion is a tenth of the LR at the smoothed loss's minimum, "
        "a rule fixed before this benchmark ran) runs on the demo; then the demo-lora task "
        f"({STEPS} steps, 10 warm-up, cosine, batch 4, LoRA r8) trains at the suggestion, at "
        f"the demo preset's tuned {preset_lr:g} and at scu-tui's default {default_lr:g} (what "
        "a preset that names no rate gets), same seed and data order.",
        "",
        "| seed | suggested LR | LR at min loss | val loss: suggestion | preset LR | default LR |",
        "|--:|--:|--:|--:|--:|--:|",
    ]
    for r in rows:
        lines.append(
            f"| {int(r['seed'])} | {r['suggestion']:.2e} | {r['min_lr']:.2e} | "
            f"{r['at_suggestion']:.4f} | {r['at_preset']:.4f} | {r['at_default']:.4f} |"
        )
    lo, hi = TUNED_RANGE
    lines += [
        "",
        f"- Against the tuned preset LR (suggestion - preset, 95 % CI): {vs_preset}: "
        f"{verdict_preset}.",
        f"- Against the default LR (suggestion - default): {vs_default}: {verdict_default}.",
        f"- {inside} of {len(rows)} suggestions lie in [{lo:g}, {hi:g}], the range around the "
        "demo's tuned LR in the sweep above (`tests/test_check.py` asserts it for seed 0).",
        "",
        "Read: on the demo the suggestion lands a little below the tuned rate (a tenth of the "
        "minimum is a cautious rule: the minimum itself sits where training turns unstable), "
        "so it cannot beat a rate already tuned by a sweep; what it replaces is a guess, and "
        "against the default it is a large gain for one 100-step probe.",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--no-write", action="store_true", help="leave docs/benchmarks.md alone")
    args = parser.parse_args()
    preset_lr = load_preset("demo").training.learning_rate
    default_lr = Settings().training.learning_rate
    rows = []
    tic = time.perf_counter()
    for seed in range(args.seeds):
        suggestion, min_lr = suggested_lr(seed)
        at_suggestion = final_val_loss(task(seed, suggestion))
        at_preset = final_val_loss(task(seed, preset_lr))
        at_default = final_val_loss(task(seed, default_lr))
        rows.append(
            {
                "seed": seed,
                "suggestion": suggestion,
                "min_lr": min_lr,
                "at_suggestion": at_suggestion,
                "at_preset": at_preset,
                "at_default": at_default,
            }
        )
        log(
            f"seed {seed}: suggestion {suggestion:.2e} -> {at_suggestion:.4f}; "
            f"preset {preset_lr:g} -> {at_preset:.4f}; default {default_lr:g} -> {at_default:.4f}"
        )
    body = render(rows, preset_lr, default_lr, time.perf_counter() - tic)
    print(body)
    if not args.no_write:
        write_section("find-lr", body)


if __name__ == "__main__":
    main()
