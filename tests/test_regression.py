"""OLS (docs/metrics.md, "Keys") against numpy least squares and textbook standard errors."""

import math

import numpy as np
import pytest

from ctrain.probes.weighting.regression import POINTS, FitKeys, bootstrap_fit, ols, regression_points, sentence_draws


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


def _synthetic(num_sentences: int, seed: int = 0, per_sentence: int = 6, noise: float = 1.0):
    """Sentences of a few occurrences with y = 2 + 0.5 x + noise and types shared across sentences."""
    rng = np.random.default_rng(seed)
    sentence = np.repeat(np.arange(num_sentences), per_sentence)
    types = rng.integers(0, 40, size=len(sentence))
    x = types * 0.1 + 1.0  # a per-type quantity, as KL is
    y = 2.0 + 0.5 * x + noise * rng.normal(size=len(x))
    return x, y, types, sentence


def _brute_force(x, y, types, sentence, num_sentences, points, resamples, confidence, seed):
    r2s, slopes = [], []
    for row in sentence_draws(num_sentences, resamples, seed):
        take = np.concatenate([np.flatnonzero(sentence == s) for s in row])
        fit = ols(*regression_points(x[take], y[take], types[take], points))
        r2s.append(fit.r2)
        slopes.append(fit.slope)
    tail = 50 * (1 - confidence), 50 * (1 + confidence)
    return (*np.nanpercentile(r2s, tail), *np.nanpercentile(slopes, tail))


@pytest.mark.parametrize("points", POINTS)
def test_bootstrap_equals_a_brute_force_loop_of_refits(points):
    x, y, types, sentence = _synthetic(12)
    x[types == types[3]] = np.nan  # a type without information: dropped, as ols drops it
    interval = bootstrap_fit(x, y, sentence, 13, points=points, types=types, resamples=200, confidence=0.9, seed=7)  # sentence 12 has no points
    expected = _brute_force(x, y, types, sentence, 13, points, 200, 0.9, 7)
    got = (interval.r2_low, interval.r2_high, interval.slope_low, interval.slope_high)
    np.testing.assert_allclose(got, expected, rtol=1e-8, atol=1e-12)
    again = bootstrap_fit(x, y, sentence, 13, points=points, types=types, resamples=200, confidence=0.9, seed=7)
    assert again == interval  # same seed, same interval
    assert bootstrap_fit(x, y, sentence, 13, points=points, types=types, resamples=200, confidence=0.9, seed=8) != interval


@pytest.mark.parametrize("points", POINTS)
def test_bootstrap_interval_contains_the_estimate_and_narrows_with_more_sentences(points):
    widths = []
    for num_sentences in (20, 80, 320):
        x, y, types, sentence = _synthetic(num_sentences, seed=1)
        fit = ols(*regression_points(x, y, types, points))
        interval = bootstrap_fit(x, y, sentence, num_sentences, points=points, types=types, resamples=500, seed=0)
        assert interval.slope_low <= fit.slope <= interval.slope_high
        if points == "occurrence":  # type means of a resample are noisier than the data's, so their R^2 runs low
            assert interval.r2_low <= fit.r2 <= interval.r2_high
        widths.append((interval.r2_high - interval.r2_low, interval.slope_high - interval.slope_low))
    widths = np.array(widths)
    assert (np.diff(widths, axis=0) < 0).all(), widths
    assert interval.slope_low < 0.5 < interval.slope_high  # the known slope


def test_bootstrap_of_too_few_points_is_nan_and_metrics_use_the_ci_keys():
    interval = bootstrap_fit(np.array([1.0, 2.0]), np.array([1.0, 3.0]), np.array([0, 1]), 2, resamples=50)
    assert all(np.isnan(v) for v in (interval.r2_low, interval.r2_high, interval.slope_low, interval.slope_high))
    keys = FitKeys("a/r2", "a/beta", "a/beta_se", "a/i", "a/i_se", "a/n", None, "a/r2_ci_low", "a/r2_ci_high", "a/beta_ci_low", "a/beta_ci_high")
    assert set(interval.metrics(keys)) == {"a/r2_ci_low", "a/r2_ci_high", "a/beta_ci_low", "a/beta_ci_high"}
    assert interval.metrics(FitKeys("r", "b", "bs", "i", "is", "n")) == {}
