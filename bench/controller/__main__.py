"""``python -m bench.controller``: parse the flags, run (or re-render) the benchmark,
print the report and write its section of docs/benchmarks.md."""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import bench.controller
from bench.controller.analysis import analyse
from bench.controller.arms import ARM_SPECS, DEFAULT_ARMS, LR_GRID
from bench.controller.report import render, task_info
from bench.controller.running import (
    append_raw,
    load_raw,
    log,
    plan,
    run_benchmark,
    sweep,
    trace_one,
)
from bench.controller.tasks import DEFAULT_TASKS, SMOKE_TASKS, TASKS, make_tasks, parse_set
from bench.docs_section import write_section
from scu_tui.config import all_keys

#: ``--smoke``: the whole path (bases, data, runs, report) at a size that takes minutes.
SMOKE = {
    "arms": "constant,scu",
    "factors": "1,10",
    "seeds": 1,
    "steps": 24,
    "set": {"training.eval_every": 8, "training.warmup_steps": 4},
}


def default_arms() -> list[str]:
    """The judged arms this build can run (the optimizer arms need ``training.optimizer``)."""
    has_optimizer = "training.optimizer" in all_keys()
    return [
        a
        for a in DEFAULT_ARMS
        if has_optimizer or "training.optimizer" not in ARM_SPECS[a].settings
    ]


def seed_list(text: str) -> list[int]:
    """`--seeds 3` is seeds 0, 1, 2; `--seeds 2,3` is those two (new seeds beside old runs)."""
    try:
        if "," in text:
            return sorted({int(x) for x in text.split(",") if x.strip()})
        return list(range(int(text)))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: a count or a comma-separated list") from None


