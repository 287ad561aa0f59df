"""How long the probe's steps will take, said before they run.

The probe trains real steps of the model (``probe.py``). For a small model that is
seconds; for a 4B model on a CPU, whose 16-bit quantized matmul runs at a fraction of a
GFLOP/s, one step takes longer than a night. So before loading the weights the check
times this machine on the model's own kind of layer (a matrix product at the model's
width, quantized as the model is, in its dtype), counts the arithmetic of the probe's
steps, and says how long they will take. Over the budget, it gives the estimate from
``config.json`` instead, and says how to run the probe anyway.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from scu_tui.check.model_facts import DTYPES, ModelFacts

PROBE_BUDGET_SECONDS = 600.0  # longer than this, the probe runs only when asked
TIMED_SECONDS = 0.2  # a product is timed until one run takes at least this long
LARGEST_ROWS = 128


@dataclass(frozen=True)
class ProbeCost:
    flops_per_second: float  # this machine, on the model's kind of layer
    probe_seconds: float  # the probe's steps, all of them
    token_flops: float  # arithmetic of one trained token of the run as configured
    ran: bool  # whether the probe ran (False: over the budget, or not asked for)

    def step_seconds(self, tokens: float) -> float:
        """Seconds of an optimizer step over ``tokens`` tokens, projected."""
        return tokens * self.token_flops / self.flops_per_second

    def to_dict(self, step_tokens: float) -> dict[str, Any]:
        return {
            "gflops_per_second": self.flops_per_second / 1e9,
            "probe_seconds_estimate": self.probe_seconds,
            "step_seconds_estimate": self.step_seconds(step_tokens),
            "probe_ran": self.ran,
        }


def _product_seconds(rows: int, out: int, columns: int, dtype: Any, quant: Any) -> float:
    """Seconds of one ``(rows x columns) @ (out x columns)^T`` product, after a warm-up."""
    import mlx.core as mx

    key = mx.random.key(0)
    weight = (0.02 * mx.random.normal((out, columns), key=key)).astype(dtype)
    x = mx.random.normal((rows, columns), key=key).astype(dtype)
    if quant is not None and columns % quant[1] == 0:
        bits, group = quant
        packed, scales, biases = mx.quantize(weight, group_size=group, bits=bits)
        mx.eval(packed, scales, biases, x)

        def product() -> Any:
            return mx.quantized_matmul(
                x, packed, scales, biases, transpose=True, group_size=group, bits=bits
            )
    else:
        mx.eval(weight, x)

        def product() -> Any:
            return x @ weight.T

    mx.eval(product())  # warm-up
    tic = time.perf_counter()
    mx.eval(product())
    return time.perf_counter() - tic


def layer_speed(f: ModelFacts) -> float:
    """FLOP/s of this machine on a product like the model's: rows of activations by a
    weight of the model's width, quantized as the model is, in its dtype. The sizes double
    from small until one product takes ``TIMED_SECONDS`` (or the full width is reached),
    so a slow machine is measured in about a second and a fast one at a size it is fast
    at."""
    import mlx.core as mx

    dtype = DTYPES.get(f.dtype, mx.float32)
    quant = (f.quant_bits, f.quant_group) if f.quant_bits else None
    columns = max(f.hidden, 64)
    full = max(f.intermediate, f.hidden, 64)
    rows, out = 8, min(256, full)
    while True:
        seconds = _product_seconds(rows, out, columns, dtype, quant)
        if seconds >= TIMED_SECONDS or (rows >= LARGEST_ROWS and out >= full):
            return 2.0 * rows * out * columns / max(seconds, 1e-9)
        if rows < LARGEST_ROWS:
            rows *= 2
        else:
            out = min(full, out * 2)


def flops_per_token(f: ModelFacts, grad_checkpoint: bool) -> float:
    """Arithmetic of one trained token: the forward pass (2 per weight), the backward
    pass's input gradients (2 more; a frozen base needs no weight gradients) and, with
    checkpointing, the forward pass again; full fine-tuning adds the weight gradients."""
    passes = 4.0 + (2.0 if grad_checkpoint else 0.0) + (2.0 if f.fine_tune_type == "full" else 0.0)
    return passes * f.parameters


def probe_tokens(batch: int, widths: list[int]) -> float:
    """Tokens the probe trains: per gradient-checkpointing choice, two steps at batch size
    1 per calibration width and two at the run's batch size at the widest; then the timing
    (a first step and at least three more at the run's batch size, at up to three widths)
    and a few forward-only evaluation batches (counted as a third of a trained batch)."""
    top = max(widths)
    calibration = 2 * sum(widths) + 2 * batch * top
    timing = 4 * batch * sum(sorted(widths)[-3:])
    evaluation = 4 * batch * top / 3
    return 2 * calibration + timing + evaluation


def probe_cost(
    f: ModelFacts, *, batch: int, widths: list[int], grad_checkpoint: bool, speed: float, ran: bool
) -> ProbeCost:
    """The probe's projected duration at ``speed`` FLOP/s (it calibrates both
    gradient-checkpointing choices, so their mean cost per token)."""
    both = (flops_per_token(f, True) + flops_per_token(f, False)) / 2
    return ProbeCost(
        flops_per_second=speed,
        probe_seconds=probe_tokens(batch, widths) * both / speed,
        token_flops=flops_per_token(f, grad_checkpoint),
        ran=ran,
    )
