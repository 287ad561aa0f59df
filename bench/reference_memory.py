"""The reference workload's memory, measured: Qwen3-4B's width at 2, 4 and 8 blocks.

A step of the full 36-block model does not finish in useful time on a CPU (MLX's 4-bit
matmul runs at a few GFLOP/s there), so this measures models of the exact width with
fewer blocks (built by ``qwen3_shape.py``) and extrapolates each figure to 36 blocks with
a line through the block counts: memory per block adds up, and the third block count
checks that it does. Each point is one training step in a fresh process, at the
reference preset's LoRA settings (r32, alpha 64, dropout 0.05, every block, mlx-lm's
default keys), on rows of exactly N tokens:

- ``scu``: the product's own step (its ``Trainer``, AdamW, the preset's settings with
  gradient accumulation 1): the peak of the second step, with the optimizer's moments
  (made by the first) resident through it, and the weights and adapters;
- ``mlx_lm``: ``mlx_lm lora`` for two iterations with the same settings and AdamW, run in
  the measuring process as its command line runs it, and MLX's peak since the process
  started (what its trainer reports as ``peak_memory``).

Beside each: the process's peak resident memory (``ru_maxrss``, what the OS sees), for
ours also the peak resident set of the step alone (Linux's ``VmHWM`` restarted after
loading, which peaks on the stand-in tokenizer's 151,936-word vocabulary), the step's
seconds, and what ``scu-tui check`` estimates from the config alone for the same
model and batch. Every point is cached (``~/.cache/scu-tui-bench/reference-memory-steady.jsonl``)
since one takes many minutes: a second run measures only what is missing, and
``--report`` prints the table from the cache. Memory figures do not depend on what else
the machine runs; the seconds do.

    python bench/reference_memory.py --plan
    python bench/reference_memory.py --layers 2,4,8 --batches 1 --lengths 64 --checkpoint off,on
    python bench/reference_memory.py --report
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from qwen3_shape import build, cache_root, default_folder, shape_config  # noqa: E402

FULL_LAYERS = 36
PRESET = "qwen3-4b-mlx-4bit"
TOOLS = ("scu", "mlx_lm")


@dataclass(frozen=True)
class Point:
    tool: str
    layers: int
    batch: int
    length: int
    checkpoint: bool
    dtype: str = "bfloat16"

    @property
    def key(self) -> str:
        ckpt = "ckpt" if self.checkpoint else "nockpt"
        return f"{self.tool}/{self.dtype}/L{self.layers}/b{self.batch}/t{self.length}/{ckpt}"

    @property
    def folder(self) -> Path:
        return default_folder(self.layers, self.dtype)

    def to_dict(self) -> dict[str, Any]:
        return {
            "tool": self.tool,
            "layers": self.layers,
            "batch": self.batch,
            "length": self.length,
            "checkpoint": self.checkpoint,
            "dtype": self.dtype,
        }


def results_file() -> Path:
    return cache_root() / "reference-memory-steady.jsonl"


def read_results() -> dict[str, dict[str, Any]]:
    path = results_file()
    found: dict[str, dict[str, Any]] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            if line.strip():
                record = json.loads(line)
                found[record["key"]] = record
    return found


def settings_for(folder: Path, point: Point) -> Any:
    from scu_tui.presets import load_preset

    return load_preset(PRESET).replace(
        {
            "model.path": str(folder),
            "data.path": str(folder / "data" / f"len-{point.length:04d}"),
            "training.batch_size": point.batch,
            "training.grad_checkpoint": point.checkpoint,
            "training.gradient_accumulation_steps": 1,
            "training.warmup_steps": 0,
        },
        source="bench",
    )


def config_estimate(folder: Path, point: Point, layers: int) -> float:
    """``scu-tui check``'s config-only peak (GB) for ``layers`` blocks of this width, at the
    point's batch and width (no kept rollback states: the step alone)."""
    from scu_tui.check.memory import OPTIMIZER_STATES, estimate, from_config
    from scu_tui.check.model_facts import facts_from_config
    from scu_tui.training.data import PAD_TO

    settings = settings_for(folder, point)
    with tempfile.TemporaryDirectory() as tmp:
        config = shape_config(layers, torch_dtype=point.dtype)
        (Path(tmp) / "config.json").write_text(json.dumps(config))
        facts = facts_from_config(Path(tmp), settings.lora, str(folder))
    facts = type(facts)(**{**facts.__dict__, "optimizer_states": OPTIMIZER_STATES["adamw"]})
    width = -(-point.length // PAD_TO) * PAD_TO + 1  # the product's padding
    coeffs = from_config(facts, point.checkpoint)
    return estimate(facts, coeffs, point.batch, width, grad_checkpoint=point.checkpoint).total / 1e9


# --- one point, in its own process ------------------------------------------------------


def _vm_hwm() -> float | None:
    """The process's peak resident set since the last reset, in GB (Linux)."""
    status = Path("/proc/self/status")
    if not status.exists():
        return None
    for line in status.read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024 / 1e9
    return None


def measure_scu(point: Point) -> dict[str, Any]:
    import mlx.core as mx

    from scu_tui.training.data import load_data
    from scu_tui.training.model import apply_lora, load_model
    from scu_tui.training.trainer import Trainer, use_grad_checkpoint

    folder = point.folder
    settings = settings_for(folder, point)
    tic = time.perf_counter()
    model, tokenizer = load_model(str(folder))
    data = load_data(settings.data, tokenizer, 0)
    mx.random.seed(0)
    apply_lora(model, settings.lora, str(folder))
    if point.checkpoint:
        use_grad_checkpoint(model)
    trainer = Trainer(model, data, settings)
    mx.eval(model.parameters())
    loaded = time.perf_counter() - tic
    resident = float(mx.get_active_memory())
    tic = time.perf_counter()
    trainer.train_step()  # the first step also creates the optimizer's moments
    first = time.perf_counter() - tic
    first_peak = mx.get_peak_memory()
    mx.reset_peak_memory()
    hwm = Path("/proc/self/clear_refs")
    if hwm.exists():  # Linux: restart the peak RSS here, past loading's transients
        hwm.write_text("5")
    tic = time.perf_counter()
    trainer.train_step()  # a steady step: the moments are resident through it
    seconds = time.perf_counter() - tic
    return {
        "first_step_peak_gb": first_peak / 1e9,
        "first_step_seconds": round(first, 1),
        "step_rss_gb": _vm_hwm(),
        "peak_gb": mx.get_peak_memory() / 1e9,
        "resident_gb": resident / 1e9,
        "load_seconds": round(loaded, 1),
        "step_seconds": round(seconds, 1),
    }


def measure_mlx_lm(point: Point) -> dict[str, Any]:
    """``mlx_lm lora`` in this process, as its command line runs it; MLX's peak since the
    process started is the figure its trainer reports as ``peak_memory`` (0.32 no longer
    prints it)."""
    import mlx.core as mx
    from mlx_lm import lora

    folder = point.folder
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "lora.yaml"
        config.write_text(
            "optimizer: adamw\nlora_parameters:\n  rank: 32\n  scale: 2.0\n  dropout: 0.05\n"
        )  # the preset's r32, alpha 64 (mlx-lm's scale is alpha / rank), dropout 0.05, AdamW
        argv = [
            "mlx_lm.lora", "-c", str(config),
            "--model", str(folder), "--train",
            "--data", str(folder / "data" / f"len-{point.length:04d}"),
            "--fine-tune-type", "lora", "--num-layers", "-1",
            "--batch-size", str(point.batch), "--iters", "2",
            "--learning-rate", "2e-4", "--max-seq-length", "2048",
            "--steps-per-report", "1", "--steps-per-eval", "1000", "--val-batches", "1",
            "--adapter-path", str(Path(tmp) / "adapters"),
        ]  # fmt: skip
        if point.checkpoint:
            argv.append("--grad-checkpoint")
        sys.argv = argv
        tic = time.perf_counter()
        lora.main()
        seconds = time.perf_counter() - tic
    return {"peak_gb": mx.get_peak_memory() / 1e9, "run_seconds": round(seconds, 1)}


def child(point: Point) -> None:
    import resource

    import scu_tui  # noqa: F401  (the system OpenBLAS before mlx, as the app loads it)

    result = measure_scu(point) if point.tool == "scu" else measure_mlx_lm(point)
    result["rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9  # KiB
    print("RESULT " + json.dumps(result), flush=True)


# --- the grid ----------------------------------------------------------------------------


def run_point(point: Point) -> dict[str, Any]:
    """Measure ``point`` in a fresh process (the one that trains reports its peak RSS)."""
    command = [sys.executable, str(Path(__file__).resolve()), "--one", json.dumps(point.to_dict())]
    tic = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate()
    lines = [line for line in out.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"{point.key} failed ({proc.returncode}):\n{(out + err)[-3000:]}")
    result = json.loads(lines[-1][len("RESULT ") :])
    result["wall_seconds"] = round(time.perf_counter() - tic, 1)
    return result


def grid(args: argparse.Namespace) -> list[Point]:
    def ints(text: str) -> list[int]:
        return [int(v) for v in text.split(",") if v.strip()]

    checks = [{"on": True, "off": False}[v.strip()] for v in args.checkpoint.split(",")]
    return [
        Point(tool, layers, batch, length, ckpt, args.dtype)
        for tool in args.tools.split(",")
        for layers in ints(args.layers)
        for batch in ints(args.batches)
        for length in ints(args.lengths)
        for ckpt in checks
    ]


def estimated_minutes(point: Point, done: dict[str, dict[str, Any]]) -> float:
    """From the measured seconds of the nearest point, scaled by tokens and blocks; a first
    guess (15 minutes for 2 blocks at 128 tokens) when nothing is measured yet."""
    cost = (point.layers + 4.0) * point.batch * point.length * (4 / 3 if point.checkpoint else 1)
    rates = [
        r["wall_seconds"] / ((r["layers"] + 4.0) * r["batch"] * r["length"]
                             * (4 / 3 if r["checkpoint"] else 1))
        for r in done.values()
    ]  # fmt: skip
    rate = sorted(rates)[len(rates) // 2] if rates else 900 / (6.0 * 128)
    return cost * rate / 60


def _gb(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def report(done: dict[str, dict[str, Any]]) -> None:
    import numpy as np

    rows = sorted(done.values(), key=lambda r: (r["tool"], r["checkpoint"], r["batch"],
                                                r["length"], r["layers"]))  # fmt: skip
    print("| tool | ckpt | batch x tokens | blocks | peak GB (MLX) | peak RSS GB | "
          "step's RSS GB | check, config-only GB | step s |")  # fmt: skip
    print("|---|---|---|--:|--:|--:|--:|--:|--:|")
    for r in rows:
        step = r.get("step_seconds", r.get("run_seconds"))
        tool = f"{r['tool']}, {r.get('dtype', 'bfloat16')}"
        print(f"| {tool} | {'on' if r['checkpoint'] else 'off'} | {r['batch']} x "
              f"{r['length']} | {r['layers']} | {r['peak_gb']:.3f} | {r['rss_gb']:.3f} | "
              f"{_gb(r.get('step_rss_gb'))} | "
              f"{r['config_gb']:.3f} | {step} |")  # fmt: skip
    print()
    print("Extrapolated to 36 blocks (a line through the block counts; the residual at a "
          "third count checks it):")  # fmt: skip
    print(
        "| tool | ckpt | batch x tokens | blocks measured | per block MB | peak at 36, GB | "
        "step's RSS at 36, GB | worst residual MB | check, config-only at 36, GB | "
        "check / measured |"
    )
    print("|---|---|---|---|--:|--:|--:|--:|--:|--:|")
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in rows:
        group = (r["tool"], r.get("dtype", "bfloat16"), r["checkpoint"], r["batch"], r["length"])
        groups.setdefault(group, []).append(r)
    for (tool, dtype, ckpt, batch, length), rs in groups.items():
        if len({r["layers"] for r in rs}) < 2:
            continue
        x = np.array([r["layers"] for r in rs], dtype=float)
        fits = {}
        for field in ("peak_gb", "rss_gb", "step_rss_gb"):
            if any(r.get(field) is None for r in rs):
                fits[field] = (math.nan, math.nan, math.nan)
                continue
            y = np.array([r[field] for r in rs])
            slope, intercept = np.polyfit(x, y, 1)
            fits[field] = (slope, intercept, np.abs(y - (slope * x + intercept)).max())
        slope, intercept, resid = fits["peak_gb"]
        at36 = slope * FULL_LAYERS + intercept
        rss36 = fits["step_rss_gb"][0] * FULL_LAYERS + fits["step_rss_gb"][1]
        config36 = rs[0]["config36_gb"]
        print(f"| {tool}, {dtype} | {'on' if ckpt else 'off'} | {batch} x {length} | "
              f"{','.join(str(int(v)) for v in sorted(x))} | {slope * 1e3:.1f} | {at36:.2f} | "
              f"{rss36:.2f} | {resid * 1e3:.1f} | {config36:.2f} | "
              f"{config36 / at36:.2f} |")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", default="2,4,8", help="block counts (default 2,4,8)")
    parser.add_argument("--batches", default="1,2", help="batch sizes (default 1,2)")
    parser.add_argument("--lengths", default="64,128,256", help="row lengths in tokens")
    parser.add_argument("--checkpoint", default="off,on", help="gradient checkpointing")
    parser.add_argument("--tools", default="scu,mlx_lm", help="scu, mlx_lm or both")
    parser.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16",
                        help="the model's float dtype: bfloat16 as released; float32 runs "
                        "about 8x faster on a CPU and keeps 32-bit activations")  # fmt: skip
    parser.add_argument("--plan", action="store_true", help="list what is missing and its cost")
    parser.add_argument("--report", action="store_true", help="the table from the cache only")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        child(Point(**json.loads(args.one)))
        return 0
    done = read_results()
    if args.report:
        report(done)
        return 0
    todo = [p for p in grid(args) if p.key not in done]
    total = sum(estimated_minutes(p, done) for p in todo)
    print(f"{len(todo)} points to measure, about {total:.0f} minutes "
          f"({len(done)} cached in {results_file()})")  # fmt: skip
    if args.plan:
        for p in todo:
            print(f"  {p.key}: ~{estimated_minutes(p, done):.0f} min")
        return 0
    lengths = sorted({p.length for p in todo})
    for layers in sorted({p.layers for p in todo}):
        config = shape_config(layers, torch_dtype=args.dtype)
        build(default_folder(layers, args.dtype), config, lengths)
    for point in todo:
        print(f"{point.key} ...", flush=True)
        result = run_point(point)
        folder = point.folder
        record = {
            "key": point.key,
            **point.to_dict(),
            **result,
            "config_gb": config_estimate(folder, point, point.layers),
            "config36_gb": config_estimate(folder, point, FULL_LAYERS),
            "when": time.strftime("%Y-%m-%d %H:%M"),
            "load": os.getloadavg()[0],
        }
        with results_file().open("a") as fh:
            fh.write(json.dumps(record) + "\n")
        print(f"  peak {record['peak_gb']:.3f} GB, RSS {record['rss_gb']:.3f} GB, "
              f"{record['wall_seconds']:.0f} s", flush=True)  # fmt: skip
    report(read_results())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