def main() -> None:
    # the synthetic task's data is in memory: no hub look-ups (each one retries for ~30 s)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    parser = argparse.ArgumentParser(description=(bench.controller.__doc__ or "").split("\n\n")[0])
    parser.add_argument(
        "--tasks", default=None, help=f"of: {', '.join(TASKS)} (default: the LoRA tasks)"
    )
    parser.add_argument("--split", choices=("tuning", "test", "all"), default="all")
    parser.add_argument(
        "--seeds",
        type=seed_list,
        default=None,
        help="paired seeds: a count (5: seeds 0-4, the default) or a list (2,3)",
    )
    parser.add_argument("--factors", default=None, help="LR factors, e.g. 0.1,1,10")
    parser.add_argument("--arms", default=None, help=f"of: {', '.join(ARM_SPECS)}")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a setting over every run (repeatable), e.g. scu.control_frequency=10",
    )
    parser.add_argument(
        "--smoke", action="store_true", help="2 tasks x 2 arms x 2 LRs x 1 seed x 24 steps"
    )
    parser.add_argument("--steps", default="", help="per task, e.g. demo-lora=300,completions=200")
    parser.add_argument("--jobs", type=int, default=1, help="cells run in parallel processes")
    parser.add_argument("--quick", action="store_true", help="2 seeds, shorter runs")
    parser.add_argument("--raw", type=Path, default=None, help="append per-run results (JSONL)")
    parser.add_argument("--report-only", type=Path, default=None, help="render a --raw file")
    parser.add_argument("--no-write", action="store_true", help="do not touch docs/benchmarks.md")
    parser.add_argument("--sweep", action="store_true", help="the base-LR sweep instead")
    parser.add_argument("--plan", action="store_true", help="print the runs per task, run none")
    parser.add_argument(
        "--trace",
        action="store_true",
        help="one run per task, arm, LR and seed, every step written out (no report)",
    )
    parser.add_argument(
        "--long-demo", type=int, default=0, metavar="STEPS", help="the long demo run instead"
    )
    args = parser.parse_args()
    overrides = parse_set(args.set)
    if args.smoke:
        args.tasks = args.tasks or ",".join(SMOKE_TASKS)
        args.arms = args.arms or SMOKE["arms"]
        args.factors = args.factors or SMOKE["factors"]
        args.seeds = args.seeds or list(range(SMOKE["seeds"]))  # type: ignore[call-overload]
        args.steps = args.steps or ",".join(f"{t}={SMOKE['steps']}" for t in args.tasks.split(","))
        overrides = {**SMOKE["set"], **overrides}  # type: ignore[dict-item]
        args.no_write = True

    if args.report_only:
        results, meta = load_raw(args.report_only)
        if not results:
            raise SystemExit(f"{args.report_only}: no results")
    else:
        names = [n.strip() for n in (args.tasks or ",".join(DEFAULT_TASKS)).split(",")]
        names = [n for n in names if n]
        unknown_tasks = [n for n in names if n not in TASKS]
        if unknown_tasks:
            raise SystemExit(f"unknown task(s) {unknown_tasks} (known: {', '.join(TASKS)})")
        if args.split != "all":
            names = [n for n in names if n in TASKS and TASKS[n][3] == args.split]
        steps: dict[str, int | None] = {}
        for item in filter(None, (x.strip() for x in args.steps.split(","))):
            name, _, value = item.partition("=")
            steps[name.strip()] = int(value)
        seeds = args.seeds or list(range(2 if args.quick else 5))
        if args.long_demo:
            from bench.controller.long_run import long_demo

            body = long_demo(args.long_demo, seeds if args.seeds else [0], args.jobs)
            print(body)
            if not args.no_write:
                write_section("controller-long", body)
            return
        factors = [float(x) for x in args.factors.split(",")] if args.factors else list(LR_GRID)
        arms = (
            [x.strip() for x in args.arms.split(",") if x.strip()] if args.arms else default_arms()
        )
        unknown = set(arms) - set(ARM_SPECS)
        if unknown:
            raise SystemExit(f"unknown arm(s) {sorted(unknown)} (known: {', '.join(ARM_SPECS)})")
        if "placebo" in arms and "scu" not in arms:
            raise SystemExit("the placebo copies the S-SCU's number of changes: add the scu arm")
        for arm in arms:
            missing = [k for k in ARM_SPECS[arm].settings if k not in all_keys()]
            if missing and not args.plan:
                raise SystemExit(f"arm {arm} needs {', '.join(missing)}, which this build lacks")
        # the placebo runs after its paired S-SCU run
        arms = [a for a in ARM_SPECS if a in arms]
        if args.plan:
            runs = plan({n: TASKS[n][3] for n in names}, factors, seeds, arms)
            for name, count in runs.items():
                print(f"{name:<18} {TASKS[name][3]:<7} {count:5d} runs")
            print(f"{'total':<26} {sum(runs.values()):5d} runs; arms {', '.join(arms)}")
            return
        tasks = make_tasks(names, args.quick, steps, overrides)
        if args.trace:
            with tempfile.TemporaryDirectory(prefix="scu-trace-") as tmp:
                for task, factor, seed, arm in itertools.product(tasks, factors, seeds, arms):
                    trace_one(task, arm, factor, seed, Path(tmp))
            return
        if args.sweep:
            if len(arms) != 1 and args.arms:
                raise SystemExit("--sweep runs one arm: --arms cosine (the default) or another")
            arm = arms[0] if args.arms else "cosine"
            body = sweep(tasks, seeds if args.seeds else seeds[:3], arm)
            print(body)
            if not args.no_write:
                write_section("controller-sweep" + ("" if arm == "cosine" else f"-{arm}"), body)
            return
        tic = time.perf_counter()
        results = run_benchmark(
            tasks, factors, seeds, arms, args.raw, args.jobs, (args.quick, steps, overrides)
        )
        meta = {
            "command": reproducing_command(sys.argv[1:]),
            "seconds": time.perf_counter() - tic,
            "machine": machine(),
            "tasks": [task_info(t) for t in tasks],
        }
        append_raw(args.raw, {"meta": meta})
    metric = {t["name"]: t["metric"] for t in meta.get("tasks", [])}
    for r in results:
        metric.setdefault(r.task, "val loss - floor" if r.floor else "val loss")
    split = {t["name"]: t.get("split", "tuning") for t in meta.get("tasks", [])}
    body = render(analyse(results, metric, split), meta)
    print(body)
    if not args.no_write:
        write_section("controller", body)
    if not args.report_only:
        log(f"total {meta['seconds'] / 60:.1f} min")


def reproducing_command(argv: Sequence[str]) -> str:
    """The command line without the options that only say where results go."""
    kept: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg in ("--raw", "--report-only"):
            skip = True
        elif not arg.startswith(("--raw=", "--report-only=")) and arg != "--no-write":
            kept.append(arg)
    return " ".join(["python -m bench.controller", *kept])


def machine() -> str:
    if sys.platform == "darwin":
        return f"{platform.machine()} macOS, MLX Metal"
    return f"{platform.machine()} Linux, {os.cpu_count()} CPU cores, MLX CPU backend"


if __name__ == "__main__":
    main()
