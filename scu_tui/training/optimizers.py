"""The optimizers a run can train with (``training.optimizer``), written for MLX.

Every one keeps its learning rate and weight decay as ``mx.array``s in its state, so a
compiled step sees the S-SCU's changes without recompiling, and keeps everything it needs
to continue exactly (moments, averages, step-size estimates, counters) in ``state`` too:
checkpoints, rollbacks and the ranks' state transfer copy ``state`` whole and need nothing
else. Each names its first moment (or, for Schedule-Free, a gradient average kept for the
purpose) ``m``, which the trainer's update-alignment signal reads.

- ``adamw``: mlx's AdamW (no bias correction), decay at the rate of the LR.
- ``schedule_free``: Schedule-Free AdamW (Defazio et al., 2024). The model's weights are
  always the average ``x``, which validation, checkpoints and the saved adapters see; the
  gradient is taken at ``y = (1 - beta1) z + beta1 x`` (:meth:`KnobOptimizer.gradient_point`),
  which exists only inside a step.
- ``prodigy``: Prodigy (Mishchenko and Defazio, 2023): Adam whose step size ``d`` is
  estimated from the distance travelled; the learning rate multiplies ``d`` (1 by default).
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any

import mlx.core as mx
import mlx.optimizers as optim
from mlx.utils import tree_map

OPTIMIZERS = ("adamw", "schedule_free", "prodigy")

BETAS = (0.9, 0.999)
EPS = 1e-8
#: Schedule-Free's averaging weight of step t: t ** R * lr_max ** WEIGHT_LR_POWER
#: (the reference implementation's defaults).
SF_R = 0.0
SF_WEIGHT_LR_POWER = 2.0
#: Prodigy's initial step-size estimate and its factor on the estimate (reference defaults).
PRODIGY_D0 = 1e-6
PRODIGY_D_COEF = 1.0


class KnobOptimizer(optim.Optimizer):  # type: ignore[misc]
    """An optimizer whose weight decay is an array in the state, so a compiled step sees
    changes, and that says where the gradient is to be taken."""

    #: whether :meth:`gradient_point` differs from the model's weights
    moves_gradient_point = False

    def __init__(self, learning_rate: float, weight_decay: float) -> None:
        super().__init__()
        self._maybe_schedule("learning_rate", learning_rate)
        self.state["weight_decay"] = mx.array(weight_decay, mx.float32)
        self.betas = list(BETAS)
        self.eps = EPS

    def gradient_point(self, params: Any) -> Any:
        """The weights at which the next gradient is taken, given the model's weights."""
        return params


class KnobAdamW(optim.AdamW):  # type: ignore[misc]
    """mlx's AdamW (no bias correction) with its weight decay as an array in the state."""

    moves_gradient_point = False

    def __init__(self, learning_rate: float, weight_decay: float) -> None:
        super().__init__(learning_rate=learning_rate, weight_decay=0.0)
        self.state["weight_decay"] = mx.array(weight_decay)

    def apply_single(self, gradient: mx.array, parameter: mx.array, state: dict[str, Any]) -> Any:
        lr = self.learning_rate.astype(gradient.dtype)
        decay = self.state["weight_decay"].astype(gradient.dtype)
        return optim.Adam.apply_single(self, gradient, parameter * (1 - lr * decay), state)

    def gradient_point(self, params: Any) -> Any:
        """The gradient is taken at the model's weights."""
        return params


