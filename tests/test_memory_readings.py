"""Memory as the operating system sees it: readings, the watchdog's figure, the status line.

Paths this machine cannot take (macOS, a process in swap) are tested with injected
readings; one real demo run checks the figures are present and plausible.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Any

import pytest

from scu_tui.app.feed import RunState
from scu_tui.app.widgets import status_numbers
from scu_tui.check.watchdog import MemoryWatchdog
from scu_tui.memory_readings import (
    NO_READING,
    RUSAGE_FOOTPRINT_OFFSET,
    RUSAGE_RESIDENT_OFFSET,
    XSW_USAGE,
    LinuxSource,
    MacSource,
    OsMemory,
    read_os_memory,
)
from scu_tui.protocol import Event, StepEvent, event_from_dict

GIB = 2**30


def proc_status(rss_kb: int, hwm_kb: int, swap_kb: int) -> str:
    return (
        "Name:\tpython\nVmPeak:\t 9000000 kB\n"
        f"VmHWM:\t{hwm_kb:>9} kB\nVmRSS:\t{rss_kb:>9} kB\nVmSwap:\t{swap_kb:>9} kB\n"
    )


def meminfo(total_kb: int, free_kb: int, available_kb: int) -> str:
    return (
        "MemTotal:       16000000 kB\n"
        f"MemAvailable:   {available_kb} kB\nSwapTotal:      {total_kb} kB\n"
        f"SwapFree:       {free_kb} kB\nHugePages_Total:       0\n"
    )


def linux(rss_kb: int, hwm_kb: int, swap_kb: int, used_swap_kb: int = 0) -> OsMemory:
    source = LinuxSource(
        status=lambda: proc_status(rss_kb, hwm_kb, swap_kb),
        meminfo=lambda: meminfo(8_000_000, 8_000_000 - used_swap_kb, 3_000_000),
    )
    return read_os_memory(source)


def rusage(resident: int, footprint: int) -> bytes:
    raw = bytearray(512)
    struct.pack_into("=Q", raw, RUSAGE_RESIDENT_OFFSET, resident)
    struct.pack_into("=Q", raw, RUSAGE_FOOTPRINT_OFFSET, footprint)
    return bytes(raw)


def mac(footprint: int, swap_used: int | None) -> OsMemory:
    swap = (
        None
        if swap_used is None
        else XSW_USAGE.pack(8 * GIB, 8 * GIB - swap_used, swap_used, 16384, 1)
    )
    return read_os_memory(
        MacSource(rusage=lambda: rusage(footprint // 2, footprint), swapusage=lambda: swap)
    )


def test_linux_reading_from_proc_text() -> None:
    r = linux(rss_kb=1_500_000, hwm_kb=1_800_000, swap_kb=40_000, used_swap_kb=500_000)
    assert (r.resident, r.resident_peak, r.swap) == (1_536_000_000, 1_843_200_000, 40_960_000)
    assert r.system_swap == 512_000_000 and r.available == 3_072_000_000
    assert r.resident_source == "VmRSS" and r.system_swap_source == "/proc/meminfo"
    fields = r.event_fields()
    assert fields["rss_gb"] == pytest.approx(1.536) and fields["swap_gb"] == pytest.approx(0.04096)


def test_mac_reading_is_the_physical_footprint_and_the_machines_swap() -> None:
    r = mac(footprint=6 * GIB, swap_used=GIB)
    assert r.resident == 6 * GIB and r.resident_source == "phys_footprint"  # not the RSS
    assert r.system_swap == GIB and r.system_swap_source == "vm.swapusage"
    assert r.swap is None and r.resident_peak is None  # macOS does not say
    assert math.isnan(r.event_fields()["swap_gb"])


def test_a_failing_source_is_no_reading_not_a_failed_run() -> None:
    def broken() -> str:
        raise OSError("no /proc")

    assert read_os_memory(LinuxSource(status=broken)) == NO_READING
    assert (
        read_os_memory(MacSource(rusage=lambda: b"short", swapusage=lambda: None)).resident is None
    )


def test_watchdog_on_linux_uses_the_peak_resident_memory_and_names_it() -> None:
    dog = MemoryWatchdog(limit_bytes=10_000_000_000)
    assert dog.check(1e9, linux(rss_kb=5_000_000, hwm_kb=5_000_000, swap_kb=0)) is None
    # MLX counts little, but the process holds 9.4 GB: the system's figure decides
    alarm = dog.check(1e9, linux(rss_kb=9_000_000, hwm_kb=9_200_000, swap_kb=0))
    assert alarm is not None and alarm.pause
    assert alarm.text.startswith("peak resident memory (VmHWM) 9.42 GB is 94% of the 10.0 GB")
    assert "paused with a checkpoint" in alarm.text and "training.grad_checkpoint" in alarm.text
    assert dog.check(1e9, linux(rss_kb=9_000_000, hwm_kb=9_200_000, swap_kb=0)) is None  # once
    summary = dog.summary()
    assert summary["watchdog_figure"] == "peak resident memory (VmHWM)"
    assert summary["rss_peak_gb"] == pytest.approx(9.4208)
    json.dumps(summary, allow_nan=False)  # no NaN in the summary file


def test_watchdog_on_a_mac_uses_the_footprint_that_counts_metal() -> None:
    dog = MemoryWatchdog(limit_bytes=12 * GIB)
    alarm = dog.check(2 * GIB, mac(footprint=12 * GIB, swap_used=0))
    assert alarm is not None and alarm.pause
    assert alarm.text.startswith("physical footprint (phys_footprint) 12.88 GB is 100%")


def test_watchdog_on_a_gpu_uses_mlx_peak_and_says_so() -> None:
    dog = MemoryWatchdog(limit_bytes=10_000_000_000, os_figure=False)
    reading = linux(rss_kb=1_000_000, hwm_kb=1_000_000, swap_kb=0)
    alarm = dog.check(9.5e9, reading)
    assert alarm is not None and alarm.text.startswith("MLX's peak memory 9.50 GB is 95%")
    assert MemoryWatchdog(limit_bytes=10_000_000_000).check(9.5e9) is not None  # no reading: MLX's


def test_a_run_whose_pages_go_to_swap_pauses_and_says_it_is_swapping() -> None:
    dog = MemoryWatchdog(limit_bytes=100_000_000_000)  # far from the budget
    assert dog.check(1e9, linux(rss_kb=4_000_000, hwm_kb=4_000_000, swap_kb=10_000)) is None
    assert dog.check(1e9, linux(rss_kb=4_000_000, hwm_kb=4_000_000, swap_kb=100_000)) is None
    alarm = dog.check(1e9, linux(rss_kb=3_700_000, hwm_kb=4_000_000, swap_kb=400_000))
    assert alarm is not None and alarm.pause
    assert alarm.text.startswith("this run is swapping: 0.41 GB of it is in swap (VmSwap; 0.01 GB")
    assert dog.check(1e9, linux(rss_kb=3_700_000, hwm_kb=4_000_000, swap_kb=450_000)) is None
    assert dog.check(1e9, linux(rss_kb=3_000_000, hwm_kb=4_000_000, swap_kb=800_000)) is not None
    assert dog.summary()["swap_peak_gb"] == pytest.approx(0.8192)


def test_a_growing_machine_swap_is_a_warning_where_the_process_swap_is_unknown() -> None:
    dog = MemoryWatchdog(limit_bytes=16 * GIB)
    assert dog.check(GIB, mac(footprint=4 * GIB, swap_used=GIB)) is None
    alarm = dog.check(GIB, mac(footprint=4 * GIB, swap_used=2 * GIB))
    assert alarm is not None and not alarm.pause
    assert alarm.text.startswith("the machine is swapping: swap in use grew from 1.07 to 2.15 GB")
    assert "vm.swapusage" in alarm.text and "phys_footprint is 4.29 GB" in alarm.text
    # on Linux, others swapping while this run's pages stay is none of its business
    dog = MemoryWatchdog(limit_bytes=16 * GIB)
    dog.check(GIB, linux(1_000_000, 1_000_000, 0, used_swap_kb=0))
    assert dog.check(GIB, linux(1_000_000, 1_000_000, 0, used_swap_kb=4_000_000)) is None


def step_event(**memory: Any) -> StepEvent:
    return StepEvent(
        3, loss=1.0, grad_norm=1.0, lr=1e-4, tokens=10, tokens_per_second=1.0,
        peak_memory_gb=1.0, step_seconds=1.0, eta_seconds=1.0, max_steps=10,
        weight_decay=0.0, dropout=0.0, batch_size=1, accumulation=1, **memory,
    )  # fmt: skip


def status_after(*events: StepEvent) -> str:
    state = RunState()
    for event in events:
        state.fold(event)
    return status_numbers(state)


def test_status_line_shows_resident_memory_and_swapping() -> None:
    calm = status_after(step_event(rss_gb=2.5, swap_gb=0.0, system_swap_gb=1.0))
    assert "rss 2.50 GB" in calm and "SWAPPING" not in calm
    assert "SWAPPING 0.40 GB" in status_after(step_event(rss_gb=2.5, swap_gb=0.4))
    mac_like = status_after(
        step_event(rss_gb=6.0, rss_source="phys_footprint", system_swap_gb=1.0),
        step_event(rss_gb=6.0, rss_source="phys_footprint", system_swap_gb=1.5),
    )
    assert "footprint 6.00 GB" in mac_like and "machine SWAPPING +0.50 GB" in mac_like


def test_old_step_events_stay_readable() -> None:
    old = json.loads(
        (Path(__file__).parent / "data" / "hot-lr-observe-events.jsonl").read_text().splitlines()[5]
    )
    event = event_from_dict(old)
    assert isinstance(event, StepEvent) and event.peak_memory_gb > 0
    assert math.isnan(event.rss_gb) and event.rss_source == ""
    assert "rss" not in status_after(event)


@pytest.mark.slow
def test_a_real_demo_run_reports_plausible_memory(tmp_path: Path) -> None:
    from scu_tui.presets import load_preset
    from scu_tui.run import Run

    class Keep:
        def __init__(self) -> None:
            self.steps: list[dict[str, Any]] = []

        def emit(self, event: Event) -> None:
            if isinstance(event, StepEvent):
                self.steps.append(event.to_dict())

        def close(self) -> None:
            pass

    settings = load_preset("demo").replace(
        {"training.max_steps": 3, "training.eval_every": 3, "training.save_every": 3}
    )
    run = Run(settings, output_dir=tmp_path / "run")
    keep = Keep()
    run.add_sink(keep)
    assert run.execute() == 0
    assert [s["step"] for s in keep.steps] == [1, 2, 3]
    for s in keep.steps:
        assert s["rss_source"] == "VmRSS"
        # the process holds Python, the libraries and MLX's buffers: more than MLX counts
        assert s["rss_gb"] > s["active_memory_gb"] > 0
        assert s["rss_peak_gb"] >= s["rss_gb"] and s["peak_memory_gb"] >= s["active_memory_gb"]
        assert s["cache_memory_gb"] >= 0 and s["swap_gb"] >= 0 and s["available_gb"] > 0
    summary = json.loads((tmp_path / "run" / "scu_training_summary.json").read_text())
    memory = summary["memory"]
    assert memory["rss_peak_gb"] >= max(s["rss_gb"] for s in keep.steps)
    assert memory["peak_memory_gb"] >= max(s["peak_memory_gb"] for s in keep.steps)
    assert memory["watchdog_figure"] == "peak resident memory (VmHWM)"
    assert memory["budget_gb"] > 0
