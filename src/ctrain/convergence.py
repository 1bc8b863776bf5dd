"""When has a training objective stopped moving: the plateau test `ObjectiveConvergence` applies.

A pure function of the objective's history, so that a test can check it on sequences with a known answer.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def relative_range(values: Sequence[float], window: int) -> float:
    """(max - min) / |mean| of the last `window` values: how far the objective moved over the window (inf if too short).

    The range, not the change between the ends: an objective that oscillates has not converged even where its
    first and last values agree.
    """
    if window < 2:
        raise ValueError(f"a convergence window needs at least 2 evaluations, got {window}")
    if len(values) < window:
        return float("inf")
    last = np.asarray(values[-window:], dtype=np.float64)
    scale = abs(float(last.mean()))
    spread = float(last.max() - last.min())
    if scale == 0.0:
        return 0.0 if spread == 0.0 else float("inf")
    return spread / scale


def has_converged(values: Sequence[float], window: int, tolerance: float) -> bool:
    """True when the last `window` evaluations of the objective lie within `tolerance` of each other, relatively."""
    return relative_range(values, window) < tolerance
