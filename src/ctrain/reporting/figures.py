"""Figure helpers shared by every report: one canvas size, line figures of labelled curves, atomic saving."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Literal

import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ctrain.fileio import atomic_path

XAxis = Literal["step", "examples"]
X_AXIS_LABELS = {"step": "optimizer step", "examples": "training examples seen"}
METHOD_LABELS = {"ig": "IG", "shap": "SHAP"}
QUANTITY_LABELS = {"kl": "KL(w)", "dkl": "dKL(w)", "selfinfo": "-log P(w)"}

def new_figure() -> Figure:
    figure = Figure(figsize=(6.4, 4.0), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def line_figure(curves: dict[str, pd.DataFrame], y_label: str, title: str, x: XAxis, key: str = "value") -> Figure | None:
    """One line per labelled (x, value) table, shaded between its `low` and `high` columns where it has them; None when
    no curve has a value."""
    return panel_figure({y_label: curves}, title, x, key)


def panel_figure(panels: dict[str, dict[str, pd.DataFrame]], title: str, x: XAxis, key: str = "value") -> Figure | None:
    """Side-by-side panels (y-axis label -> labelled curves) sharing the x-axis, drawn as `line_figure` draws one (the
    same label, the same colour in every panel); None when no curve of any panel has a value."""
    figure = new_figure() if len(panels) == 1 else Figure(figsize=(6.4 * len(panels), 4.0), layout="constrained")
    FigureCanvasAgg(figure)
    grid = figure.subplots(1, len(panels), squeeze=False)[0]
    drawn = 0
    for axes, (y_label, curves) in zip(grid, panels.items()):
        for index, (label, curve) in enumerate(curves.items()):
            curve = curve.dropna(subset=[key])
            if curve.empty:
                continue
            colour = f"C{index % 10}"
            axes.plot(curve[x], curve[key], marker="o" if len(curve) < 30 else None, markersize=3, label=label, color=colour)
            if {"low", "high"} <= set(curve.columns):  # a confidence interval: a shaded band in the line's colour
                band = curve.dropna(subset=["low", "high"])
                if not band.empty:
                    axes.fill_between(band[x], band["low"], band["high"], color=colour, alpha=0.2, linewidth=0)
            drawn += 1
        axes.set_xlabel(X_AXIS_LABELS[x])
        axes.set_ylabel(y_label)
        axes.grid(alpha=0.3)
        if axes.lines:
            axes.legend(fontsize=8, title_fontsize=8)
    if not drawn:
        return None
    if len(panels) == 1:
        grid[0].set_title(title, fontsize=10)
    else:
        figure.suptitle(title, fontsize=10)
    return figure


def curve_of(frame: pd.DataFrame, column: str) -> pd.DataFrame:
    """(step, examples, value) of `column`, with `low` and `high` from its `_ci_low` / `_ci_high` columns where they exist."""
    if column not in frame:
        return frame.iloc[:0].assign(value=[])
    curve = frame[["step", "examples", column]].rename(columns={column: "value"})
    if f"{column}_ci_low" in frame and f"{column}_ci_high" in frame:
        curve = curve.assign(low=frame[f"{column}_ci_low"], high=frame[f"{column}_ci_high"])
    return curve


def seed_band(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """The seeds' mean of every metric at each step, with `_ci_low` / `_ci_high` the lowest and highest seed (replacing
    a single run's bootstrap interval: the band is the spread over seeds)."""
    stacked = pd.concat(frames, ignore_index=True)
    metrics = [column for column in stacked.select_dtypes("number").columns if column != "step" and not column.endswith(("_ci_low", "_ci_high"))]
    by_step = stacked.groupby("step")[metrics]
    band = pd.concat([by_step.mean(), by_step.min().add_suffix("_ci_low"), by_step.max().add_suffix("_ci_high")], axis=1)
    return band.copy().reset_index()  # copy: one block, not one per column (pandas warns on every later insert)


def log_x_axes(figures: Iterable[Figure]) -> None:
    """Every axes of `figures` on a symmetric-log x-axis, linear below 1 (step 0 stays on the axis)."""
    for figure in figures:
        for axes in figure.axes:
            axes.set_xscale("symlog", linthresh=1)
            axes.set_xlabel(f"{axes.get_xlabel()} (log scale)")


def save_figure(figure: Figure, path: str | Path, dpi: float | None = None) -> Path:
    """Write ``figure`` to ``path`` atomically (format from the suffix)."""
    path = Path(path)
    with atomic_path(path) as temporary:
        FigureCanvasAgg(figure)
        figure.savefig(temporary, format=path.suffix.lstrip(".") or "png", dpi=dpi)
    return path
