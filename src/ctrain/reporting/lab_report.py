"""The Theorem-1 lab's part of a sweep report (`ctrain report` calls it for sweeps whose runs fit the theorem).

One table of final values per setting (slope, R^2 and Spearman of ``0.5 ||w||^2`` on KL, dKL and
-log P for the input rows and the type-averaged last-layer states, IG-on-KL beside them, and the
final training loss), written into the page and as ``theorem_lab.csv``, and one figure per
(target, quantity, statistic) with a curve per setting against the optimizer step.
"""

from __future__ import annotations

import math

import pandas as pd
from matplotlib.figure import Figure

from ctrain.probes.weighting import FIT_KEYS, THEOREM_KEYS
from ctrain.reporting.figures import QUANTITY_LABELS, XAxis, curve_of, line_figure

TARGET_LABELS = {"input": "input rows", "last_type": "last-layer states (type means)"}
STATISTIC_LABELS = {"slope": "slope", "r2": "R^2", "spearman": "Spearman"}
CAPTION = "Theorem-1 lab: fits of 0.5 ||w||^2 on each quantity at the last probe, per setting"


def table_columns() -> dict[str, str]:
    """Column words -> metric key, in the table's order."""
    columns = {}
    for target, target_words in TARGET_LABELS.items():
        for quantity, quantity_words in QUANTITY_LABELS.items():
            keys = THEOREM_KEYS[target, quantity]
            for statistic, words in STATISTIC_LABELS.items():
                columns[f"{target_words}: {words} on {quantity_words}"] = getattr(keys, statistic)
    columns["IG on KL(w): R^2"] = FIT_KEYS["ig", "kl"].r2
    columns["IG on KL(w): beta"] = FIT_KEYS["ig", "kl"].slope
    columns["final training loss"] = "train/loss"
    return columns


def has_theorem_fits(runs: dict[str, pd.DataFrame]) -> bool:
    key = THEOREM_KEYS["input", "kl"].slope
    return any(key in frame and frame[key].notna().any() for frame in runs.values())


def _last(frame: pd.DataFrame, column: str) -> float:
    series = frame[column].dropna() if column in frame else pd.Series(dtype=float)
    return float(series.iloc[-1]) if not series.empty else math.nan


def _ordered(runs: dict[str, pd.DataFrame], order: list[str]) -> list[str]:
    """Run labels, the settings in `order` first, in that order (the sweep file's: the exact setting first)."""
    rank = {name: i for i, name in enumerate(order)}
    return sorted(runs, key=lambda label: (rank.get(_setting(label), len(rank)), label))


def table_rows(runs: dict[str, pd.DataFrame], order: list[str] = ()) -> list[dict]:
    """One row per setting (the run label without `config=`), in `order` (see `_ordered`)."""
    settings = _ordered(runs, order)
    columns = table_columns()
    return [
        {"setting": _setting(label), "last step": int(runs[label]["step"].max())}
        | {words: _last(runs[label], key) for words, key in columns.items()}
        for label in settings
    ]


def _setting(label: str) -> str:
    return label.removeprefix("config=")


def figures(runs: dict[str, pd.DataFrame], title: str, x: XAxis, order: list[str] = ()) -> dict[str, Figure]:
    """A figure per (target, quantity, statistic) that some run measured, a curve per setting (in `order`).

    Slopes differ by orders of magnitude between settings (the norms' scale is free under cosine or
    normalisation): their axis is symmetric-log, with the theorem's slope 1 dotted."""
    drawn = {}
    curves_by_setting = {_setting(label): runs[label] for label in _ordered(runs, order)}
    for target, target_words in TARGET_LABELS.items():
        for quantity, quantity_words in QUANTITY_LABELS.items():
            for statistic, words in STATISTIC_LABELS.items():
                key = getattr(THEOREM_KEYS[target, quantity], statistic)
                y_label = f"{words} of 0.5||w||^2 on {quantity_words}, {target_words}"
                curves = {name: curve_of(frame, key) for name, frame in curves_by_setting.items()}
                figure = line_figure(curves, y_label, f"{y_label}\n{title}", x)
                if figure is not None:
                    drawn[f"theorem_{target}_{quantity}_{statistic}"] = _legend_outside(figure)
                    if statistic == "slope":
                        figure.axes[0].set_yscale("symlog", linthresh=1.0)
                        figure.axes[0].axhline(1.0, color="black", linestyle=":", linewidth=1)
    return drawn


def _legend_outside(figure: Figure) -> Figure:
    """Many settings: dashed and dotted lines once the 10 colours are used, the legend right of the axes."""
    axes = figure.axes[0]
    for index, line in enumerate(axes.lines):
        line.set_linestyle(("-", "--", ":")[index // 10 % 3])
    axes.legend(
        fontsize=7,
        title="setting",
        title_fontsize=7,
        loc="center left",
        bbox_to_anchor=(1.01, 0.5),
    )
    figure.set_size_inches(8.4, 4.4)
    return figure


def csv_text(rows: list[dict]) -> str:
    """The table as CSV, for copying numbers."""
    return pd.DataFrame(rows).to_csv(index=False, float_format="%.6g")
