"""How strong the evidence is that a cost per unit rose: the sequential test of the cost detectors.

The cost detectors (``model_update_spike``, ``cost_shift``) compare a cost per unit (per
model call, per task, per outcome) after a point in time with the same before it. Task costs
are heavy-tailed (a few tasks cost tens of times the median), so means of costs converge
slowly and one large task moves them; the test works on logarithms instead:

- **observations**: consecutive minutes are grouped until they hold at least one unit (a busy
  agent: every minute; a slow one: the minutes of about one task), and each group of ``u``
  units gives ``x = log(cost / units)`` of weight ``u`` (:class:`Blocks`; model calls weigh 1
  per group: calls of one task share its size and are not independent);
- **robustness**: each side's mean is winsorised at its median +- ``WINSOR`` robust standard
  deviations of the baseline (a couple of giant tasks in a window weigh as large ones, not as
  the window; a shift of the whole window is kept), while the variance is the raw one (the
  tail stays in the noise);
- **noise**: the variance of one unit's log cost in the baseline (an observation of ``u`` units
  has ``variance / u``), inflated by the integrated autocorrelation time of the observations
  (``1 + 2 sum rho_k`` over the lags up to the first autocorrelation that is not positive: a
  long task, or a run of large ones, spreads over several observations);
- **test**: Wald's sequential probability ratio test on the weighted mean of the observations
  after the point, H0: a shift of ``NULL_SHARE * log(ratio)`` (with ``ratio`` 1.8, H0 is 1.34x,
  so a model 20-30% pricier counts as evidence *against* a spike) against H1: a shift of
  ``log(ratio)`` or more (the generalised likelihood ratio: ``d1 = max(log(ratio), shift)``).
  With ``d = log`` of the ratios and ``v = variance x inflation x (1/U + 1/U0)``::

      LLR = ((shift - d0)^2 - (shift - d1)^2) / (2 v)

  compared each minute with ``log(1 / alpha)``: above it the rise is decided, below its
  negative its absence is. No fixed count of tasks: a busy agent decides within minutes, a
  slow one after the few tasks its own noise allows, a surge's extra tasks count as evidence.

A multiplicative change (a pricier model, a longer prompt, more calls per task) shifts every
observation by the same log ratio, so the ratio of geometric means is the change itself.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import operator
from collections.abc import Sequence

# H0 (benign) is ratio ** NULL_SHARE: halfway between no change and the spike, in logs.
NULL_SHARE = 0.5
# The variance of the observations is never taken below this (a baseline of identical minutes is
# not noise-free evidence: it is too short to show its noise).
MIN_VARIANCE = 0.0025
# Autocorrelation is counted over at most this many lags, and inflates the variance at most this much.
MAX_LAG = 10
MAX_INFLATION = 20.0
# Observations are winsorised at their sample's median +- this many robust standard deviations
# (1.4826 x the median absolute deviation of the baseline).
WINSOR = 2.5


class Blocks:
    """Minutes ``(cost, units)`` in, observations ``(log(cost / units), weight)`` out, once a group holds a
    unit. The weight is the units, or 1 with ``weighted=False`` (model calls: the calls of a minute
    mostly belong to a few tasks and share their size, so they are not independent units)."""

    __slots__ = ("cost", "units", "weighted")

    def __init__(self, weighted: bool = True) -> None:
        self.cost = 0.0
        self.units = 0.0
        self.weighted = weighted

    def add(self, cost: float, units: float) -> tuple[float, float] | None:
        """Add a minute; the observation of the group it completes (None: not complete yet, or a
        group that cost nothing, which says nothing of a cost per unit)."""
        self.cost += cost
        self.units += units
        if self.units < 1.0:
            return None
        cost, units = self.cost, self.units
        self.cost = self.units = 0.0
        return (math.log(cost / units), units if self.weighted else 1.0) if cost > 0 else None


Observation = tuple[float, float]  # (log cost per unit, units) of one group of minutes


def observations(rows: Sequence[tuple[float, float]], weighted: bool = True) -> list[Observation]:
    """The observations of consecutive minutes ``(cost, units)``, grouped from the first."""
    blocks = Blocks(weighted)
    out = []
    for cost, units in rows:
        x = blocks.add(cost, units)
        if x is not None:
            out.append(x)
    return out


@dataclasses.dataclass(frozen=True)
class Level:
    """A baseline's level: its units, mean (weighted by units, after winsorising) and the robust scale
    that winsorises both sides; all a window needs to know how far it shifted (:func:`shift`)."""

    units: float
    mean: float
    scale: float


@dataclasses.dataclass(frozen=True)
class Summary(Level):
    """A baseline's level, and its noise: the variance of one unit's log cost (floored) and the
    autocorrelation inflation (the integrated autocorrelation time)."""

    variance: float
    inflation: float


def _median(values: Sequence[float]) -> float:
    v = sorted(values)
    n = len(v)
    return v[n // 2] if n % 2 else (v[n // 2 - 1] + v[n // 2]) / 2


def columns(obs: Sequence[Observation]) -> tuple[list[float], list[float], list[float]]:
    """``obs`` as three columns: the log costs, the units, and the square roots of the units (what
    :func:`level_of` and :func:`shift_of` read; a detector keeps its observations so)."""
    us = [u for _, u in obs]
    return [x for x, _ in obs], us, list(map(math.sqrt, us))


def _weighted_sum(xs: Sequence[float], us: Sequence[float], roots: Sequence[float], scale: float | None,
                  center: float | None = None) -> float:
    """``sum(x * u)`` over the observations, each ``x`` winsorised at ``scale`` (None: raw): clipped to
    the sample's median (``center``, when known) +- ``WINSOR x scale / sqrt(u)`` (``roots``: the
    ``sqrt(u)``). A few very large tasks (the heavy tail) weigh as large ones, not as the whole
    sample; a shift of the whole sample is kept. The terms are those of ``min(max(x, lo), hi) * u``,
    added in order."""
    total: float
    if scale is None or scale <= 0:
        total = sum(map(operator.mul, xs, us))
        return total
    c = _median(xs) if center is None else center
    # min(max(x, c - h), c + h), knowing that c - h <= c + h
    clipped = [c - h if c - h > x else c + h if c + h < x else x
               for x, h in zip(xs, map(operator.truediv, itertools.repeat(WINSOR * scale), roots), strict=True)]
    total = sum(map(operator.mul, clipped, us))
    return total


def level(obs: Sequence[Observation]) -> Level | None:
    """The baseline's level (:class:`Level`, the first half of :func:`summary`, with the same
    numbers); None with fewer than two observations."""
    return level_of(*columns(obs))


def level_of(xs: Sequence[float], us: Sequence[float], roots: Sequence[float]) -> Level | None:
    """:func:`level` of observations in :func:`columns`."""
    if len(xs) < 2:
        return None
    center = _median(xs)
    deviations = map(operator.mul, map(abs, map(operator.sub, xs, itertools.repeat(center))), roots)
    scale = max(1.4826 * _median(list(deviations)), math.sqrt(MIN_VARIANCE))
    units = sum(us)
    return Level(units=units, mean=_weighted_sum(xs, us, roots, scale, center) / units, scale=scale)


def summary(obs: Sequence[Observation], known: Level | None = None) -> Summary | None:
    """The baseline's summary; None with fewer than two observations (its noise is unknown).
    ``known``: its :func:`level`, already computed.

    An observation of ``u`` units has variance ``variance / u`` (its units' costs averaged)."""
    n = len(obs)
    base = known if known is not None else level(obs)
    if base is None:
        return None
    # the noise of the raw observations (not winsorised): the tail stays in the variance
    raw_mean = sum(x * u for x, u in obs) / base.units
    dev = [(x - raw_mean) * math.sqrt(u) for x, u in obs]  # standardised: each of variance `variance`
    ss = sum(map(operator.mul, dev, dev))
    variance = ss / (n - 1)
    # the integrated autocorrelation time: 1 + 2 x the autocorrelations up to the first that is not
    # positive (at most MAX_LAG lags): how many observations one is worth less than independent ones
    inflation = 1.0
    for lag in range(1, min(MAX_LAG, n - 1) + 1):
        rho = sum(map(operator.mul, dev, dev[lag:])) / ss if ss > 0 else 0.0
        if rho <= 0:
            break
        inflation += 2 * rho
    return Summary(units=base.units, mean=base.mean, scale=base.scale, variance=max(variance, MIN_VARIANCE),
                   inflation=min(inflation, MAX_INFLATION))


def shift(after: Sequence[Observation], base: Level) -> tuple[float, float]:
    """``(units, shift)`` of ``after`` against ``base``: its weighted mean (winsorised at the baseline's
    scale, when it has at least three observations) minus the baseline's; ``after`` is not empty."""
    return shift_of(*columns(after), base)


def shift_of(xs: Sequence[float], us: Sequence[float], roots: Sequence[float], base: Level) -> tuple[float, float]:
    """:func:`shift` of observations in :func:`columns`."""
    units = sum(us)
    return units, _weighted_sum(xs, us, roots, base.scale if len(xs) >= 3 else None) / units - base.mean


def sprt(after: Sequence[Observation], base: Summary | None, ratio: float) -> tuple[float | None, float]:
    """``(ratio of geometric means after / before, log-likelihood ratio)``; ``(None, 0.0)`` when either
    side is unknown (no evidence either way). Both sides are winsorised alike.

    The LLR is the generalised one for H1: a shift of ``log(ratio)`` *or more* against H0: the
    LLR of the simple H1 at ``max(shift, log(ratio))``, so a change far past ``ratio`` is decided
    on far less evidence than one just at it."""
    if base is None or not after:
        return None, 0.0
    units, d = shift(after, base)
    variance = base.variance * base.inflation * (1.0 / units + 1.0 / base.units)
    d1 = max(math.log(ratio), d)
    d0 = NULL_SHARE * math.log(ratio)
    return math.exp(d), ((d - d0) ** 2 - (d - d1) ** 2) / (2 * variance)


def sign_test(after: Sequence[Observation], before: Sequence[Observation], inflation: float = 1.0
              ) -> tuple[float | None, float]:
    """``(ratio of the medians after / before, log-likelihood ratio that most observations after lie
    above the median before)``: a test of the *typical* unit, blind to the size of the tail (a few
    giant tasks are a few observations above the median, however large). The LLR is the binomial
    one, ``n KL(p || 1/2)`` for the share ``p`` above (0 when ``p <= 1/2``), over ``inflation``."""
    if len(before) < 2 or not after:
        return None, 0.0
    center = _median([x for x, _ in before])
    above = sum(1 for x, _ in after if x > center) + 0.5 * sum(1 for x, _ in after if x == center)
    n = len(after)
    share = above / n
    llr = 0.0
    if share > 0.5:
        llr = n * (share * math.log(2 * share) + ((1 - share) * math.log(2 * (1 - share)) if share < 1 else 0.0))
    return math.exp(_median([x for x, _ in after]) - center), llr / inflation


def threshold(alpha: float) -> float:
    """The LLR that decides, for error rate ``alpha``: ``log(1 / alpha)``."""
    return math.log(1.0 / alpha)
