"""One rank against two: tokens/s of the same run alone and data-parallel over loopback.

Each round trains the same demo run twice: ``scu-tui --headless`` in one process, and
``mlx.launch -n 2 --backend ring -- scu-tui --headless`` (two ranks on this machine,
the ring over loopback). Rounds alternate the order so machine noise hits both arms.
The arms are :mod:`scu_tui.check.ranks`'s, as in ``scu-tui check --ranks 2``: throughput
comes from the run's own ``events.jsonl`` (rank 0 writes it; its step events count the
tokens of the whole global batch), after a warm-up, so start-up and the launcher are left
out, and no evaluation or checkpoint falls inside the measured steps.

    python bench/distributed.py                    # 3 rounds, 300 steps
    python bench/distributed.py --rounds 5 --steps 600

Two ranks on one machine share its cores and memory bandwidth: expect no speed-up here
(on two cores, a slow-down: each rank's BLAS threads compete). On two machines each rank
does half of every step's work, and the gradient exchange of LoRA adapters is small.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from scu_tui.check.ranks import WARMUP, ArmFailed, lean_flags, ring_missing, run_arm

TIMEOUT = 1800.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()
    missing = ring_missing()
    if missing:
        raise SystemExit(missing)
    if args.steps <= WARMUP + 1:
        raise SystemExit(f"--steps must be above the {WARMUP} warm-up steps")
    flags = ["--preset", "demo", *lean_flags(args.steps)]
    one: list[float] = []
    two: list[float] = []
    with tempfile.TemporaryDirectory(prefix="scu-dist-bench-") as tmp:
        for round_ in range(args.rounds):
            order = (1, 2) if round_ % 2 == 0 else (2, 1)
            for ranks in order:
                folder = Path(tmp) / f"r{round_}-n{ranks}"
                folder.mkdir()
                try:
                    tps = run_arm(ranks, flags, folder, TIMEOUT).tokens_per_second
                except ArmFailed as exc:
                    raise SystemExit(f"{ranks} rank(s): {exc}") from None
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
