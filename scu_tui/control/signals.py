"""Training-dynamics signals: pure numpy/pywt functions of the last ``window`` steps.

Four families, bundled in :class:`Signals` by :func:`compute_signals`:

- **loss trend** - a robust Theil–Sen slope, its Mann–Kendall significance, and the
  relative improvement per control period that the slope implies, against the target;
- **gradient stability** - median gradient norm, robust coefficient of variation
  (1.4826 MAD / median), spikes above ``median + k MAD``, non-finite values;
- **wavelet entropy** - a Daubechies decomposition of the detrended loss: the energy
  share and normalised Shannon entropy of every band, and the total wavelet entropy;
- **validation trend** - the slope of the recent validation losses and of the
  train/validation gap;
- **update alignment** - the per-step cosine between the gradient and the optimizer's
  momentum (the trainer's ``alignment``): its mean over the window and how many standard
  errors that mean sits from zero. Steady positive alignment says each step still points
  down the slope the last ones followed: the steps are too short, the LR too low.

Non-finite losses and gradient norms are counted, then left out of every statistic.
Everything here is deterministic (pair subsampling uses a fixed seed), so a controller
restored from a checkpoint computes exactly the same signals.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt
import pywt

from scu_tui.config import ScuSettings
from scu_tui.control.divergence import MAD_TO_SIGMA, noise_of

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

# --- constants (not preset keys: they fix the statistics, not the run) -------------------

#: Two-sided Mann–Kendall p-value below which a trend counts as real.
SIGNIFICANCE = 0.05
#: A trendless window is a plateau when |relative improvement| < this fraction of the target.
PLATEAU_FRACTION = 0.5
#: Theil–Sen uses every pair up to this many (window 316), else this many random pairs.
MAX_THEIL_SEN_PAIRS = 50_000
#: Mann–Kendall is O(n^2): longer series are block-averaged down to this many points.
MAX_TREND_POINTS = 1024
#: A gradient norm is a spike above median + K * MAD (8 raw MADs ~ 5.4 sigma for a normal).
SPIKE_MAD_K = 8.0
#: MAD never counts as less than this fraction of the median (constant norms: no 0-width band).
MAD_FLOOR_FRACTION = 0.01
#: Newest losses whose median is compared to the window median (blow-up check).
BLOWUP_SPAN = 3
#: Most recent validation passes used for the validation trend.
VAL_TREND_POINTS = 4
#: Validation is "rising" above this fraction of the target (relative, per period) ...
VAL_RISE_FRACTION = 0.25
#: ... and when its rise over the trend's span exceeds this many pass-to-pass standard
#: deviations (on the demo, validation moves +-3 % from one pass to the next at a
#: constant level: a Theil-Sen slope over 4 passes read that as overfitting at step 240).
VAL_NOISE_Z = 2.0
#: The train/validation gap is "growing" above this fraction of the target (per period).
GAP_GROWTH_FRACTION = 0.5
#: Smallest denominator for relative quantities.
EPS = 1e-12


# --- the signal bundle ---------------------------------------------------------------------


@dataclass(frozen=True)
class LossTrend:
    points: int  # finite losses analysed
    level: float  # Theil–Sen fitted loss at the newest step
    median: float
    slope: float  # loss units per step
    relative_improvement: float  # per control period, as a fraction of level; > 0 = falling
    target: float  # the preset's target_loss_improvement
    mk_s: int  # Mann–Kendall S
    z: float
    p_value: float  # two-sided
    improving: bool  # significant fall
    degrading: bool  # significant rise
    plateau: bool  # no significant trend and |relative improvement| < PLATEAU_FRACTION * target
    recent_ratio: float  # median of the newest BLOWUP_SPAN losses / window median


@dataclass(frozen=True)
class GradientStability:
    points: int  # finite gradient norms analysed
    median: float
    variability: float  # robust coefficient of variation: 1.4826 * MAD / median
    spikes: int  # in the window
    recent_spikes: int  # in the newest control period
    last_spike_age: int | None  # steps since the newest spike (0 = the newest step)
    nonfinite: int


@dataclass(frozen=True)
class WaveletEntropy:
    wavelet: str
    levels: int  # decomposition levels used; 0 = window too short, lists empty
    energy_shares: list[float]  # [D1 (finest), ..., DL, A_L (slowest)], sums to 1
    level_entropy: list[float]  # normalised Shannon entropy of each band, in [0, 1]
    total_entropy: float  # entropy of energy_shares / log(levels + 1), in [0, 1]


@dataclass(frozen=True)
class ValidationTrend:
    count: int  # validation passes used
    loss: float | None  # the newest validation loss
    trend: float  # relative change per control period; > 0 = rising
    rising: bool
    gap: float | None  # newest val loss - train loss at that time
    gap_trend: float  # relative gap change per control period; > 0 = widening
    gap_growing: bool


@dataclass(frozen=True)
class UpdateAlignment:
    points: int  # finite alignments analysed (0: the trainer does not report it)
    mean: float  # mean cos(gradient, momentum) over the window; nan without points
    recent_mean: float  # ... over the newest control period
    t: float  # mean / its standard error (0 with fewer than 2 points)
    positive_share: float  # share of steps with alignment > 0


NO_ALIGNMENT = UpdateAlignment(0, math.nan, math.nan, 0.0, math.nan)


@dataclass(frozen=True)
class Signals:
    """Everything the policy looks at for one control check."""

    period: int  # the control period, in steps
    window: int  # steps in the window
    nonfinite_losses: int
    recent_nonfinite: int  # non-finite losses or gradient norms in the newest period
    trend: LossTrend
    gradients: GradientStability
    wavelet: WaveletEntropy
    validation: ValidationTrend
    alignment: UpdateAlignment = NO_ALIGNMENT

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data; non-finite floats become strings ("nan", "inf") as in events."""
        return dict(json_safe(asdict(self)))


