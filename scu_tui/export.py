"""``scu-tui export DIR``: a run's metrics in files other tools read.

``metrics.csv`` has one row per optimizer step of the run's surviving timeline (what a
rollback abandoned, the losing branch of an LR trial, or a killed process trained past its
last checkpoint, is left out; an LR trial's winner stands at the trial's last steps)
with the validation loss on the steps that evaluated; ``decisions.csv`` has one row per
S-SCU proposal with what became of it. With ``--tensorboard`` (the ``tensorboard``
extra), the same scalars go to TensorBoard event files, and each decision as text.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scu_tui.errors import UserError
from scu_tui.protocol import (
    DecisionEvent,
    EvalEvent,
    ProposalEvent,
    RollbackEvent,
    RunFile,
    StartEvent,
    StepEvent,
    TrialEvent,
    event_from_dict,
    read_events,
)

STEP_COLUMNS = (
    "step",
    "loss",
    "grad_norm",
    "lr",
    "weight_decay",
    "dropout",
    "accumulation",
    "tokens",
    "tokens_per_second",
    "peak_memory_gb",
    "rss_gb",
    "swap_gb",
    "val_loss",
)
DECISION_COLUMNS = (
    "id",
    "step",
    "rule",
    "diagnosis",
    "knob",
    "before",
    "after",
    "action",
    "reason",
    "outcome",
    "by",
    "decided_step",
)


@dataclass
class Timeline:
    """The rows of a run's surviving history, folded from its events."""

    steps: dict[int, dict[str, Any]] = field(default_factory=dict)
    decisions: dict[str, dict[str, Any]] = field(default_factory=dict)

    def cut_after(self, step: int) -> None:
        self.steps = {s: row for s, row in self.steps.items() if s <= step}

    def add(self, data: dict[str, Any]) -> None:
        event = event_from_dict(data)
        if isinstance(event, StepEvent):
            if self.steps and event.step <= max(self.steps):
                self.cut_after(event.step - 1)  # a rewind the file did not name
            self.steps[event.step] = {k: data.get(k) for k in STEP_COLUMNS if k != "val_loss"}
        elif isinstance(event, EvalEvent) and event.step in self.steps:
            self.steps[event.step]["val_loss"] = event.val_loss
        elif isinstance(event, EvalEvent) and event.step == 0:
            self.steps[0] = {"step": 0, "val_loss": event.val_loss}
        elif isinstance(event, RollbackEvent):
            self.cut_after(event.to_step)
        elif isinstance(event, TrialEvent):  # one timeline: the winning branch's steps
            kept = event.one_timeline(self.steps.items())
            self.steps = {n: {**row, "step": n} for n, row in kept}
        elif isinstance(event, StartEvent) and event.resumed:
            self.cut_after(event.step)
        elif isinstance(event, ProposalEvent):
            self.decisions[event.id] = {k: data.get(k) for k in DECISION_COLUMNS}
        elif isinstance(event, DecisionEvent) and event.id in self.decisions:
            self.decisions[event.id].update(
                outcome=event.outcome, by=event.by, decided_step=event.step
            )


def timeline(run_dir: Path) -> Timeline:
    path = run_dir / RunFile.EVENTS
    if not path.is_file():
        raise UserError(f"export {run_dir}: not a scu-tui run (no {RunFile.EVENTS})")
    result = Timeline()
    for data in read_events(path):
        result.add(data)
    return result


def write_csv(run_dir: Path, out_dir: Path) -> list[Path]:
    """``metrics.csv`` and ``decisions.csv`` in ``out_dir``; returns their paths."""
    rows = timeline(run_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics, decisions = out_dir / "metrics.csv", out_dir / "decisions.csv"
    with open(metrics, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, STEP_COLUMNS, restval="")
        writer.writeheader()
        for step in sorted(rows.steps):
            writer.writerow(rows.steps[step])
    with open(decisions, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, DECISION_COLUMNS, restval="")
        writer.writeheader()
        writer.writerows(rows.decisions.values())
    return [metrics, decisions]


def write_tensorboard(run_dir: Path, out_dir: Path) -> Path:
    """TensorBoard event files of the run's scalars and decisions in ``out_dir``."""
    try:
        from tensorboardX import SummaryWriter
    except ImportError:
        raise UserError(
            "export --tensorboard needs the tensorboard extra: pip install 'scu-tui[tensorboard]'"
        ) from None
    rows = timeline(run_dir)
    scalars = {
        "loss": "train/loss",
        "val_loss": "valid/loss",
        "grad_norm": "train/grad_norm",
        "lr": "knobs/learning_rate",
        "weight_decay": "knobs/weight_decay",
        "dropout": "knobs/dropout",
        "accumulation": "knobs/accumulation",
        "tokens_per_second": "speed/tokens_per_second",
        "peak_memory_gb": "memory/peak_gb",
        "rss_gb": "memory/rss_gb",
        "swap_gb": "memory/swap_gb",
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    writer = SummaryWriter(logdir=str(out_dir))
    try:
        for step in sorted(rows.steps):
            for column, tag in scalars.items():
                value = rows.steps[step].get(column)
                if isinstance(value, int | float) and not isinstance(value, bool):
                    writer.add_scalar(tag, float(value), step)
        for d in rows.decisions.values():
            text = f"{d['id']} {d['action']}: {d['reason']} ({d.get('outcome') or 'pending'})"
            writer.add_text("scu/decisions", text, int(d["step"] or 0))
    finally:
        writer.close()
    return out_dir
