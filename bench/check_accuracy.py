"""How close does `scu-tui check` come to real runs, and what does it say about the
reference workload from its config alone?

1. For the demo and a ~25M-parameter Qwen3 (random init, float32, the demo's tokenizer;
   text rows longer than max_seq_length, so every batch has one width), with and without
   gradient checkpointing: `scu-tui check --json` (weights loaded, probe run), the same
   check from the model's config.json alone, and a real run with the same flags, each in
   its own process as a user runs them. Peak memory is MLX's; seconds per step is the
   run's mean after its first steps (every width compiled).
2. The reference workload (Qwen3-4B, 4-bit, group 64; LoRA r=32 on every projection,
   batch 2) from its config.json alone, at several sequence lengths.

    python bench/check_accuracy.py          # writes its section of docs/benchmarks.md
    python bench/check_accuracy.py --no-write

Progress goes to stderr, the section to stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from docs_section import write_section  # bench/ is on the path of a script run from it
from workloads import QWEN3_4B_MLX_4BIT, build_qwen3_25m, config_only, long_text_data

import scu_tui  # noqa: F401  (loads the system OpenBLAS before mlx, as the app does)

CLI = [sys.executable, "-m", "scu_tui"]

ACTIVATION_TERMS = ("activations", "logits", "attention", "safety")


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def scu(*args: str, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        [*CLI, *args], capture_output=True, text=True, env={**os.environ, **(env or {})}
    )
    if done.returncode != 0:
        raise SystemExit(f"scu-tui {' '.join(args)} failed: {done.stderr}")
    return done.stdout


def check(*args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(scu("check", *args, "--json", env=env))
    return result


def openblas(tmp: Path) -> list[str]:
    """Seconds per step with the system OpenBLAS and with MLX's bundled BLAS (Linux)."""
    from scu_tui import blas

    if not blas.active:
        return [f"(not measured: no system OpenBLAS here: {blas.reason})"]
    cases = [
        ("demo", ["--preset", "demo"]),
        (
            "Qwen3 25M, batch 4 x 64",
            [
                *("--model", str(tmp / "q25m"), "--data", str(tmp / "long")),
                *("--set", "data.max_seq_length=64"),
            ],
        ),
    ]
    rows = []
    for name, flags in cases:
        log(f"BLAS: {name}")
        fast = check(*flags)["seconds_per_step"]
        slow = check(*flags, env={"SCU_TUI_OPENBLAS": "0"})["seconds_per_step"]
        rows.append(f"| {name} | {slow * 1e3:.0f} | {fast * 1e3:.0f} | {slow / fast:.1f}x |")
    return [
        "| model | bundled BLAS, ms/step | system OpenBLAS, ms/step | speed-up |",
        "|:--|--:|--:|--:|",
        *rows,
    ]


def real_run(flags: list[str], out: Path, skip: int) -> tuple[float, float]:
    scu("--headless", *flags, "--mode", "observe", "--output-dir", str(out))
    events = [
        json.loads(line)
        for line in (out / "events.jsonl").read_text(encoding="utf-8").splitlines()
        if line.strip()
    ]
    steps = [e for e in events if e.get("type") == "step"]
    return (
        max(e["peak_memory_gb"] for e in steps),
        statistics.fmean(e["step_seconds"] for e in steps[skip:]),
    )


def pct(predicted: float, measured: float) -> str:
    return f"{predicted / measured - 1:+.0%}"


