"""The base LR schedules the S-SCU multiplies: their shape step by step."""

from __future__ import annotations

import pytest

from scu_tui.config import Settings, TrainingSettings
from scu_tui.errors import UserError
from scu_tui.training.trainer import COSINE_FLOOR, BaseSchedule


def rates(**settings: object) -> list[float]:
    training = TrainingSettings(**settings)  # type: ignore[arg-type]
    schedule = BaseSchedule(training)
    return [schedule.lr(step) for step in range(training.max_steps)]


def test_wsd_holds_the_rate_then_decays_linearly_over_its_last_fraction() -> None:
    lr = rates(
        learning_rate=1e-3, schedule="wsd", max_steps=100, warmup_steps=10, decay_fraction=0.2
    )
    assert lr[0] == pytest.approx(1e-3 / 11)  # the warm-up as in every schedule
    assert lr[9] == pytest.approx(1e-3 * 10 / 11)
    assert lr[10:81] == [1e-3] * 71  # stable up to the decay's first step (80)
    steps = [lr[k] - lr[k + 1] for k in range(80, 99)]
    assert all(d == pytest.approx(steps[0]) and d > 0 for d in steps)  # a straight line
    assert lr[99] == pytest.approx(1e-3 * (1 - (1 - COSINE_FLOOR) * 19 / 20))
    assert min(lr[10:]) >= 1e-3 * COSINE_FLOOR


def test_wsd_decay_never_reaches_into_the_warm_up() -> None:
    lr = rates(learning_rate=1.0, schedule="wsd", max_steps=20, warmup_steps=15, decay_fraction=1)
    assert lr[:15] == pytest.approx([(k + 1) / 16 for k in range(15)])
    assert lr[15] == 1.0 and lr[19] < lr[18] < lr[15]


def test_a_decay_fraction_outside_0_to_1_is_refused() -> None:
    with pytest.raises(UserError, match="decay_fraction"):
        Settings().replace({"training.decay_fraction": 1.5})
