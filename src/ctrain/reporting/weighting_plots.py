"""Figures of the word-weighting probe (Agg backend, no pyplot state, atomic writes).

A reader (the training loop, a dashboard) may load a figure while the next probe
rewrites it, so every file is written to a temporary file in the same directory and
moved into place (`ctrain.fileio.atomic_path`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from ctrain.probes.weighting import Quantity, WeightingResult
from ctrain.probes.weighting.regression import ols
from ctrain.reporting.figures import save_figure

LABELS = {"kl": "KL(w)", "dkl": "dKL(w)", "selfinfo": "I(w) = -log P(w)"}


def plot_weight_vs_information(
    result: WeightingResult, path: str | Path, method: str = "ig", quantity: Quantity = "kl", model: str = "model"
) -> Path:
    """Scatter of ``c'`` against information with its OLS line; the points are exactly those of the metric."""
    x, y = result.regression_data(method, quantity)
    fit = ols(x, y)
    figure = Figure(figsize=(5, 4), layout="constrained")
    axes = figure.add_subplot()
    axes.scatter(x, y, s=6, alpha=0.4, linewidths=0)
    if math.isfinite(fit.slope):
        line = np.array([x.min(), x.max()])
        axes.plot(line, fit.intercept + fit.slope * line, color="C3")
    axes.set_xlabel(LABELS[quantity])
    axes.set_ylabel(f"normalised {method.upper()} weight c'")
    axes.set_title(
        f"{model}: {method.upper()} weight vs {LABELS[quantity]}\n"
        f"R^2 x 100 = {100 * fit.r2:.1f}, beta x 100 = {100 * fit.slope:.1f}, n = {fit.n} points",
        fontsize=9,
    )
    return save_figure(figure, path)


def plot_sentence_weights(
    result: WeightingResult, path: str | Path, sentences: int | Sequence[int] = 4, method: str = "ig", model: str = "model"
) -> Path:
    """Per-sentence bars of ``c'`` next to ``KL`` normalised the same way (divided by its sentence mean)."""
    units = result.units
    available = np.unique(units.sentence).tolist()
    chosen = available[:sentences] if isinstance(sentences, int) else list(sentences)
    figure = Figure(figsize=(8, 2.2 * max(len(chosen), 1)), layout="constrained")
    for row, sentence in enumerate(chosen, 1):
        rows = units.sentence == sentence
        kl = units.kl[rows]
        finite = np.isfinite(kl)
        kl_normalised = kl / kl[finite].mean() if finite.any() else kl
        positions = np.arange(rows.sum())
        axes = figure.add_subplot(len(chosen), 1, row)
        axes.bar(positions - 0.2, units.weights[method][rows], width=0.4, label=f"{method.upper()} c'")
        axes.bar(positions + 0.2, kl_normalised, width=0.4, label="KL / sentence mean")
        axes.set_xticks(positions, units.token[rows].tolist(), rotation=45, ha="right", fontsize=8)
        axes.set_title(f"sentence {sentence}", fontsize=9)
        axes.set_ylabel("weight / sentence mean")
        if row == 1:
            axes.legend(fontsize=8)
    figure.suptitle(f"{model}: {method.upper()} weight c' and KL(w) of each word, both divided by their sentence mean", fontsize=10)
    return save_figure(figure, path)
