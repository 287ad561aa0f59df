"""One rank against two: tokens/s of the same run alone and data-parallel over loopback.

Each round trains the same demo run twice: ``scu-tui --headless`` in one process, and
``mlx.launch -n 2 --backend ring -- scu-tui --headless`` (two ranks on this machine,
the ring over loopback). Rounds alternate the order so machine noise hits both arms.
Throughput comes from the run's own ``events.jsonl`` (rank 0 writes it; its step events
count the tokens of the whole global batch), after a warm-up, so start-up and the
launcher are left out.

    python bench/distributed.py                    # 3 rounds, 300 steps
    python bench/distributed.py --rounds 5 --steps 600

Two ranks on one machine share its cores and memory bandwidth: expect no speed-up here
(on two cores, a slow-down: each rank's BLAS threads compete). On two machines each rank
does half of every step's work, and the gradient exchange of LoRA adapters is small.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

WARMUP_STEPS = 10
LAUNCH = shutil.which("mlx.launch")


def throughput(run_dir: Path) -> float:
    """Tokens/s over the training loop, from rank 0's step events."""
    from scu_tui.protocol import RunFile, read_events

    steps = [e for e in read_events(run_dir / RunFile.EVENTS) if e["type"] == "step"]
    if len(steps) <= WARMUP_STEPS + 1:
        raise SystemExit(f"{run_dir}: too few steps to measure ({len(steps)})")
    span = steps[WARMUP_STEPS:]
    tokens = sum(e["tokens"] for e in span[1:])
    return float(tokens / (span[-1]["time"] - span[0]["time"]))


def train(ranks: int, steps: int, out: Path, port: int) -> float:
    run = [
        "scu-tui",
        "--headless",
        "--preset",
        "demo",
        "--max-steps",
        str(steps),
        "--output-dir",
        str(out),
        "--set",
        "scu.enabled=false",
        "--set",
        "training.compare_at_end=false",
        "--set",
        "training.samples=0",
    ]
    if ranks == 1:
        cmd = [sys.executable, "-m", "scu_tui", *run[1:]]
    else:
        assert LAUNCH is not None
        launch = [LAUNCH, "-n", str(ranks), "--backend", "ring", "--starting-port", str(port)]
        cmd = [*launch, "--", *run]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
    return throughput(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()
    if LAUNCH is None:
        raise SystemExit("mlx.launch is not on the PATH (it comes with mlx)")
    one: list[float] = []
    two: list[float] = []
    with tempfile.TemporaryDirectory(prefix="scu-dist-bench-") as tmp:
        for round_ in range(args.rounds):
            order = (1, 2) if round_ % 2 == 0 else (2, 1)
            for ranks in order:
                out = Path(tmp) / f"r{round_}-n{ranks}"
                tps = train(ranks, args.steps, out, 31000 + 10 * round_)
                (one if ranks == 1 else two).append(tps)
                print(f"round {round_ + 1}: {ranks} rank(s) {tps:,.0f} tok/s", flush=True)
    m1, m2 = statistics.median(one), statistics.median(two)
    print()
    print("| setup | median tok/s | 2 ranks / 1 rank |")
    print("|---|---|---|")
    print(f"| 1 rank | {m1:,.0f} | |")
    print(f"| 2 ranks, ring over loopback | {m2:,.0f} | {m2 / m1:.2f} |")


if __name__ == "__main__":
    main()
