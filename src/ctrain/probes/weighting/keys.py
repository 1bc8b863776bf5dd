"""Every metric key the word-weighting probe logs, generated from one table (docs/metrics.md lists each one).

A column of metrics.csv is ``weighting/<fit>_<statistic>``: ``FIT_KEYS`` holds the weight fits
(``<method>_<quantity>``: ``ig_kl``, ``shap_selfinfo``, ...) with their bootstrap intervals,
``THEOREM_KEYS`` the Theorem-1 fits (``theorem_<target>`` on KL, ``theorem_<target>_<quantity>``
on the others: KL's keys kept their first names). A grep for a whole key lands in docs/metrics.md
(tests/test_weighting_probe.py checks that it lists every key generated here).
"""

from __future__ import annotations

from typing import Literal

from ctrain.probes.weighting.regression import FitKeys

PREFIX = "weighting/"
METHODS: tuple[str, ...] = ("ig", "shap")
Quantity = Literal["kl", "dkl", "selfinfo"]
QUANTITIES: tuple[str, ...] = ("kl", "dkl", "selfinfo")
THEOREM_TARGETS: tuple[str, ...] = ("input", "last", "last_type")


def fit_keys(fit: str, slope: str, spearman: bool = False, intervals: bool = False) -> FitKeys:
    """The keys of the fit named ``fit`` (``weighting/<fit>_r2``, ...), its slope called ``slope``."""

    def key(statistic: str) -> str:
        return f"{PREFIX}{fit}_{statistic}"

    ci = {}
    if intervals:
        ci = {"r2_ci_low": key("r2_ci_low"), "r2_ci_high": key("r2_ci_high")}
        ci |= {"slope_ci_low": key(f"{slope}_ci_low"), "slope_ci_high": key(f"{slope}_ci_high")}
    return FitKeys(
        key("r2"), key(slope), key(f"{slope}_se"), key("intercept"), key("intercept_se"), key("n"),
        key("spearman") if spearman else None, **ci,
    )  # fmt: skip


FIT_KEYS: dict[tuple[str, str], FitKeys] = {
    (method, quantity): fit_keys(f"{method}_{quantity}", "beta", intervals=True) for method in METHODS for quantity in QUANTITIES
}
"""(method, quantity) -> keys of the OLS of ``c'`` on that quantity (docs/metrics.md, "Keys"), with the bootstrap interval
of R^2 and beta over probe sentences (``*_ci_low`` / ``*_ci_high``; logged when ``bootstrap_resamples > 0``)."""

THEOREM_KEYS: dict[tuple[str, str], FitKeys] = {
    (target, quantity): fit_keys(f"theorem_{target}" + ("" if quantity == "kl" else f"_{quantity}"), "slope", spearman=True)
    for target in THEOREM_TARGETS
    for quantity in QUANTITIES
}
"""(Theorem-1 target, quantity) -> keys of the OLS of ``0.5 ||w||^2`` on that quantity, with Spearman (docs/metrics.md,
"Keys"; KL keeps its original names)."""

NUM_SENTENCES = "weighting/num_sentences"
NUM_UNITS = "weighting/num_units"
KL_INCLUDE_SELF = "weighting/kl_include_self"
THEOREM_INPUT_HALF_NORM_MEAN = "weighting/theorem_input_half_norm_mean"
IG_COMPLETENESS_ERROR_MEAN = "weighting/ig_completeness_error_mean"
IG_COMPLETENESS_ERROR_MAX = "weighting/ig_completeness_error_max"
IG_COMPLETENESS_ERROR_N = "weighting/ig_completeness_error_n"
IG_COMPLETENESS_OVER_TOL_SHARE = "weighting/ig_completeness_over_tol_share"
IG_EVALUATIONS_MEAN = "weighting/ig_evaluations_mean"
IG_EVALUATIONS_MAX = "weighting/ig_evaluations_max"
