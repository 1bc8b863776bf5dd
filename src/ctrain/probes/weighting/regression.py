"""OLS of word weights on information (docs/metrics.md, "Keys"), also used for Theorem 1.

Decisions the papers leave open:

- Non-finite points (e.g. NaN KL of a type without context) are dropped before the
  fit; ``n`` counts the points actually used.
- With fewer than 3 points or a constant regressor the fit is undefined: every value
  is NaN and ``n`` still says how many points there were.
- Type-mean points (``points="type"``) average ``y`` over the occurrences of a type;
  ``x`` is a per-type quantity and is the same for all of them.
- Confidence intervals (``bootstrap_fit``) resample probe *sentences* with replacement,
  not points: the occurrences of one sentence share its context and are not independent.
  A resample takes every point of each drawn sentence (as often as it was drawn) and
  refits the OLS; with type points the type means are recomputed from the drawn
  sentences' occurrences. The interval is the percentile interval of the refitted
  R^2 and slope; resamples whose fit is undefined (fewer than 3 points, constant
  ``x``) are left out of the percentiles. No attribution is recomputed.
  With type points the interval is biased: a resample loses the types of the sentences it
  does not draw, mostly types seen in one sentence, whose single-occurrence means are the
  noisiest points, so R^2 and slope of a resample run high and the interval can leave out
  the estimate (docs/kurita_setup.md, "Which choice moves SHAP").
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import statsmodels.api as sm
from scipy import stats

from ctrain.runtime import check_choice

Points = Literal["occurrence", "type"]
POINTS: tuple[str, ...] = ("occurrence", "type")


@dataclass(frozen=True)
class FitKeys:
    """The metric key of each field of one fit, written out in full where the fit is logged.

    The ``*_ci_*`` keys name the bootstrap interval of R^2 and slope (``bootstrap_fit``) where the fit has one."""

    r2: str
    slope: str
    slope_se: str
    intercept: str
    intercept_se: str
    n: str
    spearman: str | None = None
    r2_ci_low: str | None = None
    r2_ci_high: str | None = None
    slope_ci_low: str | None = None
    slope_ci_high: str | None = None

    def names(self) -> tuple[str, ...]:
        """Every key of the fit (Spearman's where there is one)."""
        return tuple(name for name in vars(self).values() if name is not None)


@dataclass(frozen=True)
class Regression:
    """``y = intercept + slope x``: R^2, coefficients, their standard errors, the sample size, and Spearman's
    rank correlation of the same points when it was asked for (NaN otherwise)."""

    r2: float
    slope: float
    intercept: float
    slope_se: float
    intercept_se: float
    n: int
    spearman: float = math.nan

    def metrics(self, keys: FitKeys) -> dict[str, float]:
        """The fit as flat metrics under ``keys`` (Spearman only where ``keys`` name it)."""
        spearman = {} if keys.spearman is None else {keys.spearman: float(self.spearman)}
        return spearman | {
            keys.r2: float(self.r2),
            keys.slope: float(self.slope),
            keys.slope_se: float(self.slope_se),
            keys.intercept: float(self.intercept),
            keys.intercept_se: float(self.intercept_se),
            keys.n: float(self.n),
        }


def ols(x: np.ndarray, y: np.ndarray, spearman: bool = False) -> Regression:
    """OLS with intercept via statsmodels (non-finite points dropped); with ``spearman``, also the rank correlation."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    n = len(x)
    if n < 3 or np.ptp(x) == 0:
        return Regression(math.nan, math.nan, math.nan, math.nan, math.nan, n)
    fit = sm.OLS(y, sm.add_constant(x, has_constant="add")).fit()
    rank = float(stats.spearmanr(x, y).statistic) if spearman else math.nan
    return Regression(
        r2=float(fit.rsquared),
        slope=float(fit.params[1]),
        intercept=float(fit.params[0]),
        slope_se=float(fit.bse[1]),
        intercept_se=float(fit.bse[0]),
        n=n,
        spearman=rank,
    )


def regression_points(x: np.ndarray, y: np.ndarray, types: np.ndarray, points: Points) -> tuple[np.ndarray, np.ndarray]:
    """The points of the fit: one per occurrence, or one per type with ``y`` averaged over its occurrences."""
    check_choice(points, Points, "points")
    if points == "occurrence":
        return np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    _, first, inverse = np.unique(types, return_index=True, return_inverse=True)
    means = np.bincount(inverse, weights=y) / np.bincount(inverse)
    return np.asarray(x, dtype=np.float64)[first], means


@dataclass(frozen=True)
class Interval:
    """Percentile bootstrap interval of R^2 and of the slope (NaN where no resample gave a defined fit)."""

    r2_low: float
    r2_high: float
    slope_low: float
    slope_high: float
    resamples: int

    def metrics(self, keys: FitKeys) -> dict[str, float]:
        """The interval as flat metrics under the ``*_ci_*`` keys of ``keys`` (none where ``keys`` has none)."""
        pairs = ((keys.r2_ci_low, self.r2_low), (keys.r2_ci_high, self.r2_high),
                 (keys.slope_ci_low, self.slope_low), (keys.slope_ci_high, self.slope_high))  # fmt: skip
        return {key: float(value) for key, value in pairs if key is not None}


def sentence_draws(num_sentences: int, resamples: int, seed: int) -> np.ndarray:
    """``(resamples, num_sentences)`` sentence indices drawn with replacement; row ``r`` is resample ``r``."""
    return np.random.default_rng(seed).integers(0, num_sentences, size=(resamples, num_sentences))


def _draw_counts(draws: np.ndarray, num_sentences: int) -> np.ndarray:
    """How often each sentence was drawn in each resample, ``(resamples, num_sentences)``."""
    resamples = len(draws)
    flat = (draws + num_sentences * np.arange(resamples)[:, None]).ravel()
    return np.bincount(flat, minlength=resamples * num_sentences).reshape(resamples, num_sentences).astype(np.float64)


def _fits_from_moments(n, sx, sy, sxx, sxy, syy) -> tuple[np.ndarray, np.ndarray]:
    """R^2 and slope of OLS with intercept from (weighted) sums; NaN where ``ols`` would be undefined."""
    with np.errstate(divide="ignore", invalid="ignore"):
        cxx = sxx - sx * sx / n
        cxy = sxy - sx * sy / n
        cyy = syy - sy * sy / n
        defined = (n >= 3) & (cxx > 1e-12 * np.maximum(sxx, 1e-300))
        slope = np.where(defined, cxy / cxx, np.nan)
        r2 = np.where(defined, np.where(cyy > 0, cxy * cxy / (cxx * cyy), 0.0), np.nan)
    return r2, slope


def _percentiles(values: np.ndarray, confidence: float) -> tuple[float, float]:
    values = values[np.isfinite(values)]
    if not len(values):
        return math.nan, math.nan
    low, high = np.percentile(values, [50 * (1 - confidence), 50 * (1 + confidence)])
    return float(low), float(high)


def bootstrap_fit(
    x: np.ndarray,
    y: np.ndarray,
    sentence: np.ndarray,
    num_sentences: int,
    *,
    points: Points = "occurrence",
    types: np.ndarray | None = None,
    resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Interval:
    """Percentile interval of R^2 and slope of the OLS of ``y`` on ``x`` under a bootstrap of sentences.

    ``sentence[i]`` is the probe sentence (``0 .. num_sentences - 1``) of occurrence ``i``; ``types[i]``
    its type (needed for ``points="type"``). Each resample draws ``num_sentences`` sentences with
    replacement (``sentence_draws``), takes all occurrences of the drawn sentences, builds the points
    as ``regression_points`` does and refits. Vectorised: a resample is a weighting of the sentences
    by how often they were drawn, so the refit needs only weighted sums (identical to refitting the
    duplicated points up to float rounding).
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    check_choice(points, Points, "points")
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    sentence = np.asarray(sentence, dtype=np.int64)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y, sentence = x[keep], y[keep], sentence[keep]
    if resamples < 1 or num_sentences < 1:
        return Interval(math.nan, math.nan, math.nan, math.nan, 0)
    counts = _draw_counts(sentence_draws(num_sentences, resamples, seed), num_sentences)
    if points == "occurrence":
        moments = np.zeros((num_sentences, 6))
        np.add.at(moments, sentence, np.stack([np.ones_like(x), x, y, x * x, x * y, y * y], axis=1))
        n, sx, sy, sxx, sxy, syy = (counts @ moments).T
    else:
        if types is None:
            raise ValueError("points='type' needs the type of every occurrence")
        from scipy import sparse

        _, first, inverse = np.unique(np.asarray(types)[keep], return_index=True, return_inverse=True)
        shape = (num_sentences, len(first))
        occurrences = sparse.csr_matrix((np.ones_like(y), (sentence, inverse)), shape=shape)
        sums = sparse.csr_matrix((y, (sentence, inverse)), shape=shape)
        drawn = np.asarray((occurrences.T @ counts.T).T)  # occurrences of each type per resample
        with np.errstate(divide="ignore", invalid="ignore"):
            means = np.where(drawn > 0, np.asarray((sums.T @ counts.T).T) / drawn, 0.0)
        present = (drawn > 0).astype(np.float64)
        xt = x[first]
        n, sx, sy = present.sum(1), present @ xt, means.sum(1)
        sxx, sxy, syy = present @ (xt * xt), means @ xt, (means * means).sum(1)
    r2, slope = _fits_from_moments(n, sx, sy, sxx, sxy, syy)
    return Interval(*_percentiles(r2, confidence), *_percentiles(slope, confidence), resamples)