def accuracy(tmp: Path) -> list[str]:
    from scu_tui.demo import MODEL_DIR

    build_qwen3_25m(tmp / "q25m")
    long_text_data(tmp / "long")
    demo_flags = ["--preset", "demo", "--max-steps", "60"]
    q_flags = ["--model", str(tmp / "q25m"), "--data", str(tmp / "long")]
    q_flags += ["--set", "data.max_seq_length=96", "--max-steps", "8"]
    cases = [
        ("demo (0.66M, float32), batch 4", demo_flags, MODEL_DIR, 10),
        ("Qwen3 25M (float32), batch 4 x 96", q_flags, tmp / "q25m", 2),
        (
            "Qwen3 25M, grad_checkpoint",
            [*q_flags, "--set", "training.grad_checkpoint=true"],
            tmp / "q25m",
            2,
        ),
    ]
    rows = []
    for n, (name, flags, model, skip) in enumerate(cases):
        common = [*flags, "--set", "training.eval_every=1000", "--set", "training.eval_batches=2"]
        log(f"{name}: check")
        full = check(*common)
        alone = check(*common, "--model", str(config_only(model, tmp / f"config-{n}")))
        log(f"{name}: real run")
        peak, seconds = real_run(common, tmp / f"run-{n}", skip)
        rows.append(
            f"| {name} | {full['memory']['sequence_length']} | {full['peak_memory_gb'] * 1e3:.1f} "
            f"({pct(full['peak_memory_gb'], peak)}) | {alone['peak_memory_gb'] * 1e3:.1f} "
            f"({pct(alone['peak_memory_gb'], peak)}) | {peak * 1e3:.1f} | "
            f"{full['seconds_per_step'] * 1e3:.0f} ({pct(full['seconds_per_step'], seconds)}) | "
            f"{seconds * 1e3:.0f} |"
        )
    return [
        "| model, batch | width | predicted peak, MB (vs run) | from config alone, MB "
        "| run's peak, MB | predicted ms/step (vs run) | run's ms/step |",
        "|:--|--:|--:|--:|--:|--:|--:|",
        *rows,
    ]


def reference(tmp: Path) -> tuple[list[str], dict[int, tuple[float, float, float]]]:
    """The table's lines and ``{tokens: (parameter terms, peak, peak with checkpointing)}``."""
    folder = tmp / "qwen3-4b"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(QWEN3_4B_MLX_4BIT), encoding="utf-8")
    base = ["--preset", "qwen3-4b-mlx-4bit", "--model", str(folder), "--data", "@demo"]
    rows = []
    facts: dict[str, Any] = {}
    peaks: dict[int, tuple[float, float, float]] = {}
    for length in (128, 160, 256, 512, 1024, 2048):
        log(f"reference: {length} tokens")
        off = check(*base, "--set", f"data.max_seq_length={length}")
        on = check(
            *base,
            "--set",
            f"data.max_seq_length={length}",
            "--set",
            "training.grad_checkpoint=true",
        )
        facts = off["model"]
        terms = {t["name"]: t["gb"] for t in off["memory"]["terms"]}
        params = sum(g for t, g in terms.items() if not t.startswith(ACTIVATION_TERMS))
        peaks[length] = (params, off["peak_memory_gb"], on["peak_memory_gb"])
        rows.append(
            f"| {length} | {params:.2f} | {off['peak_memory_gb'] - params:.2f} | "
            f"{off['peak_memory_gb']:.1f} | {on['peak_memory_gb']:.1f} |"
        )
    head = [
        f"Parameters {facts['parameters']:,}; weights at 4 bits with group-64 scales "
        f"{facts['weight_bytes'] / 1e9:.2f} GB; LoRA {facts['trainable']:,} trainable "
        f"parameters ({facts['lora_modules']} layers, r={facts['lora_rank']}).",
        "",
        "| sequence (tokens) | parameter terms, GB | activation terms, GB | peak, GB "
        "| peak with grad_checkpoint, GB |",
        "|--:|--:|--:|--:|--:|",
    ]
    return head + rows, peaks


