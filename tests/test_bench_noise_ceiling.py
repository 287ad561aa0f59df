"""The noise-ceiling benchmark's arithmetic: from the window's norms alone it recovers how
high the alignment reads when the weights do not move (a fixed true gradient plus noise,
Adam's first moment without bias correction), at a high and at a low signal-to-noise."""

from __future__ import annotations

import numpy as np
import pytest

from bench.controller.noise_ceiling import BETA1, Step, window


def still_weights(signal: float, noise: float, steps: int, seed: int) -> list[Step]:
    """(step, cos(g, m before), |g|^2, |m before|^2) of gradients G + noise, G fixed."""
    rng = np.random.default_rng(seed)
    dim = 4000
    true = rng.standard_normal(dim)
    true *= signal / np.linalg.norm(true)
    m = np.zeros(dim)
    rows: list[Step] = []
    for step in range(1, steps + 1):
        g = true + rng.standard_normal(dim) * noise / np.sqrt(dim)
        m2 = float(m @ m)
        cos = float(g @ m / np.sqrt(g @ g * m2)) if m2 > 0 else float("nan")
        rows.append((step, cos, float(g @ g), m2))
        m = BETA1 * m + (1 - BETA1) * g
    return rows


@pytest.mark.parametrize(("noise", "low", "high"), [(0.5, 0.8, 1.0), (4.0, 0.05, 0.4)])
def test_ceiling_matches_the_alignment_of_weights_that_do_not_move(
    noise: float, low: float, high: float
) -> None:
    rows = still_weights(1.0, noise, 40, seed=3)
    for first, last in ((11, 20), (21, 30), (31, 40)):
        a, c = window(rows, first, last)
        assert low < c < high  # the noisier gradient reads lower, and its ceiling says so
        assert c == pytest.approx(a, abs=0.05)
