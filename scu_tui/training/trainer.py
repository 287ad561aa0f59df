"""The step loop: one optimizer update over ``accumulation`` micro-batches, compiled.

Knobs that change mid-run really change the computation:
- the learning rate and weight decay live in the optimizer's state as ``mx.array``s,
  which the compiled functions take as inputs (for every ``training.optimizer``, see
  :mod:`scu_tui.training.optimizers`);
- LoRA dropout is a Python float inside ``nn.Dropout``, so changing it rebuilds the
  compiled functions;
- accumulation is the number of micro-batches the Python loop feeds per step.
"""

from __future__ import annotations

import json
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any, assert_never

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.nn.utils import average_gradients
from mlx.utils import tree_flatten, tree_map, tree_unflatten

from scu_tui.config import Settings, TrainingSettings
from scu_tui.errors import ResumeMismatch, UserError
from scu_tui.protocol import Knob
from scu_tui.training.checkpoint import STATE_FILE, atomic_write_json
from scu_tui.training.data import (
    BatchStream,
    DataBundle,
    eval_batches,
    rank_rows,
    target_tokens,
)
from scu_tui.training.model import set_lora_dropout
from scu_tui.training.optimizers import make_optimizer

STATE_VERSION = 1
COSINE_FLOOR = 0.1  # cosine (and wsd's decay) end at 10 % of the base learning rate
PLATEAU_FACTOR = 0.5  # plateau schedule: halve the rate ...
PLATEAU_PATIENCE = 2  # ... after this many evaluations without a 0.1 % improvement
PLATEAU_FLOOR = 0.01


def loss_fn(model: nn.Module, batch: mx.array, lengths: mx.array) -> tuple[mx.array, mx.array]:
    """Mean cross-entropy over the unmasked target tokens (mlx-lm's default loss)."""
    from mlx_lm.tuner.trainer import default_loss

    loss, ntoks = default_loss(model, batch, lengths)
    return loss, ntoks


def _select_in_place(new: Any, old: Any, keep_new: mx.array) -> None:
    """``new[k] = where(keep_new, new[k], old[k])`` through nested dicts and lists, in place
    (a compiled function's state containers must be updated, not replaced)."""
    keys = range(min(len(new), len(old))) if isinstance(new, list) else list(new.keys())
    for key in keys:
        if isinstance(new, dict) and key not in old:
            continue  # created by this very update (empty containers): nothing to restore
        value = new[key]
        if isinstance(value, dict | list):
            _select_in_place(value, old[key], keep_new)
        elif isinstance(value, mx.array):
            new[key] = mx.where(keep_new, value, old[key])


def use_grad_checkpoint(model: nn.Module) -> int:
    """Recompute each transformer block's activations in the backward pass; returns the
    number of blocks.

    mlx-lm's ``grad_checkpoint`` patches the block's *class*, which would reach every model
    of that class in the process; so this model's blocks first move to a subclass of their
    own, and only that subclass is patched.
    """
    from mlx_lm.tuner.trainer import grad_checkpoint

    layers = list(getattr(model, "layers", []))
    patched: dict[type, type] = {}
    for layer in layers:
        cls = type(layer)
        if getattr(cls, "_scu_checkpointed", False):
            continue
        if cls not in patched:
            patched[cls] = type(cls.__name__, (cls,), {"_scu_checkpointed": True})
            layer.__class__ = patched[cls]
            grad_checkpoint(layer)
        layer.__class__ = patched[cls]
    return len(layers)


@dataclass
class Knobs:
    """What the S-SCU (or a person) may change between two steps: one field per
    :class:`~scu_tui.protocol.Knob`, named by its value."""

    lr_multiplier: float
    weight_decay: float
    dropout: float
    accumulation: int

    def value(self, knob: Knob) -> float:
        return float(getattr(self, knob.value))

    def values(self) -> dict[str, float]:
        """Every knob by name, as events and summaries show them."""
        return {knob.value: getattr(self, knob.value) for knob in Knob}


