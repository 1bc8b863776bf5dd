"""Figure helpers shared by every report: one canvas size, line figures of labelled curves, atomic saving."""

from __future__ import annotations

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
    """One line per labelled (x, value) table; None when no curve has a value."""
    figure = new_figure()
    axes = figure.add_subplot()
    drawn = 0
    for label, curve in curves.items():
        curve = curve.dropna(subset=[key])
        if curve.empty:
            continue
        axes.plot(curve[x], curve[key], marker="o" if len(curve) < 30 else None, markersize=3, label=label)
        drawn += 1
    if not drawn:
        return None
    axes.set_xlabel(X_AXIS_LABELS[x])
    axes.set_ylabel(y_label)
    axes.set_title(title, fontsize=10)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, title_fontsize=8)
    return figure


def curve_of(frame: pd.DataFrame, column: str) -> pd.DataFrame:
    return frame[["step", "examples", column]].rename(columns={column: "value"}) if column in frame else frame.iloc[:0].assign(value=[])


def save_figure(figure: Figure, path: str | Path, dpi: float | None = None) -> Path:
    """Write ``figure`` to ``path`` atomically (format from the suffix)."""
    path = Path(path)
    with atomic_path(path) as temporary:
        FigureCanvasAgg(figure)
        figure.savefig(temporary, format=path.suffix.lstrip(".") or "png", dpi=dpi)
    return path
