"""Does the dashboard slow training? Tokens/s of the same run with the app and headless.

Each round trains the same run twice, as a user would start it: ``scu-tui --headless``
in a plain subprocess, and ``scu-tui`` (the Textual app) in a real terminal (a tmux
session of the given size, so the app renders every frame it would over SSH). With
``--against DIR`` a third arm runs the app from another checkout, to set two builds side
by side in one session. Each arm takes each place in the rounds' order in turn, so
machine noise hits them all. Throughput comes from the run's own ``events.jsonl``: tokens
trained between the end of a warm-up step and the last step, over the wall-clock time
between those two events, so start-up (Python, Textual, loading the model) is left out
and only the training loop counts.

Two ratios come of it: the arms' median tokens/s, and the median of the per-round
ratios (paired: a round's two runs sit side by side in time, so drift over the session
moves it less). Both move with whatever else the machine runs. A steadier figure is also
reported: the CPU seconds the app's own thread (the process's main thread: Textual's
event loop, every redraw) spent per 1,000 steps over the same span, read from ``/proc``
(Linux only; left out elsewhere).

    python bench/app_overhead.py                      # 3 rounds, 400 steps, 80x24
    python bench/app_overhead.py --rounds 5 --steps 800 --size 200x60
    git worktree add /tmp/before HEAD~1               # then, in the same rounds:
    python bench/app_overhead.py --steps 800 --size 200x60 --against /tmp/before

Needs tmux on the PATH.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from scu_tui.protocol import RunFile, parse_event_line
from scu_tui.protocol import read_events as read_event_lines
from scu_tui.remote.attach import lines_from

WARMUP_STEPS = 10  # compile and first evaluation: left out of the measured span
POLL_SECONDS = 0.2
PROC = Path("/proc")


def read_events(run_dir: Path) -> list[dict[str, Any]]:
    """The run's events so far (none before it starts; a half-written last line waits)."""
    path = run_dir / RunFile.EVENTS
    return list(read_event_lines(path)) if path.exists() else []


def throughput(run_dir: Path) -> float:
    """Tokens/s over the training loop, from the run's step events."""
    steps = [e for e in read_events(run_dir) if e["type"] == "step"]
    if len(steps) <= WARMUP_STEPS + 1:
        raise SystemExit(f"{run_dir}: too few steps to measure ({len(steps)})")
    span = steps[WARMUP_STEPS:]
    tokens = sum(e["tokens"] for e in span[1:])
    return float(tokens / (span[-1]["time"] - span[0]["time"]))


def app_pid(out: Path) -> int | None:
    """The pid of the app training into ``out`` (tmux starts it; its command line says)."""
    wanted = f"--output-dir\0{out}\0".encode()
    for entry in PROC.glob("[0-9]*"):
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if wanted in cmdline + b"\0" and b"scu_tui" in cmdline:
            return int(entry.name)
    return None


def main_thread_cpu(pid: int) -> float | None:
    """CPU seconds (user + system) of a process's main thread, or None once it is gone."""
    try:
        stat = (PROC / str(pid) / "task" / str(pid) / "stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def command(args: argparse.Namespace, out: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "scu_tui",
        "--preset",
        args.preset,
        "--max-steps",
        str(args.steps),
        "--mode",
        "auto",
        "--output-dir",
        str(out),
    ]