def json_safe(value: Any) -> Any:
    """A copy with non-finite floats as strings and numpy scalars as Python numbers."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


# --- robust trend statistics ----------------------------------------------------------------


class MannKendall(NamedTuple):
    s: int
    z: float
    p_value: float


def as_array(values: Sequence[float] | FloatArray) -> FloatArray:
    return np.asarray(values, dtype=np.float64).reshape(-1)


def finite_points(values: FloatArray) -> tuple[FloatArray, FloatArray]:
    """(positions, values) of the finite entries, positions as floats."""
    mask = np.isfinite(values)
    return np.flatnonzero(mask).astype(np.float64), values[mask]


def pair_indices(n: int) -> tuple[IntArray, IntArray]:
    """Index pairs i < j: all of them, or a fixed-seed sample when there are too many."""
    if n * (n - 1) // 2 <= MAX_THEIL_SEN_PAIRS:
        i, j = np.triu_indices(n, k=1)
        return i.astype(np.int64), j.astype(np.int64)
    rng = np.random.default_rng(0)
    a = rng.integers(0, n, MAX_THEIL_SEN_PAIRS)
    b = rng.integers(0, n, MAX_THEIL_SEN_PAIRS)
    keep = a != b
    return np.minimum(a, b)[keep], np.maximum(a, b)[keep]


def theil_sen(x: FloatArray, y: FloatArray) -> tuple[float, float]:
    """Robust line fit: (median pairwise slope, median intercept); slope 0 under 2 points."""
    if y.size == 0:
        return 0.0, math.nan
    if y.size == 1:
        return 0.0, float(y[0])
    i, j = pair_indices(y.size)
    dx = x[j] - x[i]
    usable = dx != 0
    slopes = (y[j][usable] - y[i][usable]) / dx[usable]
    slope = float(np.median(slopes)) if slopes.size else 0.0
    return slope, float(np.median(y - slope * x))


def block_means(y: FloatArray, points: int) -> FloatArray:
    """``y`` averaged over ``points`` nearly equal consecutive blocks."""
    return np.array([block.mean() for block in np.array_split(y, points)])


def mann_kendall(y: FloatArray) -> MannKendall:
    """Mann–Kendall trend test with the tie correction; two-sided p from ``math.erfc``.

    It assumes independent samples: per-step minibatch losses are close to that, and the
    policy asks for the diagnosis to hold on two checks before acting anyway.
    """
    if y.size > MAX_TREND_POINTS:
        y = block_means(y, MAX_TREND_POINTS)
    n = y.size
    if n < 3:
        return MannKendall(0, 0.0, 1.0)
    i, j = np.triu_indices(n, k=1)
    s = int(np.sign(y[j] - y[i]).sum())
    _, ties = np.unique(y, return_counts=True)
    tie_term = float(np.sum(ties * (ties - 1) * (2 * ties + 5)))
    variance = (n * (n - 1) * (2 * n + 5) - tie_term) / 18.0
    if variance <= 0 or s == 0:
        return MannKendall(s, 0.0, 1.0)
    z = (s - math.copysign(1, s)) / math.sqrt(variance)
    return MannKendall(s, z, math.erfc(abs(z) / math.sqrt(2)))


def loss_trend(losses: FloatArray, period: int, target: float) -> LossTrend:
    """Slope, significance and per-period relative improvement of the finite losses."""
    x, y = finite_points(losses)
    if y.size == 0:
        nan = math.nan
        return LossTrend(0, nan, nan, 0.0, 0.0, target, 0, 0.0, 1.0, False, False, False, nan)
    slope, intercept = theil_sen(x, y)
    level = intercept + slope * float(x[-1])
    median = float(np.median(y))
    improvement = -slope * period / max(abs(level), EPS)
    mk = mann_kendall(y)
    significant = mk.p_value < SIGNIFICANCE
    recent = float(np.median(y[-BLOWUP_SPAN:]))
    ratio = recent / median if median > EPS else 1.0
    return LossTrend(
        points=int(y.size),
        level=level,
        median=median,
        slope=slope,
        relative_improvement=improvement,
        target=target,
        mk_s=mk.s,
        z=mk.z,
        p_value=mk.p_value,
        improving=significant and slope < 0,
        degrading=significant and slope > 0,
        plateau=not significant and abs(improvement) < PLATEAU_FRACTION * target,
        recent_ratio=ratio,
    )


#: The fitted level a period's change is measured to is at least this share of where the
#: fit stood a period before: a straight line through a steep early fall overshoots below
#: zero, and a loss never does.
LEVEL_FLOOR_FRACTION = 0.01


def trend_change(trend: dict[str, Any], period: int) -> float | None:
    """How much the fitted loss moved over the last control period, as a fraction of where
    it stood a period ago: -0.031 is a 3.1 % fall. Never below -99 %: an early, steep fall
    reads -85 %, never -596 % (the same slope taken against today's level), and a fitted
    level that went below zero counts as 1 % of the level a period ago. None without a
    positive level a period ago to measure against."""
    level, slope = trend.get("level"), trend.get("slope")
    if not isinstance(level, int | float) or not isinstance(slope, int | float):
        return None
    then = level - slope * period
    if not math.isfinite(then) or then <= 0 or not math.isfinite(level):
        return None
    return (max(level, LEVEL_FLOOR_FRACTION * then) - then) / then


# --- gradient stability ---------------------------------------------------------------------


def spike_threshold(median: float, mad: float) -> float:
    """A gradient norm above this, for norms of this median and MAD, is a spike."""
    return median + SPIKE_MAD_K * max(mad, MAD_FLOOR_FRACTION * abs(median))


def gradient_stability(grad_norms: FloatArray, period: int) -> GradientStability:
    """Level, robust variability and spikes of the finite gradient norms."""
    finite = np.isfinite(grad_norms)
    values = grad_norms[finite]
    nonfinite = int(grad_norms.size - values.size)
    if values.size == 0:
        return GradientStability(0, math.nan, math.nan, 0, 0, None, nonfinite)
    median = float(np.median(values))
    mad = float(np.median(np.abs(values - median)))
    variability = MAD_TO_SIGMA * mad / abs(median) if abs(median) > EPS else 0.0
    threshold = spike_threshold(median, mad)
    spiking = np.where(finite, grad_norms, -np.inf) > threshold
    where = np.flatnonzero(spiking)
    return GradientStability(
        points=int(values.size),
        median=median,
        variability=variability,
        spikes=int(where.size),
        recent_spikes=int(spiking[-period:].sum()),
        last_spike_age=int(grad_norms.size - 1 - where[-1]) if where.size else None,
        nonfinite=nonfinite,
    )


# --- multi-scale wavelet entropy ------------------------------------------------------------


def shannon_entropy(weights: FloatArray) -> float:
    """Shannon entropy (nats) of non-negative weights normalised to sum 1; 0 for none."""
    total = float(weights.sum())
    if total <= 0:
        return 0.0
    p = weights[weights > 0] / total
    return float(-(p * np.log(p)).sum())


def normalised_entropy(weights: FloatArray) -> float:
    """Shannon entropy divided by its maximum log(len): 0 = one weight holds all, 1 = flat."""
    if weights.size < 2:
        return 0.0
    return min(1.0, shannon_entropy(weights) / math.log(weights.size))


def detrended(losses: FloatArray) -> FloatArray:
    """Finite losses minus their Theil–Sen line and mean: the fluctuations around the trend.

    Detrending rather than first-differencing: differencing multiplies the spectrum by
    4 sin^2(w/2), pushing energy into the finest band (white noise would look ordered and a
    smooth drift would look like noise), while removing a robust line keeps the fluctuations'
    spectrum as it is and still takes out the trend that would otherwise dominate the
    coarsest band and its boundary effects.
    """
    x, y = finite_points(losses)
    if y.size < 2:
        return y
    slope, intercept = theil_sen(x, y)
    residual = y - (intercept + slope * x)
    return np.asarray(residual - residual.mean(), dtype=np.float64)


def wavelet_entropy(losses: FloatArray, wavelet: str, levels: int) -> WaveletEntropy:
    """Energy share and entropy of each band of the detrended loss, and the total entropy.

    ``levels`` is capped at ``pywt.dwt_max_level``; a window too short for one level gives
    ``levels == 0``, empty lists and a total entropy of 0.
    """
    signal = detrended(losses)
    filter_length = int(pywt.Wavelet(wavelet).dec_len)
    used = min(levels, int(pywt.dwt_max_level(signal.size, filter_length))) if signal.size else 0
    if used < 1:
        return WaveletEntropy(wavelet, 0, [], [], 0.0)
    coeffs = [np.asarray(c, dtype=np.float64) for c in pywt.wavedec(signal, wavelet, level=used)]
    bands = coeffs[:0:-1] + coeffs[:1]  # pywt gives [A_L, D_L, ..., D_1]
    energies = np.array([float(np.sum(band**2)) for band in bands])
    total = float(energies.sum())
    shares = energies / total if total > 0 else np.zeros_like(energies)
    return WaveletEntropy(
        wavelet=wavelet,
        levels=used,
        energy_shares=[float(s) for s in shares],
        level_entropy=[normalised_entropy(band**2) for band in bands],
        total_entropy=normalised_entropy(shares) if total > 0 else 0.0,
    )


# --- validation -----------------------------------------------------------------------------


def validation_trend(
    val_steps: FloatArray,
    val_losses: FloatArray,
    train_at_val: FloatArray | None,
    period: int,
    target: float,
) -> ValidationTrend:
    """Trend of the newest validation losses and of the train/validation gap.

    ``train_at_val`` holds the training-loss level when each validation ran; without it
    the gap trend is 0 and ``gap`` is None.
    """
    keep = np.isfinite(val_losses) & np.isfinite(val_steps)
    if train_at_val is not None:
        keep &= np.isfinite(train_at_val)
    steps, vals = val_steps[keep][-VAL_TREND_POINTS:], val_losses[keep][-VAL_TREND_POINTS:]
    if vals.size == 0:
        return ValidationTrend(0, None, 0.0, False, None, 0.0, False)
    scale = max(abs(float(vals[-1])), EPS)
    trend = theil_sen(steps, vals)[0] * period / scale
    gaps = vals - train_at_val[keep][-VAL_TREND_POINTS:] if train_at_val is not None else None
    gap_trend = theil_sen(steps, gaps)[0] * period / scale if gaps is not None else 0.0
    several = vals.size >= 2
    # a rise counts only beyond the validation's own pass-to-pass noise (measured on every
    # pass given, not only the newest): one noisy pass must not read as overfitting
    noise = noise_of([float(v) for v in val_losses[keep]])
    span = float(steps[-1] - steps[0]) / period if steps.size else 0.0
    beyond = VAL_NOISE_Z * noise / scale if math.isfinite(noise) else 0.0
    return ValidationTrend(
        count=int(vals.size),
        loss=float(vals[-1]),
        trend=trend,
        rising=several and trend > VAL_RISE_FRACTION * target and trend * span > beyond,
        gap=float(gaps[-1]) if gaps is not None else None,
        gap_trend=gap_trend,
        gap_growing=several
        and gap_trend > GAP_GROWTH_FRACTION * target
        and gap_trend * span > beyond,
    )


# --- update alignment -----------------------------------------------------------------------


def update_alignment(alignments: FloatArray, period: int) -> UpdateAlignment:
    """Mean alignment over the window and the newest period, with its t statistic."""
    finite = alignments[np.isfinite(alignments)]
    if finite.size == 0:
        return NO_ALIGNMENT
    recent = alignments[-period:]
    recent = recent[np.isfinite(recent)]
    mean = float(finite.mean())
    t = 0.0
    if finite.size >= 2:
        se = float(finite.std(ddof=1)) / math.sqrt(finite.size)
        t = mean / se if se > EPS else math.copysign(math.inf, mean) if mean else 0.0
    return UpdateAlignment(
        points=int(finite.size),
        mean=mean,
        recent_mean=float(recent.mean()) if recent.size else math.nan,
        t=t,
        positive_share=float((finite > 0).mean()),
    )


# --- everything at once ---------------------------------------------------------------------


def compute_signals(
    losses: Sequence[float] | FloatArray,
    grad_norms: Sequence[float] | FloatArray,
    val_steps: Sequence[float] | FloatArray,
    val_losses: Sequence[float] | FloatArray,
    scu: ScuSettings,
    *,
    train_at_val: Sequence[float] | FloatArray | None = None,
    alignments: Sequence[float] | FloatArray | None = None,
) -> Signals:
    """All signals for one check: ``losses``/``grad_norms`` are one value per step, oldest
    first (the caller keeps at most ``scu.window``); validation arrays may be empty."""
    loss = as_array(losses)
    grads = as_array(grad_norms)
    period = max(1, scu.control_frequency)
    recent = int((~np.isfinite(loss[-period:])).sum() + (~np.isfinite(grads[-period:])).sum())
    train_ref = as_array(train_at_val) if train_at_val is not None else None
    return Signals(
        period=period,
        window=int(loss.size),
        nonfinite_losses=int((~np.isfinite(loss)).sum()),
        recent_nonfinite=recent,
        trend=loss_trend(loss, period, scu.target_loss_improvement),
        gradients=gradient_stability(grads, period),
        wavelet=wavelet_entropy(loss, scu.wavelet, scu.levels),
        validation=validation_trend(
            as_array(val_steps),
            as_array(val_losses),
            train_ref,
            period,
            scu.target_loss_improvement,
        ),
        alignment=(
            update_alignment(as_array(alignments), period)
            if alignments is not None
            else NO_ALIGNMENT
        ),
    )
