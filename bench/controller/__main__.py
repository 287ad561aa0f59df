"""``python -m bench.controller``: parse the flags, run (or re-render) the benchmark,
print the report and write its section of docs/benchmarks.md."""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import bench.controller
from bench.controller.analysis import analyse
from bench.controller.arms import ARMS, EXTRA_ARMS, LR_GRID
from bench.controller.report import render, task_info
from bench.controller.running import append_raw, load_raw, log, run_benchmark, sweep
from bench.controller.tasks import TASKS, make_tasks
from bench.docs_section import write_section


def main() -> None:
    # the synthetic task's data is in memory: no hub look-ups (each one retries for ~30 s)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    parser = argparse.ArgumentParser(description=(bench.controller.__doc__ or "").split("\n\n")[0])
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--seeds", type=int, default=None, help="paired seeds (default 5)")
    parser.add_argument("--factors", default=None, help="LR factors, e.g. 0.1,1,10")
    parser.add_argument("--arms", default=",".join(ARMS), help="also: scu_cosine")
    parser.add_argument("--steps", default="", help="per task, e.g. demo-lora=300,completions=200")
    parser.add_argument("--jobs", type=int, default=1, help="cells run in parallel processes")
    parser.add_argument("--quick", action="store_true", help="2 seeds, shorter runs")
    parser.add_argument("--raw", type=Path, default=None, help="append per-run results (JSONL)")
    parser.add_argument("--report-only", type=Path, default=None, help="render a --raw file")
    parser.add_argument("--no-write", action="store_true", help="do not touch docs/benchmarks.md")
    parser.add_argument("--sweep", action="store_true", help="the base-LR sweep instead")
    parser.add_argument(
        "--long-demo", type=int, default=0, metavar="STEPS", help="the long demo run instead"
    )
    args = parser.parse_args()

    if args.report_only:
        results, meta = load_raw(args.report_only)
        if not results:
            raise SystemExit(f"{args.report_only}: no results")
    else:
        names = [n.strip() for n in args.tasks.split(",") if n.strip()]
        steps: dict[str, int | None] = {}
        for item in filter(None, (x.strip() for x in args.steps.split(","))):
            name, _, value = item.partition("=")
            steps[name.strip()] = int(value)
        seeds = list(range(args.seeds if args.seeds else (2 if args.quick else 5)))
        if args.long_demo:
            from bench.controller.long_run import long_demo

            body = long_demo(args.long_demo, seeds if args.seeds else [0], args.jobs)
            print(body)
            if not args.no_write:
                write_section("controller-long", body)
            return
        tasks = make_tasks(names, args.quick, steps)
        if args.sweep:
            body = sweep(tasks, seeds if args.seeds else seeds[:3])
            print(body)
            if not args.no_write:
                write_section("controller-sweep", body)
            return
        factors = [float(x) for x in args.factors.split(",")] if args.factors else list(LR_GRID)
        arms = [x.strip() for x in args.arms.split(",") if x.strip()]
        unknown = set(arms) - set(ARMS) - set(EXTRA_ARMS)
        if unknown:
            raise SystemExit(f"unknown arm(s) {sorted(unknown)} (known: {', '.join(ARMS)})")
        if "placebo" in arms and "scu" not in arms:
            raise SystemExit("the placebo copies the S-SCU's number of changes: add the scu arm")
        # the placebo runs after its paired S-SCU run
        arms = [a for a in (*ARMS, *EXTRA_ARMS) if a in arms]
        tic = time.perf_counter()
        results = run_benchmark(
            tasks, factors, seeds, arms, args.raw, args.jobs, (args.quick, steps)
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
    body = render(analyse(results, metric), meta)
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
