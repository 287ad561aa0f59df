"""Does the dashboard slow training? Tokens/s of the same run with the app and headless.

Each round trains the same run twice, as a user would start it: ``scu-tui --headless``
in a plain subprocess, and ``scu-tui`` (the Textual app) in a real terminal (a tmux
session of the given size, so the app renders every frame it would over SSH). Rounds
alternate the order (A B, B A, ...) so machine noise hits both arms. Throughput comes
from the run's own ``events.jsonl``: tokens trained between the end of a warm-up step and
the last step, over the wall-clock time between those two events, so start-up (Python,
Textual, loading the model) is left out and only the training loop counts.

    python bench/app_overhead.py                      # 3 rounds, 400 steps, 80x24
    python bench/app_overhead.py --rounds 5 --steps 800 --size 200x60

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

from scu_tui.protocol import RunFile
from scu_tui.protocol import read_events as read_event_lines

WARMUP_STEPS = 10  # compile and first evaluation: left out of the measured span
POLL_SECONDS = 0.2


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


def run_app(args: argparse.Namespace, out: Path, session: str) -> float:
    """The app in a tmux terminal; ``q`` once the run is done, as a user would."""
    width, height = args.size
    start = time.perf_counter()
    line = " ".join(command(args, out))
    subprocess.run(
        ["tmux", "new-session", "-d", "-s", session, "-x", str(width), "-y", str(height), line],
        check=True,
        env={**os.environ, "TERM": "xterm-256color"},
    )
    deadline = time.monotonic() + args.timeout
    while not any(e["type"] == "done" for e in read_events(out)):
        if time.monotonic() > deadline:
            subprocess.run(["tmux", "kill-session", "-t", session], check=False)
            raise SystemExit(f"the app did not finish within {args.timeout:.0f} s")
        time.sleep(POLL_SECONDS)
    elapsed = time.perf_counter() - start
    alive = ["tmux", "has-session", "-t", session]
    while subprocess.run(alive, capture_output=True).returncode == 0:
        subprocess.run(["tmux", "send-keys", "-t", session, "q"], check=False)
        time.sleep(POLL_SECONDS)
        if time.monotonic() > deadline:
            subprocess.run(["tmux", "kill-session", "-t", session], check=False)
            break
    return elapsed


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
    args = parser.parse_args()
    if shutil.which("tmux") is None:
        print("app_overhead.py needs tmux (apt-get install tmux)", file=sys.stderr)
        return 2

    rows: list[tuple[int, str, float, float]] = []
    with tempfile.TemporaryDirectory(prefix="scu-bench-") as tmp:
        for round_ in range(args.rounds):
            arms = ["headless", "app"] if round_ % 2 == 0 else ["app", "headless"]
            for arm in arms:
                out = Path(tmp) / f"{arm}-{round_}"
                print(f"round {round_ + 1}/{args.rounds}: {arm} ...", file=sys.stderr)
                if arm == "app":
                    wall = run_app(args, out, f"scu-bench-{os.getpid()}-{round_}")
                else:
                    wall = run_headless(args, out)
                rows.append((round_ + 1, arm, throughput(out), wall))

    width, height = args.size
    print(f"preset {args.preset}, {args.steps} steps, app in a {width}x{height} terminal\n")
    print(f"{'round':>5}  {'arm':<8}  {'tok/s':>9}  {'wall s':>7}")
    for round_, arm, tps, wall in rows:
        print(f"{round_:>5}  {arm:<8}  {tps:>9,.0f}  {wall:>7.1f}")
    ratios = []
    for round_ in range(1, args.rounds + 1):
        by_arm = {arm: tps for r, arm, tps, _ in rows if r == round_}
        ratios.append(by_arm["app"] / by_arm["headless"])
    app = statistics.median(tps for _, arm, tps, _ in rows if arm == "app")
    headless = statistics.median(tps for _, arm, tps, _ in rows if arm == "headless")
    print(
        f"\nmedian tok/s: app {app:,.0f}, headless {headless:,.0f}; "
        f"app/headless {app / headless:.3f} "
        f"(per round {', '.join(f'{r:.3f}' for r in ratios)})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
