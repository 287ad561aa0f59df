"""``scu-tui replay DIR``: run the S-SCU over a finished run's events, offline.

Every proposal is treated as observed (nothing was applied), so the output shows what
the controller would have proposed on that history: shadow-mode evidence, and a way to
tune ``[scu]`` settings with ``--set`` without training again.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from scu_tui.config import Settings
from scu_tui.control.controller import Controller
from scu_tui.control.policy import Proposal
from scu_tui.errors import UserError
from scu_tui.run import EVENTS_FILE


def read_events(path: Path) -> Iterator[dict[str, Any]]:
    """Events of a run; a partial last line (a killed run) is skipped."""
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                if fh.read().strip():  # not the last line: the file is damaged
                    raise UserError(f"{path}:{number}: not valid JSON") from None


def replay(run_dir: Path, settings: Settings) -> list[Proposal]:
    """The proposals the controller makes over the run's step and eval history."""
    path = run_dir / EVENTS_FILE
    if not path.is_file():
        raise UserError(f"replay {run_dir}: not a scu-tui run (no {EVENTS_FILE})")
    controller = Controller(settings.scu, settings.training)
    knobs: dict[str, float] = {"lr_multiplier": 1.0}
    proposals: list[Proposal] = []
    for event in read_events(path):
        kind, step = event.get("type"), int(event.get("step", 0))
        if kind == "knob":
            knobs[str(event["knob"])] = float(event["after"])
        elif kind == "eval" and step > 0:
            controller.observe_eval(step, float(event["val_loss"]))
        elif kind == "step":
            loss, grad_norm, lr = (float(event[k]) for k in ("loss", "grad_norm", "lr"))
            controller.observe(step, loss, grad_norm, lr)
            knobs.update(
                lr=lr,
                weight_decay=float(event["weight_decay"]),
                dropout=float(event["dropout"]),
                accumulation=float(event["accumulation"]),
            )
            proposal = controller.decide(step, knobs)
            if proposal is not None:
                controller.record_outcome(proposal.id, "observed")
                proposals.append(proposal)
    return proposals


def print_replay(run_dir: Path, settings: Settings, out: TextIO) -> int:
    proposals = replay(run_dir, settings)
    for p in proposals:
        print(f"SCU Step {p.step}: {p.reason} [{p.action}; rule {p.rule}, {p.diagnosis}]", file=out)
    recorded = 0
    metrics = run_dir / "scu_training_metrics.json"
    if metrics.is_file():
        recorded = len(json.loads(metrics.read_text(encoding="utf-8")))
    print(
        f"{len(proposals)} proposals on replay (nothing applied); the run itself recorded "
        f"{recorded}.",
        file=out,
    )
    return 0
