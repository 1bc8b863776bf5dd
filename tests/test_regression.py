"""OLS (spec section 4) against numpy least squares and textbook standard errors."""

import math

import numpy as np
import pytest

from ctrain.probes.regression import FitKeys, ols, regression_points


def test_ols_equals_numpy_lstsq():
    rng = np.random.default_rng(0)
    x = rng.normal(size=50)
    y = 0.7 * x + 0.2 + rng.normal(scale=0.5, size=50)
    fit = ols(x, y)
    design = np.column_stack([np.ones_like(x), x])
    (intercept, slope), residuals, *_ = np.linalg.lstsq(design, y, rcond=None)
    sigma2 = residuals[0] / (len(x) - 2)
    se_intercept, se_slope = np.sqrt(np.diag(sigma2 * np.linalg.inv(design.T @ design)))
    assert fit.n == 50
    assert fit.slope == pytest.approx(slope, rel=1e-12)
    assert fit.intercept == pytest.approx(intercept, rel=1e-12)
    assert fit.r2 == pytest.approx(1 - residuals[0] / np.sum((y - y.mean()) ** 2), rel=1e-12)
    assert fit.slope_se == pytest.approx(se_slope, rel=1e-10)
    assert fit.intercept_se == pytest.approx(se_intercept, rel=1e-10)


def test_non_finite_points_are_dropped_and_counted_out():
    x = np.array([0.0, 1.0, 2.0, np.nan, 3.0])
    y = np.array([1.0, 3.0, 5.0, 100.0, np.inf])
    fit = ols(x, y)
    assert fit.n == 3 and fit.slope == pytest.approx(2.0) and fit.r2 == pytest.approx(1.0)


@pytest.mark.parametrize("x", [[1.0, 2.0], [2.0, 2.0, 2.0, 2.0]])
def test_undefined_fits_are_nan_with_their_size(x):
    fit = ols(np.array(x), np.arange(len(x), dtype=float))
    assert fit.n == len(x) and math.isnan(fit.r2) and math.isnan(fit.slope)


def test_metrics_are_flat_and_named():
    fit = ols(np.arange(5.0), np.arange(5.0) ** 2)
    metrics = fit.metrics(FitKeys("r", "b", "b_se", "i", "i_se", "n"))
    assert metrics == {"r": fit.r2, "b": fit.slope, "b_se": fit.slope_se, "i": fit.intercept, "i_se": fit.intercept_se, "n": 5.0}


def test_type_mean_points():
    x = np.array([1.0, 2.0, 1.0, 3.0, 2.0])
    y = np.array([1.0, 10.0, 3.0, 7.0, 20.0])
    types = np.array(["a", "b", "a", "c", "b"], dtype=object)
    px, py = regression_points(x, y, types, "type")
    np.testing.assert_array_equal(px, [1.0, 2.0, 3.0])
    np.testing.assert_array_equal(py, [2.0, 15.0, 7.0])
    ox, oy = regression_points(x, y, types, "occurrence")
    np.testing.assert_array_equal(ox, x)
    np.testing.assert_array_equal(oy, y)
    with pytest.raises(ValueError):
        regression_points(x, y, types, "sentence")