def run_headless(args: argparse.Namespace, out: Path) -> float:
    start = time.perf_counter()
    subprocess.run(
        [*command(args, out), "--headless"],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return time.perf_counter() - start


def run_app(
    args: argparse.Namespace, out: Path, session: str, checkout: Path
) -> tuple[float, float | None]:
    """The app in a tmux terminal; ``q`` once the run is done, as a user would. It starts in
    ``checkout``, so ``python -m scu_tui`` runs that checkout's code.

    Returns the wall-clock seconds and the app thread's CPU seconds per 1,000 steps
    between the warm-up and the end (None where ``/proc`` cannot say)."""
    width, height = args.size
    start = time.perf_counter()
    line = " ".join(command(args, out))
    terminal = ["-x", str(width), "-y", str(height)]
    subprocess.run(
        ["tmux", "new-session", "-d", "-s", session, "-c", str(checkout), *terminal, line],
        check=True,
        env={**os.environ, "TERM": "xterm-256color"},
    )
    deadline = time.monotonic() + args.timeout
    pid: int | None = None
    first: tuple[int, float] | None = None  # (steps, main-thread CPU s) after the warm-up
    last: tuple[int, float] | None = None
    events, offset, steps, done = out / RunFile.EVENTS, 0, 0, False
    while True:
        if events.exists():  # only the lines added since the last poll: the bench's own
            lines, offset = lines_from(events, offset)  # reading must not load the CPU
            kinds = [(parse_event_line(line) or {}).get("type") for line in lines]
            steps += kinds.count("step")
            done = done or "done" in kinds
        if pid is None and PROC.is_dir():
            pid = app_pid(out)
        cpu = main_thread_cpu(pid) if pid is not None else None
        if cpu is not None and steps >= WARMUP_STEPS:
            last = (steps, cpu)
            first = first or last
        if done:
            break
        if time.monotonic() > deadline:
            subprocess.run(["tmux", "kill-session", "-t", session], check=False)
            raise SystemExit(f"the app did not finish within {args.timeout:.0f} s")
        time.sleep(POLL_SECONDS)
    elapsed = time.perf_counter() - start
    per_1k = None
    if first is not None and last is not None and last[0] > first[0]:
        per_1k = 1000 * (last[1] - first[1]) / (last[0] - first[0])
    alive = ["tmux", "has-session", "-t", session]
    while subprocess.run(alive, capture_output=True).returncode == 0:
        subprocess.run(["tmux", "send-keys", "-t", session, "q"], check=False)
        time.sleep(POLL_SECONDS)
        if time.monotonic() > deadline:
            subprocess.run(["tmux", "kill-session", "-t", session], check=False)
            break
    return elapsed, per_1k


def size(text: str) -> tuple[int, int]:
    width, _, height = text.partition("x")
    return int(width), int(height)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size", type=size, default=(80, 24), help="terminal WIDTHxHEIGHT")
    parser.add_argument("--timeout", type=float, default=600.0, help="per app run, seconds")
    parser.add_argument(
        "--against",
        type=Path,
        metavar="DIR",
        help="also run the app from another checkout (e.g. git worktree add DIR COMMIT), "
        "a third arm in every round",
    )
    args = parser.parse_args()
    if shutil.which("tmux") is None:
        print("app_overhead.py needs tmux (apt-get install tmux)", file=sys.stderr)
        return 2
    if args.against is not None and not (args.against / "scu_tui").is_dir():
        print(f"--against {args.against}: no scu_tui package there", file=sys.stderr)
        return 2

    here = Path.cwd()
    checkouts = {"app": here} | ({"app@other": args.against.resolve()} if args.against else {})
    arms = ["headless", *checkouts]
    rows: list[tuple[int, str, float, float, float | None]] = []
    with tempfile.TemporaryDirectory(prefix="scu-bench-") as tmp:
        for round_ in range(args.rounds):
            shift = round_ % len(arms)  # each arm takes each place in turn
            for arm in arms[shift:] + arms[:shift]:
                out = Path(tmp) / f"{arm}-{round_}"
                print(f"round {round_ + 1}/{args.rounds}: {arm} ...", file=sys.stderr)
                cpu: float | None = None
                if arm in checkouts:
                    session = f"scu-bench-{os.getpid()}-{round_}"
                    wall, cpu = run_app(args, out, session, checkouts[arm])
                else:
                    wall = run_headless(args, out)
                rows.append((round_ + 1, arm, throughput(out), wall, cpu))

    width, height = args.size
    print(f"preset {args.preset}, {args.steps} steps, app in a {width}x{height} terminal")
    if args.against is not None:
        print(f"app@other: the app from {args.against}")
    print(f"\n{'round':>5}  {'arm':<9}  {'tok/s':>9}  {'wall s':>7}  {'app CPU s/1k steps':>18}")
    for round_, arm, tps, wall, cpu in rows:
        shown = "" if cpu is None else f"{cpu:.2f}"
        print(f"{round_:>5}  {arm:<9}  {tps:>9,.0f}  {wall:>7.1f}  {shown:>18}")
    headless = statistics.median(tps for _, arm, tps, _, _ in rows if arm == "headless")
    print(f"\nheadless: median {headless:,.0f} tok/s")
    for app_arm in checkouts:
        ratios = []
        for round_ in range(1, args.rounds + 1):
            by_arm = {arm: tps for r, arm, tps, _, _ in rows if r == round_}
            ratios.append(by_arm[app_arm] / by_arm["headless"])
        app = statistics.median(tps for _, arm, tps, _, _ in rows if arm == app_arm)
        cpus = [cpu for _, arm, _, _, cpu in rows if arm == app_arm and cpu is not None]
        cpu_text = (
            f"; its thread {statistics.median(cpus):.2f} CPU s per 1,000 steps "
            f"({min(cpus):.2f} - {max(cpus):.2f})"
            if cpus
            else ""
        )
        print(
            f"{app_arm}: median {app:,.0f} tok/s, {app / headless:.3f} of headless; "
            f"median of the per-round ratios {statistics.median(ratios):.3f} "
            f"(per round {', '.join(f'{r:.3f}' for r in ratios)}){cpu_text}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
