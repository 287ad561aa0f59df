"""The one record of every proposal's life: issued, pending, answered, expired, cancelled,
and the effect check's verdict once known.

The controller writes it (it issues proposals, learns from their outcomes and judges their
effect); :mod:`scu_tui.control.steering` opens each proposal in a mode and decides what
becomes of it; the metrics file, the checkpoints and the decision inspector all read it.
Nothing else keeps a proposal's state.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from scu_tui.control.policy import Proposal
from scu_tui.control.signals import json_safe
from scu_tui.protocol import TAKEN, Decider, Outcome


@dataclass
class ProposalRecord:
    """A proposal and everything that happened to it."""

    proposal: Proposal
    mode: str = ""  # the S-SCU mode it met
    signals: dict[str, Any] = field(default_factory=dict)  # what the controller saw
    outcome: Outcome | None = None  # once decided
    by: Decider | None = None
    decided_step: int | None = None
    expires_at: int | None = None  # ask mode: the step it lapses at, unanswered
    # the effect check: what the move was meant to improve, and the verdict
    metric: str | None = None  # "loss" | "val_loss" | None (safety moves are never judged)
    baseline: float = math.nan
    baseline_se: float = math.nan
    val_trend: float = 0.0
    check: str = "issued"  # issued -> checking (applied, effect pending) -> done
    applied_step: int = -1
    effect: dict[str, Any] | None = None

    @property
    def id(self) -> str:
        return self.proposal.id

    @property
    def pending(self) -> bool:
        """Waiting for a person's answer."""
        return self.outcome is None and self.expires_at is not None

    def to_dict(self) -> dict[str, Any]:
        """The record as the metrics file (``scu_training_metrics.json``) shows it."""
        return dict(
            json_safe(
                {
                    **self.proposal.to_dict(),
                    "signals": self.signals,
                    "mode": self.mode,
                    "outcome": self.outcome,
                    "by": self.by,
                    "decided_step": self.decided_step,
                    "effect": self.effect,
                }
            )
        )

    def state(self) -> dict[str, Any]:
        data = asdict(self)
        data["proposal"] = self.proposal.to_dict()
        return dict(json_safe(data))

    @classmethod
    def from_state(cls, data: Mapping[str, Any]) -> ProposalRecord:
        values = dict(data)
        p = dict(values.pop("proposal"))
        p["before"], p["after"] = float(p["before"]), float(p["after"])
        for key in ("baseline", "baseline_se", "val_trend"):
            values[key] = float(values[key])
        if values.get("outcome") is not None:
            values["outcome"] = Outcome(values["outcome"])
        if values.get("by") is not None:
            values["by"] = Decider(values["by"])
        return cls(proposal=Proposal(**p), **values)


class ProposalBook:
    """Every proposal of a run, in the order issued."""

    def __init__(self) -> None:
        self._records: dict[str, ProposalRecord] = {}

    def __iter__(self) -> Iterator[ProposalRecord]:
        return iter(list(self._records.values()))

    def __len__(self) -> int:
        return len(self._records)

    def get(self, proposal_id: str) -> ProposalRecord | None:
        return self._records.get(proposal_id)

    def add(self, record: ProposalRecord) -> None:
        self._records[record.id] = record

    def open(self, proposal: Proposal, mode: str, expires_at: int | None) -> ProposalRecord:
        """Which mode met a proposal (and, asking, when it lapses); a proposal from
        elsewhere (a person's, a test's) enters the book here."""
        record = self.get(proposal.id)
        if record is None:
            record = ProposalRecord(proposal)
            self.add(record)
        record.mode, record.expires_at = mode, expires_at
        return record

    def of_rule(self, rule: str, first: int = 0) -> list[ProposalRecord]:
        """The proposals of ``rule`` among those from the ``first``-th issued on."""
        return [
            r
            for r in itertools.islice(self._records.values(), first, None)
            if r.proposal.rule == rule
        ]

    def pending(self) -> list[ProposalRecord]:
        """Proposals waiting for an answer, oldest first."""
        return [r for r in self._records.values() if r.pending]

    def taken(self) -> list[ProposalRecord]:
        """Proposals whose change is in force (applied or accepted, not undone since)."""
        return [r for r in self._records.values() if r.outcome in TAKEN]

    def on_branch_after(self, step: int) -> list[ProposalRecord]:
        """Proposals made after ``step`` that are still open or in force: a rollback to
        ``step`` abandons their branch."""
        return [
            r
            for r in self._records.values()
            if r.proposal.step > step and (r.outcome is None or r.outcome in TAKEN)
        ]

    def metrics(self) -> list[dict[str, Any]]:
        return [r.to_dict() for r in self._records.values()]

    def state(self) -> list[dict[str, Any]]:
        return [r.state() for r in self._records.values()]

    def load_state(self, data: list[Mapping[str, Any]]) -> None:
        self._records = {}
        for item in data:
            self.add(ProposalRecord.from_state(item))

    def expire_open(self, step: int, by: Decider) -> list[ProposalRecord]:
        """Close every undecided proposal as expired (a resume: nobody answered them)."""
        closed = [r for r in self._records.values() if r.outcome is None]
        for r in closed:
            r.outcome, r.by, r.decided_step = Outcome.EXPIRED, by, step
            r.check = "done"
        return closed
