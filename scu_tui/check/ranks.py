"""One rank against N over loopback: the same run alone and data-parallel, in tokens/s.

``scu-tui check --ranks N`` and ``bench/distributed.py`` share this. Each arm is a real
headless run of the settings in a fresh temporary folder (no S-SCU, no sample answers,
no comparison at the end, one validation batch): ``python -m scu_tui --headless`` for one
rank, ``mlx.launch -n N --backend ring -- python -m scu_tui --headless`` for N (every rank
on this machine, the ring over loopback). Throughput comes from the run's own
``events.jsonl`` (rank 0 writes it; its step events count the tokens of the whole global
batch) after a warm-up, so start-up, compilation and the launcher are left out. Every
wait is bounded: an arm that runs past its limit is killed with its whole process group.

N ranks on one machine share its cores and memory bandwidth, so no speed-up is expected
there; what N machines would give is estimated from the one-rank step time and the bytes
the ring moves per step (:func:`expectation`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scu_tui.check.units import gb
from scu_tui.config import Settings, to_toml
from scu_tui.protocol import RunFile, RunStatus, read_events
from scu_tui.training.distributed import MESSAGE_BYTES

#: Steps per arm, and the first ones left out of the measurement (compilation, caches).
STEPS = 40
WARMUP = 10
#: Seconds an arm may take beyond its steps (loading the model, the first evaluation).
BASE_TIMEOUT = 300.0
#: The link the estimate for N machines assumes: 10 Gb Ethernet, in bytes/s (Thunderbolt
#: networking is faster, JACCL's RDMA much faster).
LINK_BYTES_PER_SECOND = 1.25e9
LINK_NAME = "10 Gb Ethernet"


class ArmFailed(Exception):
    """An arm did not give a measurement; the text says why, in one line."""


@dataclass(frozen=True)
class Measured:
    """Throughput of one arm over its steps after the warm-up."""

    tokens_per_second: float
    seconds_per_step: float
    steps: int  # steps measured


@dataclass(frozen=True)
class Arm:
    ranks: int
    measured: Measured | None
    error: str = ""

    def to_dict(self) -> dict[str, Any]:
        m = self.measured
        return {
            "ranks": self.ranks,
            "tokens_per_second": m.tokens_per_second if m else None,
            "seconds_per_step": m.seconds_per_step if m else None,
            "error": self.error or None,
        }


@dataclass
class RankReport:
    """What ``--ranks N`` found: the arms, or why they did not run; what N machines give."""

    ranks: int
    arms: list[Arm] = field(default_factory=list)
    note: str = ""  # why nothing (or only one arm) ran
    speedup: float | None = None  # estimated for N machines like this one
    expectation: str = ""

    @property
    def ratio(self) -> float | None:
        """N ranks' tokens/s over one rank's."""
        got = {a.ranks: a.measured for a in self.arms if a.measured is not None}
        one, many = got.get(1), got.get(self.ranks)
        if one is None or many is None or one.tokens_per_second <= 0:
            return None
        return many.tokens_per_second / one.tokens_per_second

    def to_dict(self) -> dict[str, Any]:
        return {
            "ranks": self.ranks,
            "backend": "ring",
            "over": "loopback",
            "steps": STEPS,
            "warmup_steps": WARMUP,
            "arms": [a.to_dict() for a in self.arms],
            "ratio": self.ratio,
            "estimated_speedup_on_machines": self.speedup,
            "link": LINK_NAME,
            "expectation": self.expectation or None,
            "note": self.note or None,
        }

    def header(self) -> str:
        """What the table measured ("" when no arm ran)."""
        if not self.arms:
            return ""
        return (
            f"mlx.launch -n {self.ranks} --backend ring over loopback against one process: "
            f"{STEPS} steps each ({WARMUP} warm-up), these settings without the S-SCU"
        )

    def table(self) -> list[str]:
        """Ranks, tokens/s and the ratio to one rank, a row per arm (aligned columns)."""
        if not self.arms:
            return []
        rows = [f"{'ranks':>5}{'tok/s':>12}{'ratio':>9}"]
        one = next((a.measured for a in self.arms if a.ranks == 1), None)
        for arm in self.arms:
            if arm.measured is None:
                rows.append(f"{arm.ranks:>5}{'-':>12}{'-':>9}")  # why: in ``failures``
                continue
            tps = arm.measured.tokens_per_second
            ratio = f"{tps / one.tokens_per_second:.2f}" if one else "-"
            rows.append(f"{arm.ranks:>5}{tps:>12,.0f}{ratio:>9}")
        return rows

    def failures(self) -> list[str]:
        """One line per arm that gave no measurement, and why."""
        return [f"{a.ranks} rank(s): {a.error}" for a in self.arms if a.measured is None]


# --- the launcher ---------------------------------------------------------------------------


def launcher() -> str | None:
    """``mlx.launch`` of this Python environment (else the one on the PATH), or None."""
    beside = Path(sys.executable).with_name("mlx.launch")
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("mlx.launch")


def ring_missing() -> str:
    """Why N ranks cannot run here ("" when they can)."""
    if launcher() is None:
        return "mlx.launch is not installed (it comes with mlx): one rank only"
    import mlx.core as mx

    if not mx.distributed.is_available("ring"):
        return "this MLX build has no ring backend: one rank only"
    return ""


def free_ports(count: int) -> int:
    """A first port with ``count`` consecutive free ones on loopback (the ring listens on
    ``port + rank``)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind(("127.0.0.1", 0))
            first = int(probe.getsockname()[1])
        if first + count > 65535:
            continue
        held: list[socket.socket] = []
        try:
            for port in range(first, first + count):
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                held.append(sock)
                sock.bind(("127.0.0.1", port))
            return first
        except OSError:
            continue
        finally:
            for sock in held:
                sock.close()
    raise ArmFailed(f"no {count} consecutive free ports on 127.0.0.1")