class ScheduleFreeAdamW(KnobOptimizer):
    """Schedule-Free AdamW: ``z`` takes Adam-normalised gradient steps taken at ``y``; the
    weights ``x`` are a weighted average of the ``z`` so far, with weights that grow with
    the squared largest LR seen (so warm-up steps count little). Decay is applied at ``y``;
    the second moment is bias-corrected (``v / (1 - beta2^t)``).

    State per weight: ``z``, ``v`` (Adam's second moment) and ``m``, an average of the raw
    gradients with ``beta1`` that the update never reads: the S-SCU's alignment signal
    compares each gradient with it, as it does with AdamW's first moment.
    """

    moves_gradient_point = True

    def __init__(self, learning_rate: float, weight_decay: float) -> None:
        super().__init__(learning_rate, weight_decay)
        self.state["lr_max"] = mx.array(-1.0, mx.float32)
        self.state["weight_sum"] = mx.array(0.0, mx.float32)

    def init_single(self, parameter: mx.array, state: dict[str, Any]) -> None:
        state["z"] = mx.array(parameter)
        state["v"] = mx.zeros_like(parameter)
        state["m"] = mx.zeros_like(parameter)

    def gradient_point(self, params: Any) -> Any:
        if not self._initialized:  # a state loaded from a file lacks the empty branches
            self.init(params)
        b1 = self.betas[0]
        return tree_map(lambda x, s: self._y(x, s["z"], b1), params, self.state)

    @staticmethod
    def _y(x: mx.array, z: mx.array, b1: float) -> mx.array:
        return (1 - b1) * z + b1 * x

    def apply_gradients(self, gradients: Any, parameters: Any) -> Any:
        if not self._initialized:
            self.init(gradients)
        step = self.step + 1  # the reference's k + 1
        self.state["step"] = step
        t = step.astype(mx.float32)
        lr = self.learning_rate.astype(mx.float32)
        lr_max = mx.maximum(lr, self.state["lr_max"])
        weight = mx.power(t, SF_R) * mx.power(lr_max, SF_WEIGHT_LR_POWER)
        weight_sum = self.state["weight_sum"] + weight
        ckp1 = mx.where(weight_sum > 0, weight / mx.where(weight_sum > 0, weight_sum, 1.0), 0.0)
        self.state["lr_max"], self.state["weight_sum"] = lr_max, weight_sum
        # 1 - beta2^t, without the cancellation of a float32 subtraction near 1
        correction = -mx.expm1(t * math.log(self.betas[1]))
        update = partial(self._update_one, lr, ckp1, correction)
        return tree_map(update, gradients, parameters, self.state)

    def _update_one(
        self,
        lr: mx.array,
        ckp1: mx.array,
        correction: mx.array,
        gradient: mx.array,
        parameter: mx.array,
        state: dict[str, Any],
    ) -> mx.array:
        b1, b2 = self.betas
        dtype = gradient.dtype
        lr, ckp1 = lr.astype(dtype), ckp1.astype(dtype)
        decay = self.state["weight_decay"].astype(dtype)
        z = state["z"]
        v = b2 * state["v"] + (1 - b2) * mx.square(gradient)
        denom = mx.sqrt(v / correction.astype(dtype)) + self.eps
        normalised = gradient / denom + decay * self._y(parameter, z, b1)
        z = z - lr * normalised
        state["z"], state["v"] = z, v
        state["m"] = b1 * state["m"] + (1 - b1) * gradient
        return (1 - ckp1) * parameter + ckp1 * z


