"""The peak-memory estimate of a training step, split into terms by how they grow.

    peak(B, W) = weights + LoRA + optimizer + gradients          (grow with parameters)
               + B * W * per_token_layers                        (activations of the blocks)
               + B * W * per_token_vocab                         (logits and loss)
               + B * W^2 * per_token_sq                          (attention scores)
               + a safety margin on the activation terms

for a micro-batch of B sequences padded to W tokens. The parameter terms come from the
model (or its ``config.json``). The three activation coefficients depend on what MLX keeps
for the backward pass on this machine: the probe measures them (peak memory at a few
sequence lengths, fitted exactly by ``fixed + a*W + b*W^2``); from a config alone they
come from the counts below, set from measurements of Qwen3-architecture models on MLX's
CPU backend and rounded up. Every activation term grows with B and W, so the largest batch
size or sequence length that fits is a binary search over the estimate.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from scu_tui.check.model_facts import ModelFacts

MEASURED_MARGIN = 0.15  # on the measured terms: the fit is exact to a few %, the rest varies
CONFIG_MARGIN = 0.10  # on the terms derived from the config alone (see the counts below)
#: Copies of the trainable parameters each ``training.optimizer`` keeps in its state: AdamW
#: its two moments; Schedule-Free its base sequence z, second moment and the gradient
#: average the alignment signal reads; Prodigy its starting point, the sum behind its
#: step-size estimate and its two moments (scu_tui.training.optimizers).
OPTIMIZER_STATES = {"adamw": 2, "schedule_free": 3, "prodigy": 4}


def kept_state_bytes(f: ModelFacts, states: int) -> float:
    """The S-SCU's good states kept in memory for a rollback: each holds the LoRA weights
    and the optimizer's moments (a 4B model's r32 adapters: about 0.8 GB a state)."""
    return float(states * f.trainable_bytes * (1 + f.optimizer_states))


# Activation elements kept per token per block, in multiples of the block's widths:
# 7 x hidden (norm inputs/outputs, residuals, projections out), 4 x query and 4 x
# key/value widths (projection, q/k norm, rotary, attention out), 5 x intermediate (gate,
# up, the SiLU's sigmoid and product), 7 x rank per adapted layer; one more block's worth
# for the embedding and final norm. 16-bit models keep some in float32 (norms, softmax):
# 3.2 bytes per element on average, measured.
HIDDEN_COPIES, QUERY_COPIES, KV_COPIES, INTERMEDIATE_COPIES, RANK_COPIES = 7, 4, 4, 5, 7
F32_ACT_BYTES, HALF_ACT_BYTES = 4.0, 3.2
LOGIT_BYTES = {4: 18.0, 2: 10.0}  # per vocabulary entry per token: logits, softmax, grads
ATTN_BYTES = {4: 8.0, 2: 4.0}  # per score (head x W x W) per block
# With gradient checkpointing each block keeps its input (one float32 copy), four blocks'
# worth of full activations are alive around the one recomputed, one block's attention
# scores, and one float32 copy of the logits: the step's peak falls in the backward pass
# through the blocks, after the loss has freed the logits' other copies. Set from Qwen3-4B's
# width at 2-8 blocks (1 x 64 and 1 x 256 tokens, docs/benchmarks.md) and a 25M Qwen3 at
# 4 x 96, the two regimes measured; with the margin, within 15 % above all of them.
CKPT_HIDDEN_BYTES = 4.0
CKPT_LIVE_BLOCKS = 4
CKPT_ATTN_BYTES = {4: 16.0, 2: 6.0}
CKPT_LOGIT_BYTES = {4: 4.0, 2: 3.2}


@dataclass(frozen=True)
class Coefficients:
    """The shape-dependent part of the estimate, in bytes."""

    fixed_extra: float  # at the peak, beyond weights, LoRA and optimizer state
    per_token_layers: float  # per sequence position (B x W), in the blocks
    per_token_vocab: float  # per sequence position, logits and loss
    per_token_sq: float  # per B x W^2, attention
    measured: bool  # True: fitted to this machine's peaks; False: from the config

    def to_dict(self) -> dict[str, Any]:
        return {
            "fixed_extra_bytes": self.fixed_extra,
            "per_token_layers_bytes": self.per_token_layers,
            "per_token_vocab_bytes": self.per_token_vocab,
            "per_token_sq_bytes": self.per_token_sq,
            "source": "measured" if self.measured else "config",
        }


@dataclass(frozen=True)
class Term:
    name: str
    grows_with: str
    bytes: float
    source: str  # "config" (derived), "measured" (probe) or "config-estimate"


@dataclass(frozen=True)
class Estimate:
    batch: int
    width: int
    grad_checkpoint: bool
    terms: tuple[Term, ...]

    @property
    def total(self) -> float:
        return sum(t.bytes for t in self.terms)

    def to_dict(self) -> dict[str, Any]:
        return {
            "batch_size": self.batch,
            "sequence_length": self.width,
            "grad_checkpoint": self.grad_checkpoint,
            "peak_memory_gb": self.total / 1e9,
            "terms": [
                {
                    "name": t.name,
                    "grows_with": t.grows_with,
                    "gb": t.bytes / 1e9,
                    "source": t.source,
                }
                for t in self.terms
            ],
        }


def _act_bytes(f: ModelFacts) -> float:
    return F32_ACT_BYTES if f.act_bytes >= 4 else HALF_ACT_BYTES


def block_elements(f: ModelFacts) -> float:
    """Activation elements one block keeps per token (for the backward pass)."""
    query, kv = f.heads * f.head_dim, f.kv_heads * f.head_dim
    elements = (
        HIDDEN_COPIES * f.hidden
        + QUERY_COPIES * query
        + KV_COPIES * kv
        + INTERMEDIATE_COPIES * f.intermediate
        + RANK_COPIES * f.lora_rank * f.lora_modules / max(f.layers, 1)
    )
    if f.lora_dropout:  # a kept mask per LoRA input element (q, k, v, o, gate, up, down)
        elements += 5 * f.hidden + query + f.intermediate
    return float(elements)


def from_config(f: ModelFacts, grad_checkpoint: bool) -> Coefficients:
    """Coefficients from the model's shape alone (before any weights are downloaded)."""
    size = 4 if f.act_bytes >= 4 else 2
    block = block_elements(f) * _act_bytes(f)
    if grad_checkpoint:
        layers = f.layers * CKPT_HIDDEN_BYTES * f.hidden + CKPT_LIVE_BLOCKS * block
        sq = f.heads * CKPT_ATTN_BYTES[size]
        vocab = f.vocab * CKPT_LOGIT_BYTES[size]
    else:
        layers = (f.layers + 1) * block
        sq = f.layers * f.heads * ATTN_BYTES[size]
        vocab = f.vocab * LOGIT_BYTES[size]
    return Coefficients(
        fixed_extra=float(f.trainable_bytes),  # the gradients
        per_token_layers=layers,
        per_token_vocab=vocab,
        per_token_sq=sq,
        measured=False,
    )


