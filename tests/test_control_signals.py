"""The S-SCU signals on synthetic curves: trend, gradient stability, wavelet entropy, validation."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from scu_tui.config import ScuSettings
from scu_tui.control.signals import (
    MAX_THEIL_SEN_PAIRS,
    FloatArray,
    compute_signals,
    gradient_stability,
    loss_trend,
    mann_kendall,
    pair_indices,
    theil_sen,
    validation_trend,
    wavelet_entropy,
)

SCU = ScuSettings(control_frequency=50, window=256, levels=4, target_loss_improvement=0.01)
N = 256
T = np.arange(N, dtype=np.float64)


def noise(scale: float, seed: int = 0, n: int = N) -> FloatArray:
    values: FloatArray = scale * np.random.default_rng(seed).standard_normal(n)
    return values


def decaying() -> FloatArray:
    return 1.0 + 2.0 * np.exp(-T / 100) + noise(0.02)


def steady_grads() -> FloatArray:
    return 1.0 + noise(0.05, seed=1)


# --- trend ----------------------------------------------------------------------------------


def test_theil_sen_ignores_outliers() -> None:
    y = 3.0 - 0.5 * T
    y[[10, 50, 200]] = 1e6
    slope, intercept = theil_sen(T, y)
    assert slope == pytest.approx(-0.5)
    assert intercept == pytest.approx(3.0)


def test_theil_sen_subsamples_pairs_for_long_windows() -> None:
    n = 2000
    i, _ = pair_indices(n)
    assert i.size <= MAX_THEIL_SEN_PAIRS
    x = np.arange(n, dtype=np.float64)
    slope, _ = theil_sen(x, 0.01 * x + noise(0.1, n=n))
    assert slope == pytest.approx(0.01, rel=0.05)


def test_mann_kendall_counts_concordant_pairs() -> None:
    up = mann_kendall(np.array([1.0, 2.0, 3.0, 4.0, 5.0]))
    assert up.s == 10 and up.z > 0
    down = mann_kendall(np.array([5.0, 4.0, 3.0, 2.0, 1.0]))
    assert down.s == -10 and down.z == pytest.approx(-up.z)
    assert mann_kendall(np.array([1.0, 1.0, 1.0, 1.0])).p_value == 1.0
    assert mann_kendall(np.array([1.0, 2.0])).p_value == 1.0


def test_decaying_loss_is_a_significant_fall() -> None:
    trend = loss_trend(decaying(), 50, 0.01)
    assert trend.slope < 0 and trend.z < 0
    assert trend.p_value < 1e-6
    assert trend.improving and not trend.degrading and not trend.plateau
    assert trend.relative_improvement > 0.01


def test_rising_loss_is_degrading() -> None:
    trend = loss_trend(2.0 + 0.002 * T + noise(0.02), 50, 0.01)
    assert trend.degrading and trend.slope > 0 and trend.relative_improvement < 0


def test_flat_noisy_loss_is_a_plateau() -> None:
    trend = loss_trend(2.0 + noise(0.05), 50, 0.01)
    assert trend.p_value > 0.05
    assert trend.plateau and not trend.improving and not trend.degrading


def test_blow_up_shows_in_the_recent_ratio() -> None:
    loss = 2.0 + noise(0.02)
    loss[-3:] = 9.0
    assert loss_trend(loss, 50, 0.01).recent_ratio > 4


# --- gradients ------------------------------------------------------------------------------


def test_spikes_are_counted_and_dated() -> None:
    grads = steady_grads()
    grads[[30, 220, 250]] = 10.0
    g = gradient_stability(grads, 50)
    assert g.spikes == 3
    assert g.recent_spikes == 2
    assert g.last_spike_age == N - 1 - 250
    assert g.median == pytest.approx(1.0, abs=0.02)


def test_noisy_gradients_are_more_variable() -> None:
    steady = gradient_stability(steady_grads(), 50)
    noisy = gradient_stability(np.random.default_rng(2).uniform(0.2, 1.8, N), 50)
    assert steady.variability < 0.1 < 0.5 < noisy.variability
    assert steady.spikes == 0 and steady.last_spike_age is None


def test_non_finite_values_are_counted_and_left_out() -> None:
    loss, grads = decaying(), steady_grads()
    loss[[5, 250]] = np.nan
    grads[[7, 251]] = np.inf
    s = compute_signals(loss, grads, [], [], SCU)
    assert s.nonfinite_losses == 2 and s.gradients.nonfinite == 2
    assert s.recent_nonfinite == 2
    assert s.trend.points == N - 2 and math.isfinite(s.trend.slope)
    assert s.gradients.spikes == 0


def test_all_non_finite_does_not_crash() -> None:
    s = compute_signals([math.nan] * 20, [math.inf] * 20, [], [], SCU)
    assert s.trend.points == 0 and s.gradients.points == 0 and s.wavelet.levels == 0
    json.dumps(s.to_dict(), allow_nan=False)


# --- wavelet entropy ------------------------------------------------------------------------


def test_wavelet_shares_and_entropies_are_normalised() -> None:
    w = wavelet_entropy(decaying(), "db4", 4)
    assert w.levels == 4
    assert len(w.energy_shares) == len(w.level_entropy) == 5
    assert sum(w.energy_shares) == pytest.approx(1.0)
    assert all(0.0 <= e <= 1.0 for e in w.level_entropy)
    assert 0.0 <= w.total_entropy <= 1.0


def test_white_noise_has_higher_entropy_than_a_smooth_trend() -> None:
    smooth = wavelet_entropy(1.0 + 2.0 * np.exp(-T / 100), "db4", 4)
    white = wavelet_entropy(2.0 + noise(0.05), "db4", 4)
    assert white.total_entropy > 0.6 > 0.3 > smooth.total_entropy
    assert smooth.energy_shares[-1] > 0.9  # the slow (approximation) band holds it all
    assert white.energy_shares[0] > white.energy_shares[-2]  # finest band holds the most


def test_levels_are_capped_by_the_window() -> None:
    assert wavelet_entropy(2.0 + noise(0.05, n=64), "db4", 8).levels == 3
    short = wavelet_entropy(2.0 + noise(0.05, n=10), "db4", 4)
    assert short.levels == 0 and short.energy_shares == [] and short.total_entropy == 0.0


# --- validation -----------------------------------------------------------------------------


def test_rising_validation_with_falling_training_is_seen() -> None:
    steps = np.array([100.0, 200.0, 300.0, 400.0])
    val = np.array([1.50, 1.53, 1.57, 1.62])
    train = np.array([1.40, 1.30, 1.20, 1.10])
    v = validation_trend(steps, val, train, 50, 0.01)
    assert v.count == 4 and v.loss == pytest.approx(1.62)
    assert v.rising and v.trend > 0
    assert v.gap == pytest.approx(0.52) and v.gap_growing


def test_falling_validation_is_not_rising() -> None:
    steps = np.array([100.0, 200.0, 300.0])
    v = validation_trend(steps, np.array([1.6, 1.5, 1.4]), np.array([1.5, 1.4, 1.3]), 50, 0.01)
    assert not v.rising and not v.gap_growing and v.trend < 0


def test_no_evals_means_no_validation_signal() -> None:
    s = compute_signals(decaying(), steady_grads(), [], [], SCU)
    assert s.validation.count == 0 and s.validation.loss is None and not s.validation.rising


# --- the bundle -----------------------------------------------------------------------------


def test_signals_are_plain_json() -> None:
    s = compute_signals(
        decaying(), steady_grads(), [100, 200], [1.5, 1.6], SCU, train_at_val=[1.4, 1.3]
    )
    data = json.loads(json.dumps(s.to_dict(), allow_nan=False))
    assert data["trend"]["improving"] is True
    assert len(data["wavelet"]["energy_shares"]) == 5
    assert data["validation"]["count"] == 2