class BaseSchedule:
    """The base learning-rate schedule; the S-SCU multiplies it, never the other way round."""

    def __init__(self, training: TrainingSettings) -> None:
        self.t = training
        self.plateau_scale = 1.0
        self.plateau_best = math.inf
        self.plateau_bad = 0

    def lr(self, step: int) -> float:
        """Rate for the update that takes the run from ``step`` to ``step + 1``."""
        base, warm = self.t.learning_rate, self.t.warmup_steps
        if step < warm:
            return base * (step + 1) / (warm + 1)
        if self.t.schedule == "cosine":
            span = max(1, self.t.max_steps - warm)
            progress = min(1.0, (step - warm) / span)
            return base * (
                COSINE_FLOOR + (1 - COSINE_FLOOR) * 0.5 * (1 + math.cos(math.pi * progress))
            )
        if self.t.schedule == "plateau":
            return base * self.plateau_scale
        if self.t.schedule == "wsd":  # warm-up, stable, decay: linear over the last steps
            steps = round(self.t.decay_fraction * self.t.max_steps)
            span = max(1, min(self.t.max_steps - warm, steps))
            progress = min(1.0, max(0.0, (step - (self.t.max_steps - span)) / span))
            return base * (1 - (1 - COSINE_FLOOR) * progress)
        return base

    def on_eval(self, val_loss: float) -> None:
        if self.t.schedule != "plateau" or not math.isfinite(val_loss):
            return
        if val_loss < self.plateau_best * (1 - 1e-3):
            self.plateau_best, self.plateau_bad = val_loss, 0
            return
        self.plateau_bad += 1
        if self.plateau_bad >= PLATEAU_PATIENCE:
            self.plateau_scale = max(PLATEAU_FLOOR, self.plateau_scale * PLATEAU_FACTOR)
            self.plateau_bad = 0

    def state(self) -> dict[str, float]:
        return {"scale": self.plateau_scale, "best": self.plateau_best, "bad": self.plateau_bad}

    def load_state(self, state: dict[str, float]) -> None:
        self.plateau_scale = float(state["scale"])
        self.plateau_best = float(state["best"])
        self.plateau_bad = int(state["bad"])


@dataclass(frozen=True)
class StepResult:
    step: int
    loss: float
    grad_norm: float
    lr: float
    tokens: int
    seconds: float
    skipped: bool
    #: cos(this step's gradient, the optimizer's first moment ``m`` before the update): how
    #: far the new gradient still points along the direction the last updates moved (nan on
    #: step 1). Schedule-Free keeps an ``m`` of its own for this (see its docstring).
    alignment: float = math.nan


def gradient_stats(grads: Any, state: Any) -> tuple[mx.array, mx.array]:
    """``(|g|^2, cos(g_t, m_(t-1)))`` over every trainable parameter, from one flat copy.

    The squared norm feeds clipping and the reported gradient norm. The cosine is taken
    against Adam's first moment ``m`` before this step's update: the update AdamW applied
    last moved the weights along -m / sqrt(v), so a positive value says the new gradient
    still points down the same slope (the steps are shorter than the slope: a sign of too
    low an LR), a negative one that the last step overshot (nan while m is all zeros, on
    the first step). Prodigy's ``m`` is Adam's scaled by its step-size estimate (the cosine
    does not see the scale); Schedule-Free keeps an ``m`` of the same kind for this alone.
    Reads the state, changes nothing.

    Everything is three reductions over one concatenation of the gradient and one of
    ``m``, however many LoRA matrices there are (``bench/gradient_stats.py`` times it
    against a norm reduced matrix by matrix, and against no cosine).
    """
    moments = dict(tree_flatten(state))
    named = tree_flatten(grads)
    flat_g = mx.concatenate([g.reshape(-1).astype(mx.float32) for _, g in named])
    g2 = mx.sum(flat_g * flat_g)
    if not all(f"{k}.m" in moments for k, _ in named):  # an optimizer without moments
        return g2, mx.array(math.nan)
    flat_m = mx.concatenate([moments[f"{k}.m"].reshape(-1).astype(mx.float32) for k, _ in named])
    dot = mx.sum(flat_g * flat_m)
    m2 = mx.sum(flat_m * flat_m)
    denom = mx.sqrt(g2 * m2)
    return g2, mx.where(denom > 0, dot / mx.maximum(denom, 1e-30), mx.array(math.nan))