def fitted(
    f: ModelFacts, grad_checkpoint: bool, fixed: float, per_token: float, per_token_sq: float
) -> Coefficients:
    """Coefficients from a probe's fit ``peak(1, W) = fixed + per_token*W + per_token_sq*W^2``.

    The per-token part is split between the blocks and the logits in the proportion the
    config-derived counts give; ``fixed`` is the whole step's fixed peak, so the parameter
    terms derived from the model are taken off it.
    """
    prior = from_config(f, grad_checkpoint)
    prior_total = prior.per_token_layers + prior.per_token_vocab
    vocab_share = prior.per_token_vocab / prior_total if prior_total > 0 else 0.0
    return Coefficients(
        fixed_extra=max(0.0, fixed - parameter_bytes(f) - dora_copy_bytes(f)),
        per_token_layers=per_token * (1 - vocab_share),
        per_token_vocab=per_token * vocab_share,
        per_token_sq=per_token_sq,
        measured=True,
    )


def adapter_bytes(f: ModelFacts) -> float:
    """The adapters' own weights: LoRA's matrices (and DoRA's magnitudes); none for full
    fine-tuning, whose trained weights are the base's, counted with them."""
    return 0.0 if f.fine_tune_type == "full" else float(f.trainable_bytes)


def dora_copy_bytes(f: ModelFacts) -> float:
    """DoRA on a quantized base: each adapted layer's weight dequantized in the forward
    pass, kept until the backward pass (a float base's weight is used as it is)."""
    if f.fine_tune_type != "dora" or f.quantization == "none":
        return 0.0
    return float(f.dora_elements * f.act_bytes)


