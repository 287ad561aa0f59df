"""Tokens/s of our training loop against mlx-lm's own ``train()``, side by side.

Both arms are timed by the wall clock around the whole loop (first-step compile
included) and train the same model (fresh copy, same seed, same LoRA), on the same
tokenized data, with the same batch size and optimizer, for the same number of
micro-batches; rounds alternate A B A B so machine noise hits both. Also measures
what the system OpenBLAS buys on Linux by timing our loop in a child process with
``SCU_TUI_OPENBLAS=0``.

    python bench/throughput.py                      # the embedded demo model
    python bench/throughput.py --model DIR --data DIR --steps 50
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

import scu_tui  # noqa: F401  (loads the system OpenBLAS before mlx, as the app does)
from scu_tui import blas
from scu_tui.config import Settings
from scu_tui.presets import load_preset


def settings_for(args: argparse.Namespace) -> Settings:
    s = load_preset("demo").replace(
        {
            "training.batch_size": args.batch_size,
            "training.gradient_accumulation_steps": 1,
            "training.max_steps": args.steps,
            "training.warmup_steps": 0,
            "training.schedule": "constant",
            "lora.dropout": 0.0,
        }
    )
    if args.model:
        s = s.replace({"model.path": args.model})
    if args.data:
        s = s.replace({"data.path": args.data, "data.format": "auto"})
    return s


def fresh_model(s: Settings) -> tuple[Any, Any]:
    import mlx.core as mx

    from scu_tui.training.model import apply_lora, load_model

    model, tokenizer = load_model(s.model.path)
    mx.random.seed(s.training.seed)
    apply_lora(model, s.lora, s.model.path)
    return model, tokenizer


def ours(s: Settings, data: Any) -> float:
    from scu_tui.training.trainer import Trainer

    model, _ = fresh_model(s)
    trainer = Trainer(model, data, s)
    tokens = 0
    tic = time.perf_counter()
    for _ in range(s.training.max_steps):
        tokens += trainer.train_step().tokens
    return tokens / (time.perf_counter() - tic)


def theirs(s: Settings, data: Any) -> float:
    import mlx.optimizers as optim
    from mlx_lm.tuner.callbacks import TrainingCallback
    from mlx_lm.tuner.trainer import TrainingArgs, train

    model, _ = fresh_model(s)
    reports: list[dict[str, Any]] = []

    class Collect(TrainingCallback):  # type: ignore[misc]
        def on_train_loss_report(self, info: dict[str, Any]) -> None:
            reports.append(info)

    steps = s.training.max_steps
    args = TrainingArgs(
        batch_size=s.training.batch_size,
        iters=steps,
        steps_per_report=steps,
        steps_per_eval=10**9,
        steps_per_save=10**9,
        max_seq_length=s.data.max_seq_length,
        adapter_file=os.devnull,
    )
    sequences = list(data.train.sequences)
    optimizer = optim.AdamW(learning_rate=s.training.learning_rate, weight_decay=0.0)
    with open(os.devnull, "w") as quiet:  # mlx-lm draws its own progress UI
        stdout, sys.stdout = sys.stdout, quiet
        tic = time.perf_counter()
        try:
            train(model, optimizer, sequences, None, args=args, training_callback=Collect())
        finally:
            seconds = time.perf_counter() - tic
            sys.stdout = stdout
    # Wall-clock for both loops: mlx-lm's own tokens_per_second leaves out the time its
    # batch generator takes, which our per-step timing includes.
    return float(reports[-1]["trained_tokens"]) / seconds


def child_ours(args: argparse.Namespace, openblas: bool) -> float:
    env = dict(os.environ, SCU_TUI_OPENBLAS="" if openblas else "0")
    cmd = [
        sys.executable,
        __file__,
        "--child",
        "--steps",
        str(args.blas_steps),
        "--batch-size",
        str(args.batch_size),
    ]
    if args.model:
        cmd += ["--model", args.model]
    if args.data:
        cmd += ["--data", args.data]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return float(json.loads(out.stdout.strip().splitlines()[-1])["tokens_per_second"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model")
    parser.add_argument("--data")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--blas-steps", type=int, default=20)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    from scu_tui.training.data import load_data

    s = settings_for(args)
    _, tokenizer = fresh_model(s)
    data = load_data(s.data, tokenizer, s.training.seed)
    if args.child:
        print(json.dumps({"tokens_per_second": ours(s, data)}))
        return

    ours_tps: list[float] = []
    theirs_tps: list[float] = []
    ours(s.replace({"training.max_steps": 5}), data)  # warm caches for both
    for _ in range(args.rounds):
        ours_tps.append(ours(s, data))
        theirs_tps.append(theirs(s, data))
    a, b = statistics.median(ours_tps), statistics.median(theirs_tps)
    print(
        f"model {s.model.path}  batch {s.training.batch_size}  steps {args.steps}  "
        f"rounds {args.rounds}  BLAS: {blas.active or blas.reason}"
    )
    print(f"{'loop':<28}{'tokens/s (median)':>20}{'all rounds':>36}")
    print(
        f"{'scu-tui Trainer':<28}{a:>20,.0f}{'  ' + ', '.join(f'{x:,.0f}' for x in ours_tps):>36}"
    )
    print(
        f"{'mlx_lm.tuner.trainer.train':<28}{b:>20,.0f}"
        f"{'  ' + ', '.join(f'{x:,.0f}' for x in theirs_tps):>36}"
    )
    print(f"ratio ours / mlx-lm: {a / b:.3f}")

    if sys.platform.startswith("linux") and blas.active:
        t0 = time.perf_counter()
        with_ob = child_ours(args, openblas=True)
        without = child_ours(args, openblas=False)
        print(
            f"\nOpenBLAS ({args.blas_steps} steps, our loop, separate processes, "
            f"{time.perf_counter() - t0:.0f}s)"
        )
        print(f"{'system OpenBLAS':<28}{with_ob:>20,.0f}")
        print(f"{'bundled reference BLAS':<28}{without:>20,.0f}")
        print(f"speed-up: {with_ob / without:.1f}x")


if __name__ == "__main__":
    main()