class Prodigy(KnobOptimizer):
    """Prodigy: Adam with the step ``d * lr``, where ``d`` grows to the largest estimate of
    the distance from the start to the solution seen so far (the correlation of gradients
    with the distance travelled, over the sum of the gradients' magnitudes). Decoupled decay
    at ``d * lr``; no bias correction; ``beta3 = sqrt(beta2)``; ``d`` may grow without limit.

    State: ``d``, ``d_max``, ``d_numerator`` and ``k`` (updates that moved the weights);
    per weight the start ``p0``, the numerator's gradient sum ``s``, ``m`` and ``v``.
    """

    def __init__(self, learning_rate: float, weight_decay: float) -> None:
        super().__init__(learning_rate, weight_decay)
        self.beta3 = math.sqrt(BETAS[1])
        self.d0 = PRODIGY_D0
        self.d_coef = PRODIGY_D_COEF
        self.state["d"] = mx.array(PRODIGY_D0, mx.float32)
        self.state["d_max"] = mx.array(PRODIGY_D0, mx.float32)
        self.state["d_numerator"] = mx.array(0.0, mx.float32)
        self.state["k"] = mx.array(0, mx.int32)

    def init_single(self, parameter: mx.array, state: dict[str, Any]) -> None:
        state["p0"] = mx.array(parameter)
        state["s"] = mx.zeros_like(parameter)
        state["m"] = mx.zeros_like(parameter)
        state["v"] = mx.zeros_like(parameter)

    def apply_gradients(self, gradients: Any, parameters: Any) -> Any:
        if not self._initialized:
            self.init(gradients)
        self.state["step"] = self.step + 1
        b1, b2 = self.betas
        d = self.state["d"]
        lr = self.learning_rate.astype(mx.float32)
        dlr = d * lr
        numerator_terms: list[mx.array] = []
        denominator_terms: list[mx.array] = []

        def moments(g: mx.array, p: mx.array, state: dict[str, Any]) -> mx.array:
            dt = g.dtype
            d_, dlr_ = d.astype(dt), dlr.astype(dt)
            gf = g.reshape(-1).astype(mx.float32)
            moved = (state["p0"] - p).reshape(-1).astype(mx.float32)
            numerator_terms.append(mx.sum(gf * moved))
            m = b1 * state["m"] + (d_ * (1 - b1)) * g
            v = b2 * state["v"] + (d_ * d_ * (1 - b2)) * mx.square(g)
            s = self.beta3 * state["s"] + ((d_ / self.d0) * dlr_) * g
            # at LR 0 the reference leaves every moment as it was
            state["m"] = mx.where(active, m, state["m"])
            state["v"] = mx.where(active, v, state["v"])
            state["s"] = mx.where(active, s, state["s"])
            denominator_terms.append(mx.sum(mx.abs(s).astype(mx.float32)))
            return p

        active = lr > 0
        tree_map(moments, gradients, parameters, self.state)
        numerator = (d / self.d0) * dlr * sum(numerator_terms, mx.array(0.0, mx.float32))
        global_numerator = self.beta3 * self.state["d_numerator"] + numerator
        denominator = sum(denominator_terms, mx.array(0.0, mx.float32))
        # no update at LR 0, nor while every gradient so far was zero (nothing to estimate)
        moves = mx.logical_and(active, denominator > 0)
        d_hat = self.d_coef * global_numerator / mx.where(moves, denominator, 1.0)
        # d = min(d_max, d * growth_rate) with an unlimited growth rate: d follows d_max
        d_max = mx.where(moves, mx.maximum(self.state["d_max"], d_hat), self.state["d_max"])
        self.state["d"] = d_max
        self.state["d_max"] = d_max
        self.state["d_numerator"] = mx.where(moves, global_numerator, self.state["d_numerator"])
        self.state["k"] = self.state["k"] + moves.astype(mx.int32)
        update = partial(self._update_one, dlr, moves)
        return tree_map(update, gradients, parameters, self.state)

    def _update_one(
        self,
        dlr: mx.array,
        moves: mx.array,
        gradient: mx.array,
        parameter: mx.array,
        state: dict[str, Any],
    ) -> mx.array:
        dt = parameter.dtype
        dlr = dlr.astype(dt)
        d = self.state["d"].astype(dt)
        decay = self.state["weight_decay"].astype(dt)
        denom = mx.sqrt(state["v"]) + d * self.eps
        # the reference's order of operations: the numerator's p0 - p is a small difference
        # of large numbers, so a rounding apart in the weights shows in d
        new = parameter + (-decay * dlr) * parameter
        new = new + (-dlr) * (state["m"] / denom)
        return mx.where(moves, new, parameter)


#: What the trainer may hold: each has ``gradient_point`` and its weight decay in ``state``.
TrainingOptimizer = KnobAdamW | ScheduleFreeAdamW | Prodigy


def make_optimizer(name: str, learning_rate: float, weight_decay: float) -> TrainingOptimizer:
    """The optimizer ``training.optimizer`` names."""
    match name:
        case "adamw":
            return KnobAdamW(learning_rate, weight_decay)
        case "schedule_free":
            return ScheduleFreeAdamW(learning_rate, weight_decay)
        case "prodigy":
            return Prodigy(learning_rate, weight_decay)
    raise ValueError(f"unknown optimizer {name!r}: one of {', '.join(OPTIMIZERS)}")
