"""The check's findings, its verdict with concrete fixes, as text (80 columns) or JSON."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from scu_tui.check.data_report import DataReport
from scu_tui.check.environment import OPENBLAS_INSTALL, OPENBLAS_SPEEDUP, Environment
from scu_tui.check.find_lr import LrCurve, plot
from scu_tui.check.memory import MAX_BATCH, Estimate
from scu_tui.check.model_facts import ModelFacts
from scu_tui.check.probe import Timing
from scu_tui.check.probe_cost import ProbeCost
from scu_tui.check.ranks import RankReport
from scu_tui.check.units import duration, gb
from scu_tui.config import Settings

NEAR_LIMIT = 0.85  # a fit above this share of the budget gets a warning
HIGH_PADDING = 0.30
WIDTH = 80


@dataclass
class Limits:
    """What fits in the budget, with and without gradient checkpointing."""

    batch: int  # largest batch_size at the run's widest batch (0: not even 1)
    width: int  # longest sequence at the run's batch size (0: not even 8 tokens)
    batch_other: int
    width_other: int


@dataclass
class CheckResult:
    settings: Settings
    env: Environment
    model_source: str  # "weights" or "config"
    facts: ModelFacts
    data: DataReport
    estimate: Estimate  # as configured
    other: Estimate  # with grad_checkpoint flipped
    limits: Limits
    timing: Timing | None = None
    curve: LrCurve | None = None
    notes: list[str] = field(default_factory=list)
    ranks: RankReport | None = None  # --ranks N: one rank against N over loopback
    probe_cost: ProbeCost | None = None  # the probe's projected duration (with weights)

    # --- derived numbers -------------------------------------------------------------------

    @property
    def fits(self) -> bool:
        return self.estimate.total <= self.env.memory_limit

    @property
    def tokens_per_step(self) -> float:
        t = self.settings.training
        if self.data.tokens_per_batch is not None:
            return self.data.tokens_per_batch * t.gradient_accumulation_steps
        return float(t.batch_size * self.estimate.width * t.gradient_accumulation_steps)

    @property
    def epochs(self) -> float | None:
        t = self.settings.training
        rows = self.data.rows_per_epoch or next(
            (s.rows for s in self.data.splits if s.name == "train"), 0
        )
        if rows <= 0:
            return None
        return t.max_steps * t.batch_size * t.gradient_accumulation_steps / rows

    def eval_seconds(self) -> float:
        if self.timing is None:
            return 0.0
        t = self.settings.training
        valid = next((s.rows for s in self.data.splits if s.name == "valid"), 0)
        per_pass = max(1, valid // max(1, t.batch_size))
        if t.eval_batches != -1:
            per_pass = min(per_pass, t.eval_batches)
        passes = 1 + t.max_steps // t.eval_every + (1 if t.max_steps % t.eval_every else 0)
        return passes * per_pass * self.timing.eval_batch_seconds

    def compile_seconds(self) -> float:
        if self.timing is None:
            return 0.0
        return self.timing.compile_seconds * max(1, len(self.data.batch_widths))

    def eta_seconds(self) -> float | None:
        if self.timing is None:
            return None
        train = self.timing.seconds_per_step * self.settings.training.max_steps
        return train + self.eval_seconds() + self.compile_seconds()

    # --- the verdict -----------------------------------------------------------------------

    def fixes(self) -> list[str]:
        """Concrete changes, most useful first."""
        out: list[str] = []
        t, d = self.settings.training, self.settings.data
        gc_on = t.grad_checkpoint
        if not self.fits:
            if 1 <= self.limits.batch < t.batch_size:
                b = self.limits.batch
                accum = math.ceil(t.batch_size * t.gradient_accumulation_steps / b)
                out.append(
                    f"lower training.batch_size to {b} (and raise "
                    f"training.gradient_accumulation_steps to {accum} to keep the effective "
                    "batch)"
                )
            if not gc_on and self.other.total <= self.env.memory_limit:
                out.append(
                    f"turn on training.grad_checkpoint (peak {gb(self.other.total)}; steps "
                    "recompute each block, about a third slower)"
                )
            elif not gc_on and 1 <= self.limits.batch_other < t.batch_size:
                out.append(
                    "turn on training.grad_checkpoint and lower training.batch_size to "
                    f"{self.limits.batch_other}"
                )
            width = self.limits.width if self.limits.width else self.limits.width_other
            if 8 <= width < self.estimate.width:
                cut = self.data.cut_share(width)
                tail = f" (cuts {cut:.0%} of the training tokens)" if cut is not None else ""
                out.append(f"lower data.max_seq_length to {width}{tail}")
            if not out:
                out.append(
                    "this model does not fit this machine even at batch size 1 with "
                    "checkpointing: use a smaller or more strongly quantized model"
                )
        elif self.estimate.total > NEAR_LIMIT * self.env.memory_limit and not gc_on:
            out.append(
                f"close to the limit: training.grad_checkpoint would lower the peak to "
                f"{gb(self.other.total)}"
            )
        if self.env.blas_missing:
            out.append(
                f"install the system OpenBLAS: `{OPENBLAS_INSTALL}` (training on this CPU "
                f"runs {OPENBLAS_SPEEDUP} faster with it)"
            )
        train = next((s for s in self.data.splits if s.name == "train"), None)
        if self.fits and train is not None and train.cut_share > 0.01 and train.p95:
            out.append(
                f"{train.cut_share:.0%} of the training tokens are cut at max_seq_length = "
                f"{d.max_seq_length}; {math.ceil(train.p95)} tokens would keep 95 % of the "
                "rows whole"
            )
        return out

    def verdict(self) -> str:
        limit = self.env.memory_limit
        share = self.estimate.total / limit if limit else math.inf
        head = (
            f"fits: peak {gb(self.estimate.total)} of {gb(limit)} ({share:.0%})"
            if self.fits
            else f"does not fit: peak {gb(self.estimate.total)} > {gb(limit)} this machine "
            "gives a run"
        )
        eta = self.eta_seconds()
        if eta is not None and self.fits:
            head += f"; about {duration(eta)} for {self.settings.training.max_steps} steps"
        fixes = self.fixes()
        if not self.fits and fixes:
            head += ": " + fixes[0]
        return head

    # --- JSON ------------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        eta = self.eta_seconds()
        timing = self.timing
        return {
            "peak_memory_gb": self.estimate.total / 1e9,
            "seconds_per_step": timing.seconds_per_step if timing else None,
            "tokens_per_step": self.tokens_per_step,
            "tokens_per_second": (
                self.tokens_per_step / timing.seconds_per_step
                if timing and timing.seconds_per_step > 0
                else None
            ),
            "eta_seconds": eta,
            "epochs": self.epochs,
            "fits": self.fits,
            "verdict": self.verdict(),
            "fixes": self.fixes(),
            "memory_limit_gb": self.env.memory_limit / 1e9,
            "model_source": self.model_source,
            "memory": {
                **self.estimate.to_dict(),
                "other": self.other.to_dict(),
                "largest_batch_size": self.limits.batch,
                "largest_sequence_length": self.limits.width,
                "largest_batch_size_other": self.limits.batch_other,
                "largest_sequence_length_other": self.limits.width_other,
            },
            "time": None
            if timing is None
            else {
                "seconds_per_step": timing.seconds_per_step,
                "micro_batch_seconds_by_width": {str(k): v for k, v in timing.per_width.items()},
                "compile_seconds": self.compile_seconds(),
                "eval_seconds": self.eval_seconds(),
                "not_timed_widths": timing.skipped,
            },
            "environment": self.env.to_dict(),
            "model": self.facts.to_dict(),
            "data": self.data.to_dict(),
            "find_lr": self.curve.to_dict() if self.curve else None,
            "ranks": self.ranks.to_dict() if self.ranks else None,
            "notes": self.notes,
            "probe": self.probe_cost.to_dict(self.tokens_per_step) if self.probe_cost else None,
        }

    # --- text ------------------------------------------------------------------------------

    def to_text(self) -> str:
        s, e, f, d = self.settings, self.env, self.facts, self.data
        lines = [*_wrap(f"scu-tui check: {s.name} ({s.model.path} on {s.data.path})", "", "  "), ""]
        lines.append("environment")
        lines += _row("backend", f"{e.backend} ({e.device}), {e.platform}")
        lines += _row("BLAS", e.blas)
        lines += _row("versions", ", ".join(f"{k} {v}" for k, v in e.versions.items()))
        available = (
            f", {gb(e.memory_available)} available now" if e.memory_available is not None else ""
        )
        lines += _row(
            "memory",
            f"{e.memory_kind} {gb(e.memory_total)}{available}; a run gets {gb(e.memory_limit)}",
        )
        lines += ["", "model"]
        source = "weights loaded" if self.model_source == "weights" else "config.json alone"
        lines += _row("parameters", f"{f.parameters:,} ({f.model_type}, {f.dtype}; {source})")
        lines += _row("quantization", f"{f.quantization}; weights {gb(f.weight_bytes)}")
        if f.fine_tune_type == "full":
            lines += _row("full", f"{f.trainable:,} trainable (every weight of the blocks trained)")
        else:
            lines += _row(
                "DoRA" if f.fine_tune_type == "dora" else "LoRA",
                f"{f.trainable:,} trainable (rank {f.lora_rank}, {f.lora_modules} layers adapted)",
            )
        lines += ["", "data"]
        lines += _data_lines(d, s)
        lines += ["", "memory"]
        lines += _memory_lines(self)
        lines += ["", "time"]
        lines += _time_lines(self)
        if self.curve is not None:
            lines += ["", "learning rate"]
            lines += _lr_lines(self.curve, s)
        if self.ranks is not None:
            lines += ["", "ranks"]
            lines += _rank_lines(self.ranks)
        if self.notes:
            lines += ["", "notes"]
            for note in self.notes:
                lines += _wrap(note, "  ")
        lines += ["", "verdict"]
        lines += _wrap(self.verdict(), "  ")
        for fix in self.fixes()[(0 if self.fits else 1) :]:
            lines += _wrap(fix, "  - ", "    ")
        return "\n".join(lines) + "\n"


# --- formatting helpers ---------------------------------------------------------------------


def _wrap(text: str, first: str, rest: str | None = None) -> list[str]:
    import textwrap

    return textwrap.wrap(
        text,
        WIDTH,
        initial_indent=first,
        subsequent_indent=rest if rest is not None else " " * len(first),
        break_on_hyphens=False,
        break_long_words=True,
    )


def _row(label: str, value: str) -> list[str]:
    return _wrap(value, f"  {label:<13}", " " * 15)


def _data_lines(d: DataReport, s: Settings) -> list[str]:
    lines = _row("format", f"{d.format}, max_seq_length {s.data.max_seq_length}")
    if d.tokenized:
        lines.append(f"  {'split':<8}{'rows':>8}{'median':>9}{'p95':>8}{'max':>8}{'cut':>8}")
        for sp in d.splits:
            lines.append(
                f"  {sp.name:<8}{sp.rows:>8,}{_num(sp.median):>9}{_num(sp.p95):>8}"
                f"{_num(sp.max):>8}{sp.cut_share:>8.1%}"
            )
        lines.append("  (token lengths before truncation; cut: share of tokens dropped)")
    else:
        for sp in d.splits:
            lines += _row(sp.name, f"{sp.rows:,} rows")
        lines += _wrap("no tokenizer in the model folder: no token lengths", "  ")
    for note in d.notes:
        lines += _wrap(note, "  note: ", "        ")
    for drop in d.dropped:
        lines += _wrap(drop, "  dropped: ", "           ")
    if d.padding_share is not None:
        widths = ", ".join(f"{w}x{n}" for w, n in d.batch_widths.items())
        lines += _row(
            "padding",
            f"{d.padding_share:.0%} of the train batches' positions are padding "
            f"(length-sorted batches of {s.training.batch_size}; widths x batches: {widths})",
        )
    return lines


def _num(value: float | int | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}"


def _memory_lines(r: CheckResult) -> list[str]:
    est, t = r.estimate, r.settings.training
    measured = any(term.source == "measured" for term in est.terms)
    how = "measured on this machine" if measured else "from the config, not measured"
    ckpt = "on" if est.grad_checkpoint else "off"
    widest = "the widest batch the data gives" if r.data.max_width else "max_seq_length"
    lines = _wrap(
        f"peak {gb(est.total)} for a batch of {est.batch} x {est.width} tokens ({widest}; "
        f"grad_checkpoint {ckpt}); activation terms {how}",
        "  ",
    )
    lines.append(f"  {'term':<28}{'grows with':<22}{'GB':>10}")
    for term in est.terms:
        lines.append(f"  {term.name[:27]:<28}{term.grows_with:<22}{term.bytes / 1e9:>10.3f}")
    lines.append(f"  {'total':<50}{est.total / 1e9:>10.3f}")
    other = "on" if r.other.grad_checkpoint else "off"
    lines += _wrap(f"with grad_checkpoint {other}: peak {gb(r.other.total)}", "  ")
    lim = r.limits
    lines += _wrap(
        f"largest that fit {gb(r.env.memory_limit)}: {_batch(lim.batch)} at {est.width} "
        f"tokens, or {_tokens(lim.width, r.facts)} at batch_size {t.batch_size}; with "
        f"grad_checkpoint {other}: {_batch(lim.batch_other)}, "
        f"{_tokens(lim.width_other, r.facts)}",
        "  ",
    )
    return lines


def _batch(n: int) -> str:
    if n <= 0:
        return "not even batch_size 1"
    return f"batch_size {n}" + ("+" if n >= MAX_BATCH else "")


def _tokens(n: int, f: ModelFacts) -> str:
    if n <= 0:
        return "not even 8 tokens"
    return f"{n} tokens" + (" (the model's context)" if n == f.max_positions else "")


def _time_lines(r: CheckResult) -> list[str]:
    timing = r.timing
    t = r.settings.training
    cost = r.probe_cost
    if timing is None and cost is not None and not cost.ran:
        step = cost.step_seconds(r.tokens_per_step)
        lines = _row(
            "per step",
            f"about {duration(step)} ({cost.flops_per_second / 1e9:.3g} GFLOP/s on the "
            "model's layers; projected, not measured)",
        )
        lines += _row("training", f"about {duration(step * t.max_steps)} for {t.max_steps} steps")
        return lines
    if timing is None:
        reason = (
            "not measured: no weights to run (an estimate from config.json alone)"
            if r.model_source == "config"
            else "not measured: no step of this run fits in memory"
        )
        return _wrap(reason, "  ")
    tps = r.tokens_per_step / timing.seconds_per_step if timing.seconds_per_step > 0 else 0.0
    lines = _row(
        "per step",
        f"{timing.seconds_per_step:.3g} s ({t.gradient_accumulation_steps} x {t.batch_size} "
        f"rows, {r.tokens_per_step:,.0f} loss tokens; {tps:,.0f} tokens/s)",
    )
    eta = r.eta_seconds() or 0.0
    epochs = r.epochs
    training = duration(timing.seconds_per_step * t.max_steps)
    lines += _row(
        "ETA",
        f"{duration(eta)} for {t.max_steps} steps: {training} training, "
        f"{duration(r.eval_seconds())} evaluating, {duration(r.compile_seconds())} compiling"
        + (f"; {epochs:.2g} epochs" if epochs is not None else ""),
    )
    if timing.skipped:
        lines += _wrap(
            f"widths {timing.skipped} not timed (their step would not fit): the time there is "
            "scaled from the widest timed one",
            "  ",
        )
    return lines


def _rank_lines(r: RankReport) -> list[str]:
    lines = _wrap(r.header(), "  ") if r.header() else []
    lines += [f"  {row}" for row in r.table()]
    for text in (*r.failures(), r.note, r.expectation):
        if text:
            lines += _wrap(text, "  ")
    return lines


def _lr_lines(curve: LrCurve, s: Settings) -> list[str]:
    lines = [f"  {line}" if line else "" for line in plot(curve, WIDTH - 2).splitlines()]
    if curve.suggestion is None:
        lines += _wrap(f"no suggestion: {curve.stopped}", "  ")
        return lines
    lines += _wrap(
        f"lowest smoothed loss at {curve.min_loss_lr:.2g}; {curve.stopped}. Start a decade "
        f"below (the preset uses {s.training.learning_rate:g}):",
        "  ",
    )
    lines.append(f"  --set training.learning_rate={curve.suggestion:.1e}")
    return lines
