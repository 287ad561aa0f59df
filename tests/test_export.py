"""A run's metrics as CSV and TensorBoard files: one row per step of its one timeline."""

from __future__ import annotations

import csv
import dataclasses
import json
import struct
from pathlib import Path

import pytest

from scu_tui.export import timeline, write_csv, write_tensorboard

DATA = Path(__file__).parent / "data" / "hot-lr-observe-events.jsonl"


def run_with_rollback(tmp_path: Path) -> Path:
    """The recorded hot run, rolled back at step 70 to 40, then trained on from there."""
    events = [json.loads(line) for line in DATA.read_text().splitlines()]
    first = [e for e in events if e["type"] != "done" and e["step"] <= 70]
    rollback = {"type": "rollback", "step": 70, "time": 0.0, "to_step": 40, "reason": "x"}
    branch = [e for e in events if e["type"] in ("step", "eval") and e["step"] > 40]
    decided = {"type": "decision", "step": 20, "time": 0.0, "id": "p0001",
               "outcome": "observed", "by": "controller"}  # fmt: skip
    run = tmp_path / "run"
    run.mkdir()
    lines = [*first, decided, rollback, *branch]
    (run / "events.jsonl").write_text("\n".join(json.dumps(e) for e in lines) + "\n")
    return run


def test_csv_has_one_row_per_surviving_step_and_every_decision(tmp_path: Path) -> None:
    run = run_with_rollback(tmp_path)
    metrics, decisions = write_csv(run, tmp_path / "out")
    rows = list(csv.DictReader(metrics.open()))
    assert [int(r["step"]) for r in rows] == list(range(0, 101))  # 0: the first evaluation
    step_60 = next(r for r in rows if r["step"] == "60")
    originals = [json.loads(line) for line in DATA.read_text().splitlines()]
    second_branch = [e for e in originals if e["type"] == "step" and e["step"] == 60][-1]
    assert float(step_60["loss"]) == pytest.approx(second_branch["loss"])
    assert rows[0]["val_loss"] and not rows[1]["val_loss"]
    proposals = list(csv.DictReader(decisions.open()))
    assert proposals[0]["id"] == "p0001" and proposals[0]["outcome"] == "observed"
    assert "Erratic gradients" in proposals[0]["reason"]


@pytest.mark.parametrize("tried_wins", [False, True])
def test_after_an_lr_trial_the_csv_holds_the_winning_branch_alone(
    tmp_path: Path, tried_wins: bool
) -> None:
    """Steps 11-30 at the LR, 31-50 the same batches at half: one row per step of the run's
    one timeline, the winner's losses at steps 31-50 (as the run numbers them)."""
    from helpers import step_event

    from scu_tui.protocol import EvalEvent, TrialEvent

    events = [
        dataclasses.replace(step_event(n, loss=n / 100 + (1.0 if n > 30 else 0.0)), lr=lr)
        for n in range(1, 51)
        for lr in [1e-3 if n <= 30 else 5e-4]
    ]
    verdict = TrialEvent(
        50, first=10, lr=1e-3, tried_lr=5e-4, tried_wins=tried_wins,
        current_loss=0.2, tried_loss=1.4, ratio=1.0, t=9.0,
    )  # fmt: skip
    passed = EvalEvent(50, val_loss=0.5, best_val_loss=0.5, is_best=True, seconds=0.1)
    events += [verdict, passed, step_event(51)]
    run = tmp_path / "run"
    run.mkdir()
    (run / "events.jsonl").write_text("".join(e.to_json() + "\n" for e in events))
    metrics, _ = write_csv(run, tmp_path / "out")
    rows = {int(r["step"]): r for r in csv.DictReader(metrics.open())}
    assert sorted(rows) == [*range(1, 11), *range(31, 52)]
    winner = [n / 100 + 1.0 for n in range(31, 51)] if tried_wins else [
        n / 100 for n in range(11, 31)
    ]
    assert [float(rows[n]["loss"]) for n in range(31, 51)] == pytest.approx(winner)
    assert float(rows[50]["lr"]) == (5e-4 if tried_wins else 1e-3)
    assert float(rows[50]["val_loss"]) == 0.5


def test_tensorboard_event_files_hold_the_scalars(tmp_path: Path) -> None:
    pytest.importorskip("tensorboardX")
    from tensorboardX.proto.event_pb2 import Event

    out = write_tensorboard(run_with_rollback(tmp_path), tmp_path / "tb")
    (events_file,) = out.glob("events.out.tfevents.*")
    tags: dict[str, list[int]] = {}
    data = events_file.read_bytes()
    at = 0
    while at < len(data):  # TFRecords: length (8), its CRC (4), the record, its CRC (4)
        length = struct.unpack("<Q", data[at : at + 8])[0]
        event = Event.FromString(data[at + 12 : at + 12 + length])
        at += 16 + length
        for value in event.summary.value:
            tags.setdefault(value.tag, []).append(event.step)
    assert tags["train/loss"] == list(range(1, 101))
    assert "valid/loss" in tags and "knobs/learning_rate" in tags
    assert len(timeline(tmp_path / "run").steps) == 101


@pytest.mark.slow
def test_scu_tui_export_writes_where_it_says(tmp_path: Path) -> None:
    from helpers import scu

    run = run_with_rollback(tmp_path)
    result = scu("export", str(run), "--to", str(tmp_path / "csv"))
    assert result.returncode == 0, result.stderr
    assert f"wrote {tmp_path / 'csv' / 'metrics.csv'}" in result.stdout
    assert (tmp_path / "csv" / "decisions.csv").is_file()
    assert scu("export", str(tmp_path / "nothing")).returncode == 2