# --- one arm --------------------------------------------------------------------------------


def lean_flags(steps: int) -> list[str]:
    """Run flags that leave only training in the measured steps."""
    return [
        "--headless",
        "--max-steps",
        str(steps),
        "--set",
        "scu.enabled=false",
        "--set",
        "training.samples=0",
        "--set",
        "training.compare_at_end=false",
        "--set",
        "training.eval_batches=1",
        "--set",
        f"training.eval_every={steps}",
        "--set",
        f"training.save_every={steps}",
    ]


def command(ranks: int, flags: list[str], port: int, launch: str | None = None) -> list[str]:
    """The command line of an arm: one process, or ``mlx.launch`` with N."""
    run = [sys.executable, "-m", "scu_tui", *flags]
    if ranks == 1:
        return run
    launch = launch or launcher()
    if launch is None:
        raise ArmFailed("mlx.launch is not installed")
    ring = [launch, "-n", str(ranks), "--backend", "ring", "--starting-port", str(port)]
    return [*ring, "--", *run]


def throughput(run_dir: Path, warmup: int = WARMUP) -> Measured:
    """Tokens/s over the steps after ``warmup``, from rank 0's step events (wall time
    between them: the exchange between ranks counts)."""
    events = run_dir / RunFile.EVENTS
    steps = [e for e in read_events(events) if e["type"] == "step"] if events.exists() else []
    if len(steps) <= warmup + 1:
        raise ArmFailed(f"too few steps to measure ({len(steps)})")
    span = steps[warmup:]
    seconds = float(span[-1]["time"]) - float(span[0]["time"])
    if seconds <= 0:
        raise ArmFailed("the steps took no measurable time")
    tokens = sum(int(e["tokens"]) for e in span[1:])
    return Measured(tokens / seconds, seconds / (len(span) - 1), len(span) - 1)


def _why(log: Path, run_dir: Path, code: int | None) -> str:
    """One line on why an arm failed: the run's own error line, else its summary's."""
    text = log.read_text(encoding="utf-8", errors="replace") if log.exists() else ""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    mine = [line for line in lines if line.startswith("scu-tui: error:")]
    if mine:
        return mine[-1].removeprefix("scu-tui: error:").strip()[:300]
    summary = run_dir / RunFile.SUMMARY
    with contextlib.suppress(OSError, ValueError):
        data = json.loads(summary.read_text(encoding="utf-8"))
        if data.get("status") != RunStatus.COMPLETED:
            return f"the run ended {data.get('status')}: {data.get('message') or 'no message'}"
    tail = lines[-1][:300] if lines else "no output"
    return f"exit code {code}: {tail}"


