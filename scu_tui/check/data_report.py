"""What the data costs: rows, token lengths, truncation, rows that never train, padding.

Everything is computed the way the run batches: length-sorted batches of ``batch_size``
rows, each padded to one plus a multiple of 32 tokens (capped at ``max_seq_length``), the
loss taken over the target positions only.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from scu_tui.config import Settings
from scu_tui.training.data import PAD_TO, DataBundle, Split, length_sorted_batches


@dataclass(frozen=True)
class SplitStats:
    name: str
    source: str
    rows: int
    median: float | None  # token lengths before truncation (None: no tokenizer)
    p95: float | None
    max: int | None
    truncated: int  # rows longer than max_seq_length
    cut_share: float  # share of all tokens of the split that truncation drops


@dataclass(frozen=True)
class DataReport:
    format: str
    splits: tuple[SplitStats, ...]
    notes: tuple[str, ...] = ()
    dropped: tuple[str, ...] = ()  # rows that never reach the loss, and why
    batch_widths: dict[int, int] = field(default_factory=dict)  # train width -> batches
    max_width: int = 0  # the widest train micro-batch (0: unknown)
    padding_share: float | None = None  # of the train batches' positions
    tokens_per_batch: float | None = None  # loss tokens per train micro-batch, mean
    rows_per_epoch: int = 0  # train rows the batches cover
    tokenized: bool = True
    train_lengths: tuple[int, ...] = field(default=(), repr=False)  # token counts per row

    def cut_share(self, max_seq_length: int) -> float | None:
        """Share of the training tokens a ``max_seq_length`` would cut (None: unknown)."""
        if not self.train_lengths:
            return None
        lengths = np.array(self.train_lengths, dtype=np.int64)
        return float(np.maximum(lengths - max_seq_length, 0).sum() / max(int(lengths.sum()), 1))

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("train_lengths")
        out["batch_widths"] = {str(k): v for k, v in self.batch_widths.items()}
        return out


def batch_width(lengths: list[int], max_seq_length: int) -> int:
    """The padded width ``make_batch`` gives a batch of rows with these token counts."""
    longest = min(max(lengths), max_seq_length)
    return min(1 + PAD_TO * ((longest + PAD_TO - 1) // PAD_TO), max_seq_length)


def loss_tokens(length: int, offset: int, width: int, max_seq_length: int) -> int:
    """Target positions of one row in a batch of ``width`` (mlx-lm's ``default_loss``)."""
    n = min(length, max_seq_length)
    return max(0, min(n, width - 1) - max(offset, 1) + 1)


def _stats(split: Split, max_seq_length: int) -> SplitStats:
    lengths = np.array([len(t) for t, _ in split.sequences], dtype=np.int64)
    cut = np.maximum(lengths - max_seq_length, 0).sum()
    return SplitStats(
        name=split.name,
        source=split.source,
        rows=len(split),
        median=float(np.median(lengths)),
        p95=float(np.percentile(lengths, 95)),
        max=int(lengths.max()),
        truncated=int((lengths > max_seq_length).sum()),
        cut_share=float(cut / max(int(lengths.sum()), 1)),
    )


def report(bundle: DataBundle, settings: Settings) -> DataReport:
    """The full report from tokenized data."""
    max_len = settings.data.max_seq_length
    batch = settings.training.batch_size
    splits = [bundle.train, bundle.valid] + ([bundle.test] if bundle.test is not None else [])
    train = bundle.train
    batches = length_sorted_batches(train, batch)
    widths: Counter[int] = Counter()
    positions = real = target = 0
    no_target = 0
    for indices in batches:
        rows = [train.sequences[i] for i in indices]
        width = batch_width([len(t) for t, _ in rows], max_len)
        widths[width] += 1
        positions += width * len(rows)
        real += sum(min(len(t), max_len, width) for t, _ in rows)
        counts = [loss_tokens(len(t), off, width, max_len) for t, off in rows]
        target += sum(counts)
        no_target += sum(1 for c in counts if c == 0)
    used = len(batches) * batch
    dropped: list[str] = []
    left_out = len(train) - used
    if left_out:
        dropped.append(
            f"{left_out} longest train row{'s' if left_out != 1 else ''}: the last partial "
            f"batch of the length-sorted split (batch_size {batch}) never trains"
        )
    if no_target:
        why = (
            "the prompt fills max_seq_length (mask_prompt)"
            if settings.data.mask_prompt
            else "under two tokens"
        )
        dropped.append(f"{no_target} train rows have no loss tokens: {why}")
    return DataReport(
        format=bundle.format,
        splits=tuple(_stats(s, max_len) for s in splits),
        notes=tuple(bundle.notes),
        dropped=tuple(dropped),
        batch_widths=dict(sorted(widths.items())),
        max_width=max(widths) if widths else 0,
        padding_share=1 - real / positions if positions else None,
        tokens_per_batch=target / len(batches) if batches else None,
        rows_per_epoch=used,
        train_lengths=tuple(len(t) for t, _ in train.sequences),
    )


def rows_report(fmt: str, rows: dict[str, tuple[str, int]], notes: list[str]) -> DataReport:
    """Row counts and format only: the model folder has no tokenizer to count tokens."""
    splits = tuple(
        SplitStats(name, source, count, None, None, None, 0, 0.0)
        for name, (source, count) in rows.items()
    )
    return DataReport(format=fmt, splits=splits, notes=tuple(notes), tokenized=False)