class Trainer:
    """Owns the LoRA model, optimizer, data stream and knobs; all calls on one thread."""

    def __init__(
        self, model: nn.Module, data: DataBundle, settings: Settings, group: Any = None
    ) -> None:
        t = settings.training
        # Data parallel (``mx.distributed.Group`` of size > 1): each rank takes its slice of
        # every global batch and gradients are summed by token share (see _share).
        self.group = group
        self.rank = int(group.rank()) if group is not None else 0
        self.world = int(group.size()) if group is not None else 1
        if self.world > 1 and t.batch_size % self.world:
            raise UserError(
                f"training.batch_size = {t.batch_size} does not divide by the {self.world} "
                f"ranks; choose a multiple of {self.world}"
            )
        self.after_step: Callable[[StepResult], None] | None = None  # a per-step hook
        self.model = model
        # LoRA and DoRA layers drop their inputs; full fine-tuning has no such layer
        self.has_dropout = set_lora_dropout(model, settings.lora.dropout) > 0
        model.train()  # mlx_lm.load leaves the model in eval mode, which disables dropout
        if t.grad_checkpoint:
            use_grad_checkpoint(model)
        self.data = data
        self.settings = settings
        self.max_seq_length = settings.data.max_seq_length
        self.batch_size = t.batch_size
        self.schedule = BaseSchedule(t)
        self.knobs = Knobs(
            1.0, t.weight_decay, settings.lora.dropout, t.gradient_accumulation_steps
        )
        self.optimizer = make_optimizer(
            t.optimizer, self._optimizer_lr(self.schedule.lr(0)), t.weight_decay
        )
        # Initialised up front so the guarded update always sees the same state structure.
        self.optimizer.init(model.trainable_parameters())
        self.stream = BatchStream(data.train, t.batch_size, self.max_seq_length, t.seed)
        self.step = 0
        self.tokens_seen = 0
        self.train_seconds = 0.0
        self.best_val_loss = math.inf
        self.last_val_loss = math.nan
        self.skipped_steps = 0
        self.recent_seconds: deque[float] = deque(maxlen=20)
        self.extra_state: dict[str, Any] = {}  # the controller's, saved alongside
        self._compile()

    # --- compiled functions ---------------------------------------------------------------

    def _compile(self) -> None:
        model, opt = self.model, self.optimizer
        loss_and_grad = nn.value_and_grad(model, loss_fn)
        group, world = self.group, self.world
        # Schedule-Free: the model holds the average x; the gradient is taken at y, which
        # exists only inside these two functions (so evaluation and saving always see x)
        elsewhere = opt.moves_gradient_point

        def value_and_grad(batch: mx.array, lengths: mx.array) -> Any:
            if not elsewhere:
                return loss_and_grad(model, batch, lengths)
            rest = model.trainable_parameters()
            model.update(opt.gradient_point(rest))
            out = loss_and_grad(model, batch, lengths)
            model.update(rest)
            return out

        def share(loss: mx.array, ntoks: mx.array, grads: Any, weight: mx.array) -> Any:
            """This rank's part of the global batch's token mean: its loss and gradient
            weighted by its share of the tokens (``weight``); the loss and count summed
            over ranks (the gradient is summed once per step, in ``update``)."""
            keep = weight > 0  # a slice with no target tokens has a NaN mean
            grads = tree_map(lambda g: mx.where(keep, g * weight.astype(g.dtype), 0), grads)
            part = mx.where(keep, loss * weight, 0.0)
            return (
                mx.distributed.all_sum(part, group=group),
                mx.distributed.all_sum(ntoks, group=group),
                grads,
            )

        state = [model.state, opt.state, mx.random.state]

        @partial(mx.compile, inputs=state, outputs=state)
        def accumulate(
            batch: mx.array, lengths: mx.array, prev: Any, weight: mx.array
        ) -> tuple[Any, ...]:
            """A micro-batch that is not the last of its step: add its gradient."""
            (loss, ntoks), grads = value_and_grad(batch, lengths)
            if world > 1:
                loss, ntoks, grads = share(loss, ntoks, grads, weight)
            if prev is not None:
                grads = tree_map(mx.add, grads, prev)
            return loss, ntoks, grads

        @partial(mx.compile, inputs=state, outputs=state)
        def update(
            batch: mx.array,
            lengths: mx.array,
            prev: Any,
            inv_accum: mx.array,
            clip: mx.array,
            weight: mx.array,
        ) -> tuple[mx.array, ...]:
            """The last micro-batch: gradient norm, clipping and a guarded optimizer update.

            The update is computed, then kept only where the loss and gradient norm are
            finite (``mx.where``), so a bad batch leaves weights and optimizer state as they
            were without a second synchronisation per step.
            """
            (loss, ntoks), grads = value_and_grad(batch, lengths)
            if world > 1:
                loss, ntoks, grads = share(loss, ntoks, grads, weight)
            if prev is not None:
                grads = tree_map(mx.add, grads, prev)
            if world > 1:  # mlx-lm's reduction, which averages: the weights already sum to 1
                grads = average_gradients(tree_map(lambda g: g * world, grads), group=group)
            g2, align = gradient_stats(grads, opt.state)
            norm = mx.sqrt(g2) * inv_accum
            finite = mx.logical_and(mx.isfinite(loss), mx.isfinite(norm))
            scale = inv_accum * mx.where(
                mx.logical_and(clip > 0, norm > clip), clip / mx.maximum(norm, 1e-12), 1.0
            )
            old_params = model.trainable_parameters()
            old_state = tree_map(lambda x: x, opt.state)
            opt.update(model, tree_map(lambda g: g * scale.astype(g.dtype), grads))
            model.update(
                tree_map(
                    lambda new, old: mx.where(finite, new, old),
                    model.trainable_parameters(),
                    old_params,
                )
            )
            _select_in_place(opt.state, old_state, finite)
            return loss, ntoks, norm, finite, align

        self._accumulate = accumulate
        self._update = update

    # --- knobs ----------------------------------------------------------------------------

    def current_lr(self) -> float:
        return self.schedule.lr(self.step) * self.knobs.lr_multiplier

    def _optimizer_lr(self, lr: float) -> float:
        """The rate the optimizer is given for a step at ``lr``. Prodigy estimates its own
        step size ``d`` and takes a factor on it (1 by default): the schedule and the
        S-SCU's multiplier, relative to ``training.learning_rate``."""
        if self.settings.training.optimizer == "prodigy":
            return lr / self.settings.training.learning_rate
        return lr

    def set_knob(self, knob: Knob, value: float) -> tuple[float, float]:
        """Change a knob before the next step; returns ``(before, after)``. Raises
        ValueError for a value the knob cannot take."""
        knob = Knob(knob)  # a plain name from an untyped caller: ValueError when unknown
        before = self.knobs.value(knob)
        match knob:
            case Knob.LR_MULTIPLIER:  # the next step's rate: schedule x multiplier
                if value < 0:
                    raise ValueError(f"{knob} must be >= 0")
                self.knobs.lr_multiplier = float(value)
            case Knob.WEIGHT_DECAY:  # an array in the optimizer state: no recompiling
                if value < 0:
                    raise ValueError(f"{knob} must be >= 0")
                self.knobs.weight_decay = float(value)
                self.optimizer.state["weight_decay"] = mx.array(float(value))
            case Knob.DROPOUT:  # a float baked into the compiled step: recompile
                if not self.has_dropout and value != before:
                    raise ValueError("full fine-tuning has no dropout to change")
                if not 0 <= value < 1:
                    raise ValueError("dropout must be in [0, 1)")
                self.knobs.dropout = float(value)
                set_lora_dropout(self.model, float(value))
                self._compile()
            case Knob.ACCUMULATION:  # micro-batches the step loop feeds
                if int(value) < 1:
                    raise ValueError("accumulation must be >= 1")
                self.knobs.accumulation = int(value)
            case _ as unhandled:  # mypy: a new Knob needs its case here
                assert_never(unhandled)
        return before, self.knobs.value(knob)

    # --- steps ----------------------------------------------------------------------------

    def train_step(self) -> StepResult:
        """One optimizer update; a non-finite loss or gradient skips the update."""
        tic = time.perf_counter()
        if self.knobs.dropout > 0:
            # Dropout randomness is a function of (seed, step), so a resumed run draws exactly
            # what the uninterrupted one would have (MLX's global key cannot be restored).
            mx.random.seed(self.settings.training.seed * 1_000_003 + self.step)
        lr = self.current_lr()
        self.optimizer.learning_rate = mx.array(self._optimizer_lr(lr))
        accumulation = self.knobs.accumulation
        grads: Any = None
        loss_sum = 0.0
        tokens = 0
        for _ in range(accumulation - 1):
            batch, lengths, weight = self._next_batch()
            loss, ntoks, grads = self._accumulate(batch, lengths, grads, weight)
            mx.eval(loss, ntoks, grads)
            n = int(ntoks.item())
            loss_sum += float(loss.item()) * n
            tokens += n
        batch, lengths, weight = self._next_batch()
        clip = self.settings.training.grad_clip
        loss, ntoks, norm, finite_arr, align = self._update(
            batch, lengths, grads, mx.array(1.0 / accumulation), mx.array(clip), weight
        )
        # One synchronisation per step, as in mlx-lm's loop. The whole state is evaluated:
        # anything left lazy (the optimizer's step counter, say) would chain a longer graph
        # onto every following step.
        mx.eval(
            loss,
            ntoks,
            norm,
            finite_arr,
            align,
            self.model.trainable_parameters(),
            self.optimizer.state,
        )
        n = int(ntoks.item())
        loss_sum += float(loss.item()) * n
        tokens += n
        mean_loss = loss_sum / max(tokens, 1)
        grad_norm = float(norm.item())
        finite = bool(finite_arr.item()) and math.isfinite(mean_loss)
        if not finite:
            self.skipped_steps += 1
        seconds = time.perf_counter() - tic
        self.step += 1
        self.tokens_seen += tokens
        self.train_seconds += seconds
        self.recent_seconds.append(seconds)
        alignment = float(align.item())
        result = StepResult(
            self.step, mean_loss, grad_norm, lr, tokens, seconds, not finite, alignment
        )
        if self.after_step is not None:
            self.after_step(result)
        return result

    def _next_batch(self) -> tuple[mx.array, mx.array, mx.array]:
        """The next global batch, or this rank's rows of it with their share of its target
        tokens (every rank draws the same batches: same data, same seed)."""
        batch, lengths = self.stream.next()
        if self.world == 1:
            return mx.array(batch), mx.array(lengths), mx.array(1.0)
        rows = rank_rows(len(batch), self.rank, self.world)
        counts = target_tokens(batch, lengths)
        weight = float(counts[rows].sum()) / max(float(counts.sum()), 1.0)
        return mx.array(batch[rows]), mx.array(lengths[rows]), mx.array(weight)

    def evaluate(self, limit: int | None = None) -> float:
        """Token-weighted validation loss over a fixed set of batches."""
        limit = self.settings.training.eval_batches if limit is None else limit
        self.model.eval()
        total, count = 0.0, 0
        try:
            for batch, lengths in eval_batches(
                self.data.valid, self.batch_size, self.max_seq_length, limit
            ):
                if self.world > 1:  # this rank's rows; the sums are added up below
                    rows = rank_rows(len(batch), self.rank, self.world)
                    batch, lengths = batch[rows], lengths[rows]
                    if len(batch) == 0:
                        continue
                loss, ntoks = loss_fn(self.model, mx.array(batch), mx.array(lengths))
                mx.eval(loss, ntoks)
                n = int(ntoks.item())
                total += float(loss.item()) * n
                count += n
        finally:
            self.model.train()
        if self.world > 1:
            sums = mx.distributed.all_sum(mx.array([total, float(count)]), group=self.group)
            total, count = float(sums[0].item()), round(float(sums[1].item()))
        val_loss = total / max(count, 1)
        self.last_val_loss = val_loss
        self.schedule.on_eval(val_loss)
        if val_loss < self.best_val_loss:
            self.best_val_loss = val_loss
        return val_loss

    def eta_seconds(self) -> float:
        if not self.recent_seconds:
            return math.nan
        remaining = self.settings.training.max_steps - self.step
        return max(0, remaining) * float(np.mean(self.recent_seconds))

    # --- checkpoints ----------------------------------------------------------------------

    def adapter_weights(self) -> dict[str, mx.array]:
        return dict(tree_flatten(self.model.trainable_parameters()))

    def save_adapters(self, path: Path) -> None:
        mx.save_safetensors(str(path), self.adapter_weights())

    def portable_state(self) -> dict[str, Any]:
        """The counters, data position, schedule and knobs (no arrays, no controller): what
        another rank needs, besides the weights and optimizer, to continue exactly here."""
        return {
            "step": self.step,
            "tokens_seen": self.tokens_seen,
            "train_seconds": self.train_seconds,
            "best_val_loss": self.best_val_loss,
            "last_val_loss": self.last_val_loss,
            "skipped_steps": self.skipped_steps,
            "data": self.stream.state(),
            "schedule": self.schedule.state(),
            "knobs": asdict(self.knobs),
        }

    def restore_portable_state(self, state: dict[str, Any]) -> None:
        """Take :meth:`portable_state`'s numbers (then :meth:`rebuild` once the arrays are in)."""
        self.step = int(state["step"])
        self.tokens_seen = int(state["tokens_seen"])
        self.train_seconds = float(state["train_seconds"])
        self.best_val_loss = float(state["best_val_loss"])
        self.last_val_loss = float(state["last_val_loss"])
        self.skipped_steps = int(state.get("skipped_steps", 0))
        self.stream.load_state(state["data"])
        self.schedule.load_state(state["schedule"])
        self.knobs = Knobs(**state["knobs"])

    def rebuild(self) -> None:
        """After the knobs or the optimizer's state were replaced: dropout and compiled steps."""
        set_lora_dropout(self.model, self.knobs.dropout)
        self.optimizer.state["weight_decay"] = mx.array(self.knobs.weight_decay)
        self._compile()

    def save_state(self, folder: Path) -> None:
        """Adapters, optimizer, RNG and trainer state into ``folder`` (already created)."""
        mx.eval(self.model.trainable_parameters(), self.optimizer.state)
        self.save_adapters(folder / "adapters.safetensors")
        mx.save_safetensors(
            str(folder / "optimizer.safetensors"), dict(tree_flatten(self.optimizer.state))
        )
        state = {
            "version": STATE_VERSION,
            "optimizer": self.settings.training.optimizer,
            **self.portable_state(),
            "extra": self.extra_state,
        }
        atomic_write_json(folder / STATE_FILE, state)

    def load_state(self, folder: Path) -> None:
        """Restore everything :meth:`save_state` wrote; the next step continues exactly."""
        try:
            state = json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))
            adapters = mx.load(str(folder / "adapters.safetensors"))
            opt_state = mx.load(str(folder / "optimizer.safetensors"))
        except (OSError, ValueError, RuntimeError) as exc:
            raise UserError(f"checkpoint {folder}: cannot be read: {exc}") from None
        if state.get("version") != STATE_VERSION:
            raise UserError(f"checkpoint {folder}: written by an incompatible version")
        saved, current = state.get("optimizer", "adamw"), self.settings.training.optimizer
        if saved != current:  # one optimizer's state means nothing to another
            raise ResumeMismatch(
                f"checkpoint {folder}: trained with training.optimizer = '{saved}', not "
                f"'{current}'; resume with --set training.optimizer={saved}"
            )
        try:
            self.model.load_weights(list(adapters.items()), strict=False)
        except ValueError as exc:
            raise ResumeMismatch(
                f"checkpoint {folder}: adapters do not fit this model: {exc}"
            ) from None
        self.optimizer.state = tree_unflatten(list(opt_state.items()))
        self.restore_portable_state(state)
        set_lora_dropout(self.model, self.knobs.dropout)
        self.extra_state = dict(state.get("extra", {}))
        self._compile()