def optimizer_bytes(f: ModelFacts) -> float:
    """The optimizer's state: its copies of the trainable parameters."""
    return float(f.trainable_bytes * f.optimizer_states)


def parameter_bytes(f: ModelFacts) -> float:
    """Weights, adapters and the optimizer's state: always resident during training."""
    return float(f.weight_bytes + adapter_bytes(f) + optimizer_bytes(f))


def estimate(
    f: ModelFacts,
    c: Coefficients,
    batch: int,
    width: int,
    *,
    grad_checkpoint: bool = False,
    accumulation: int = 1,
    kept_states: int = 0,
) -> Estimate:
    """Peak memory of a step on ``batch`` sequences padded to ``width`` tokens, with
    ``kept_states`` good states held for a rollback."""
    source = "measured" if c.measured else "config-estimate"
    tokens = batch * width
    activations = (
        Term("activations (blocks)", "batch x sequence", tokens * c.per_token_layers, source),
        Term("logits and loss", "batch x seq x vocab", tokens * c.per_token_vocab, source),
        Term("attention scores", "batch x sequence^2", tokens * width * c.per_token_sq, source),
    )
    grads = c.fixed_extra + (f.trainable_bytes if accumulation > 1 else 0)
    share = MEASURED_MARGIN if c.measured else CONFIG_MARGIN
    quant = "" if f.quantization == "none" else f" ({f.quantization})"
    adapters = {"lora": "LoRA weights", "dora": "DoRA weights"}.get(f.fine_tune_type)
    trainable = (
        *([Term(adapters, "parameters", adapter_bytes(f), "config")] if adapters else []),
        Term("optimizer state", "parameters", optimizer_bytes(f), "config"),
        Term("gradients, buffers", "parameters", grads, source),
        *(
            [Term("DoRA float weight copies", "parameters", dora_copy_bytes(f), "config")]
            if dora_copy_bytes(f)
            else []
        ),
    )
    # the margin covers what a step allocates beside the fitted terms: with gradient
    # checkpointing the activations are small and the trainable state's temporaries count
    margin = share * sum(t.bytes for t in (*trainable, *activations))
    terms: tuple[Term, ...] = (
        Term(f"weights{quant}", "parameters", float(f.weight_bytes), "config"),
        *trainable,
        *activations,
        Term(f"safety margin ({share:.0%})", "batch x sequence", margin, source),
    )
    if kept_states:
        held = kept_state_bytes(f, kept_states)
        terms += (Term(f"rollback states ({kept_states})", "parameters", held, "config"),)
    return Estimate(batch, width, grad_checkpoint, terms)


def largest(fits: Callable[[int], bool], low: int, high: int) -> int:
    """The largest ``n`` in ``[low, high]`` with ``fits(n)`` (``fits`` is monotone: true up
    to some n, false after), or ``low - 1`` when even ``low`` does not fit."""
    if not fits(low):
        return low - 1
    if fits(high):
        return high
    lo, hi = low, high  # fits(lo), not fits(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid
    return lo


MAX_BATCH = 4096
MAX_WIDTH = 1 << 20


def largest_batch(
    f: ModelFacts,
    c: Coefficients,
    width: int,
    limit: float,
    *,
    grad_checkpoint: bool,
    accumulation: int,
    kept_states: int = 0,
) -> int:
    """The largest micro-batch size whose step fits in ``limit`` bytes at ``width`` (0: none)."""
    return largest(
        lambda b: (
            estimate(
                f,
                c,
                b,
                width,
                grad_checkpoint=grad_checkpoint,
                accumulation=accumulation,
                kept_states=kept_states,
            ).total
            <= limit
        ),
        1,
        MAX_BATCH,
    )


def largest_width(
    f: ModelFacts,
    c: Coefficients,
    batch: int,
    limit: float,
    *,
    grad_checkpoint: bool,
    accumulation: int,
    kept_states: int = 0,
) -> int:
    """The longest sequence (tokens) whose step fits in ``limit`` bytes at ``batch`` (0: none).

    Capped at the model's context length when its config gives one.
    """
    cap = f.max_positions if f.max_positions > 0 else MAX_WIDTH
    found = largest(
        lambda w: (
            estimate(
                f,
                c,
                batch,
                w,
                grad_checkpoint=grad_checkpoint,
                accumulation=accumulation,
                kept_states=kept_states,
            ).total
            <= limit
        ),
        8,
        cap,
    )
    return max(found, 0) if found >= 8 else 0
