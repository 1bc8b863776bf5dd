"""OLS of word weights on information (probe spec section 4), also used for Theorem 1.

Decisions where the spec is open:

- Non-finite points (e.g. NaN KL of a type without context) are dropped before the
  fit; ``n`` counts the points actually used.
- With fewer than 3 points or a constant regressor the fit is undefined: every value
  is NaN and ``n`` still says how many points there were.
- Type-mean points (``points="type"``) average ``y`` over the occurrences of a type;
  ``x`` is a per-type quantity and is the same for all of them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import statsmodels.api as sm
from scipy import stats

Points = Literal["occurrence", "type"]
POINTS: tuple[str, ...] = ("occurrence", "type")


@dataclass(frozen=True)
class FitKeys:
    """The metric key of each field of one fit, written out in full where the fit is logged."""

    r2: str
    slope: str
    slope_se: str
    intercept: str
    intercept_se: str
    n: str
    spearman: str | None = None

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
    if points == "occurrence":
        return np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if points != "type":
        raise ValueError(f"unknown points '{points}': choose one of {', '.join(POINTS)}")
    _, first, inverse = np.unique(types, return_index=True, return_inverse=True)
    means = np.bincount(inverse, weights=y) / np.bincount(inverse)
    return np.asarray(x, dtype=np.float64)[first], means