def render(
    acc: list[str],
    ref: list[str],
    peaks: dict[int, tuple[float, float, float]],
    blas_rows: list[str],
    seconds: float,
) -> str:
    params, short_lo, ckpt_lo = peaks[128]
    _, short_hi, ckpt_hi = peaks[160]
    return "\n".join(
        [
            "## `scu-tui check`: predictions against real runs",
            "",
            "Reproduce: `python bench/check_accuracy.py` (about "
            f"{max(1, round(seconds / 60))} min on x86_64 Linux, 2 CPU cores, MLX CPU backend "
            "with the system OpenBLAS).",
            "",
            "Each row: `scu-tui check --json` with the weights (the probe measures the "
            "activation terms and times real steps), the same check from a folder holding "
            "only config.json and the tokenizer, and a real headless run with the same "
            "flags, each in its own process. The run's peak is MLX's peak memory over the "
            "run; its ms/step is the mean after every batch width has compiled. "
            "`tests/test_check_accuracy.py` asserts the predicted peak within 30 % of the "
            "run's (and never below it) and the time within 50 %.",
            "",
            *acc,
            "",
            "The measured estimate sits a little above the real peak: the probe measures "
            "one step at batch size 1 at a few widths (up to 257 tokens) and one at the "
            "run's batch size and the widest width, the fit passes through them, and a 15 % "
            "margin goes on everything but the weights. Four checks in a row of the "
            "checkpointed 25M model predicted 224-226 MB (with a fit from batch size 1 "
            "alone, 207-220 MB, once under the run). From the config alone the activation "
            "terms come from "
            "per-block element counts set from measurements of Qwen3-architecture models on "
            "this backend (with checkpointing, from Qwen3-4B's width measured by block, "
            "below), with a 10 % margin. Time is the noisier half: the "
            "machine is shared, and a step of a few milliseconds (the demo) is at the mercy "
            "of the scheduler.",
            "",
            "### The reference workload from its config alone",
            "",
            "`scu-tui check --preset qwen3-4b-mlx-4bit --model DIR --data @demo --set "
            "data.max_seq_length=N`, DIR holding only the hub's config.json (batch 2, the "
            "estimate at a full-length batch of N tokens):",
            "",
            *ref,
            "",
            "SPEC.md expects 4-6 GB on an M2/M3. The parameter terms alone (weights, LoRA "
            "weights, AdamW moments, gradients and the accumulation buffer; the LoRA terms are "
            "float32, 66M parameters, so 1.3 GB; and the S-SCU's 4 kept rollback states, "
            f"3.2 GB) come to {params:.1f} GB; the rest grows with "
            "the batch's width. WikiSQL, the preset's data, has short rows (200-300 "
            "characters in mlx-examples' copy, roughly 60-100 tokens), so its widest batches "
            f"are about 128-160 tokens, where the estimate is {short_lo:.1f}-{short_hi:.1f} GB "
            f"without checkpointing and {ckpt_lo:.1f}-{ckpt_hi:.1f} GB with it. The difference "
            "to SPEC.md's figure is the config-only estimate's caution: its per-token counts "
            "come from MLX's CPU backend (16-bit models there keep about 0.8x the float32 "
            "bytes per activation, not 0.5x) and carry a 10 % margin; on a Mac with the "
            "weights downloaded, `scu-tui check` measures those terms with Metal's own "
            "kernels instead. The preset's `max_seq_length` of 2048 is a cap, not the batch "
            "width: a batch of two full 2048-token rows needs the last row's figure, beyond "
            "any Mac without checkpointing (the blocks' activations and the attention scores "
            "grow to tens of GB each), and the check says so, with its fixes.",
            "",
            "### What the system OpenBLAS buys (Linux, CPU)",
            "",
            "The check's seconds per step with the system OpenBLAS and with "
            "`SCU_TUI_OPENBLAS=0` (MLX's bundled reference BLAS); on a Linux machine without "
            "it, the verdict quotes this range and the install command:",
            "",
            *blas_rows,
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-write", action="store_true", help="leave docs/benchmarks.md alone")
    args = parser.parse_args()
    tic = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="scu-check-bench-") as tmp:
        acc = accuracy(Path(tmp))
        ref, peaks = reference(Path(tmp))
        blas_rows = openblas(Path(tmp))
    body = render(acc, ref, peaks, blas_rows, time.perf_counter() - tic)
    print(body)
    if not args.no_write:
        write_section("check", body)


if __name__ == "__main__":
    main()
