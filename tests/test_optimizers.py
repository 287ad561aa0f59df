"""Schedule-Free AdamW and Prodigy against their reference implementations.

``tests/data/optimizer_reference.json`` holds a few steps of the reference (PyTorch)
optimizers on a small problem, recorded once by ``tests/data/optimizer_reference.py``;
the MLX optimizers get the same gradients and must follow the same trajectory.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np
import pytest

from scu_tui import config
from scu_tui.training.optimizers import OPTIMIZERS, Prodigy, ScheduleFreeAdamW, make_optimizer

REFERENCE = json.loads(
    (Path(__file__).parent / "data" / "optimizer_reference.json").read_text(encoding="utf-8")
)
RTOL, ATOL = 2e-5, 1e-7


def arrays(values: dict[str, Any]) -> dict[str, mx.array]:
    return {k: mx.array(np.array(v, dtype=np.float32)) for k, v in values.items()}


def close(got: dict[str, mx.array], want: dict[str, Any], what: str, atol: float = ATOL) -> None:
    for k, v in want.items():
        np.testing.assert_allclose(
            np.array(got[k]), np.array(v), rtol=RTOL, atol=atol, err_msg=f"{what}[{k}]"
        )


def test_schedule_free_follows_the_reference() -> None:
    ref = REFERENCE["schedule_free"]
    hyper = ref["hyper"]
    opt = ScheduleFreeAdamW(hyper["lr"], hyper["weight_decay"])
    x = arrays(REFERENCE["start"])  # the model holds x, the average
    opt.init(x)
    for i, step in enumerate(ref["steps"]):
        # the gradient is taken where the reference took it: y
        close(opt.gradient_point(x), step["point"], f"step {i + 1}: y")
        opt.learning_rate = mx.array(step["lr"])  # the reference's warm-up, as the trainer feeds it
        x = opt.apply_gradients(arrays(step["grad"]), x)
        mx.eval(x, opt.state)
        close({k: opt.state[k]["z"] for k in x}, step["z"], f"step {i + 1}: z")
        close({k: opt.state[k]["v"] for k in x}, step["v"], f"step {i + 1}: v", atol=1e-9)
        close(opt.gradient_point(x), step["y"], f"step {i + 1}: y after")
        # the reference's x = (y - (1 - beta1) z) / beta1 is what validation sees
        b1 = hyper["betas"][0]
        for k in x:
            want = (np.array(step["y"][k]) - (1 - b1) * np.array(step["z"][k])) / b1
            np.testing.assert_allclose(np.array(x[k]), want, rtol=1e-4, atol=1e-6)
    assert not np.allclose(np.array(x["a"]), np.array(REFERENCE["start"]["a"]))


def test_prodigy_follows_the_reference() -> None:
    ref = REFERENCE["prodigy"]
    hyper = ref["hyper"]
    opt = Prodigy(hyper["lr"], hyper["weight_decay"])
    assert opt.d0 == hyper["d0"] and opt.betas == hyper["betas"]
    p = arrays(REFERENCE["start"])
    opt.init(p)
    for i, step in enumerate(ref["steps"]):
        p = opt.apply_gradients(arrays(step["grad"]), p)
        mx.eval(p, opt.state)
        for name in ("d", "d_max", "d_numerator"):
            assert float(opt.state[name]) == pytest.approx(step[name], rel=RTOL, abs=1e-12), name
        close({k: opt.state[k]["m"] for k in p}, step["m"], f"step {i + 1}: m", atol=1e-12)
        close({k: opt.state[k]["v"] for k in p}, step["v"], f"step {i + 1}: v", atol=1e-18)
        close(p, step["params"], f"step {i + 1}: params")
    assert float(opt.state["d"]) > 100 * hyper["d0"]  # the step size was found, not given
    assert int(opt.state["k"]) == len(ref["steps"])


def test_prodigy_does_nothing_at_learning_rate_zero() -> None:
    """As in the reference: no moment, estimate or weight moves while the LR is 0."""
    opt = Prodigy(1.0, 0.0)
    p = arrays(REFERENCE["start"])
    opt.init(p)
    grads = arrays(REFERENCE["prodigy"]["steps"][0]["grad"])
    p = opt.apply_gradients(grads, p)
    mx.eval(p, opt.state)
    before = {k: np.array(v) for k, v in p.items()}
    state = {k: float(opt.state[k]) for k in ("d", "d_numerator", "k")}
    opt.learning_rate = mx.array(0.0)
    after = opt.apply_gradients(grads, p)
    mx.eval(after, opt.state)
    assert all(np.array_equal(before[k], np.array(after[k])) for k in before)
    assert {k: float(opt.state[k]) for k in state} == state


@pytest.mark.parametrize("name", ["adamw", "schedule_free", "prodigy"])
def test_each_optimizer_keeps_its_decay_and_first_moment_in_its_state(name: str) -> None:
    """The weight decay knob is an array of the state, and every optimizer has the ``m``
    the alignment signal reads."""
    opt = make_optimizer(name, 1e-2, 0.5)
    p = arrays(REFERENCE["start"])
    opt.init(p)
    assert float(opt.state["weight_decay"]) == 0.5
    assert all("m" in opt.state[k] for k in p)
    p = opt.apply_gradients(arrays(REFERENCE["prodigy"]["steps"][0]["grad"]), p)
    mx.eval(p)
    assert all(math.isfinite(float(mx.sum(v))) for v in p.values())


def test_the_settings_offer_exactly_the_optimizers_there_are() -> None:
    assert config.OPTIMIZERS == OPTIMIZERS


def test_an_unknown_optimizer_is_refused() -> None:
    with pytest.raises(ValueError, match="adamw, schedule_free, prodigy"):
        make_optimizer("sgd", 1e-3, 0.0)