def run_arm(
    ranks: int,
    flags: list[str],
    folder: Path,
    timeout: float,
    *,
    port: int | None = None,
    warmup: int = WARMUP,
) -> Measured:
    """Train one arm in ``folder`` (a fresh folder of the caller's) and measure it.

    ``flags``: a run's flags (``--preset``, ``--max-steps``, ...); the run goes to
    ``folder/run``, its output to ``folder/output.log``. Raises :class:`ArmFailed`.
    """
    run_dir, log = folder / "run", folder / "output.log"
    cmd = command(ranks, [*flags, "--output-dir", str(run_dir)], port or free_ports(ranks))
    env = {k: v for k, v in os.environ.items() if k != "SCU_TUI_RANK_TRACE"}
    with log.open("w", encoding="utf-8") as out:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # the arm and its ranks: one group to end together
        )
        try:
            code: int | None = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            code = None
        finally:
            if proc.poll() is None:  # past its limit, or this process is interrupted
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    if code is None:
        raise ArmFailed(f"did not finish within {timeout:.0f} s (stopped)")
    # mlx.launch exits 0 even when a rank failed: the run's summary says how it ended
    try:
        summary = json.loads((run_dir / RunFile.SUMMARY).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        summary = {}
    if code != 0 or summary.get("status") != RunStatus.COMPLETED:
        raise ArmFailed(_why(log, run_dir, code))
    return throughput(run_dir, warmup)


# --- what N machines would give -------------------------------------------------------------


def expectation(ranks: int, seconds_per_step: float, gradient_bytes: int) -> tuple[float, str]:
    """``(speed-up, sentences)``: N machines like this one, one rank each.

    Each machine computes 1/N of every step; the ring all-reduce moves ``2 (N-1)/N`` of
    the LoRA gradients' bytes (and of rank 0's order before each step, one all_sum of
    ``MESSAGE_BYTES``) per rank and step over the link.
    Link latency and a half batch that no longer fills a device are not counted: an upper
    bound.
    """
    moved = 2 * (ranks - 1) / ranks * (gradient_bytes + MESSAGE_BYTES)
    exchange = moved / LINK_BYTES_PER_SECOND
    speedup = seconds_per_step / (seconds_per_step / ranks + exchange)
    text = (
        f"On this one machine the {ranks} ranks share its cores and memory bandwidth: no "
        f"speed-up is expected. On {ranks} machines like this one, each does 1/{ranks} of "
        f"every step ({seconds_per_step:.3g} s on one here) and the ring moves "
        f"{gb(moved)} per step (the LoRA gradients, rank 0's order: {exchange * 1e3:.2g} ms "
        f"over {LINK_NAME}): at most {speedup:.2f}x one machine's tokens/s, less when "
        f"1/{ranks} of a batch no longer keeps a GPU busy or the link's latency shows."
    )
    return speedup, text


def compare(
    flags: list[str],
    ranks: int,
    *,
    gradient_bytes: int,
    timeout: float,
    progress: Callable[[str], None] | None = None,
) -> RankReport:
    """Run the one-rank and the N-rank arm of ``flags`` and say what N machines give."""
    report = RankReport(ranks)
    missing = ring_missing()
    with tempfile.TemporaryDirectory(prefix="scu-tui-ranks-") as tmp:
        for n in (1, ranks):
            if n > 1 and missing:
                report.note = missing
                break
            if progress is not None:
                progress(f"{n} rank(s), {STEPS} steps")
            folder = Path(tmp) / f"ranks-{n}"
            folder.mkdir()
            try:
                report.arms.append(Arm(n, run_arm(n, flags, folder, timeout)))
            except ArmFailed as exc:
                report.arms.append(Arm(n, None, str(exc)))
    one = report.arms[0].measured if report.arms else None
    if one is not None:
        report.speedup, report.expectation = expectation(
            ranks, one.seconds_per_step, gradient_bytes
        )
    return report


def probe_ranks(
    settings: Settings,
    ranks: int,
    *,
    gradient_bytes: int,
    seconds_per_step: float | None,
    peak_bytes: float,
    memory_limit: float,
    progress: Callable[[str], None] | None = None,
) -> RankReport:
    """``scu-tui check --ranks N``: the run's settings on one rank and on N.

    ``seconds_per_step``: the check's own timing (None: no step was run, so neither is
    this); ``peak_bytes``: one rank's estimated peak, N of which must fit this machine.
    """
    if seconds_per_step is None:
        note = "--ranks needs the model's weights and a step that fits: not run"
        return RankReport(ranks, note=note)
    if ranks * peak_bytes > memory_limit:
        return RankReport(
            ranks,
            note=f"{ranks} ranks on this machine would need {ranks} x {gb(peak_bytes)}, more "
            f"than the {gb(memory_limit)} it gives a run: not run",
        )
    timeout = BASE_TIMEOUT + 20 * ranks * STEPS * seconds_per_step
    with tempfile.TemporaryDirectory(prefix="scu-tui-preset-") as tmp:
        preset = Path(tmp) / "settings.toml"
        preset.write_text(to_toml(settings, comments=False), encoding="utf-8")
        flags = ["--preset", str(preset), *lean_flags(STEPS)]
        return compare(
            flags, ranks, gradient_bytes=gradient_bytes, timeout=timeout, progress=progress
        )
