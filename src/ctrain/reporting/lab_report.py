"""The Theorem-1 lab's part of a sweep report (`ctrain report` calls it for sweeps whose runs fit the theorem).

One table of final values per run (slope, R^2 and Spearman of ``0.5 ||w||^2`` on KL, dKL and
-log P for the input rows and the type-averaged last-layer states, IG-on-KL beside them, where the
objective converged, and the final training loss), written into the page and as ``theorem_lab.csv``;
with several seeds a table per setting (mean and range over seeds); and one figure per
(target, quantity, statistic) with a curve per setting against the optimizer step: the mean over
seeds, shaded between the lowest and highest seed, beside reference curves (a peer such as gensim's
word2vec, ``benchmarks/lab/lab_peer.py plot``) drawn in black.
"""

from __future__ import annotations

import math

import pandas as pd
from matplotlib.figure import Figure

from ctrain.probes.weighting.keys import FIT_KEYS, THEOREM_INPUT_HALF_NORM_MEAN, THEOREM_KEYS
from ctrain.reporting.figures import QUANTITY_LABELS, XAxis, curve_of, line_figure, seed_band
from ctrain.sweeps import parse_run_label, run_label

TARGET_LABELS = {"input": "input rows", "last_type": "last-layer states (type means)"}
STATISTIC_LABELS = {"slope": "slope", "r2": "R^2", "spearman": "Spearman"}
CAPTION = "Theorem-1 lab: fits of 0.5 ||w||^2 on each quantity at the last probe, per run"
SEEDS_CAPTION = "Theorem-1 lab per setting: mean over seeds (lowest, highest)"
CONVERGED_STEP, OBJECTIVE = "convergence/converged_step", "convergence/objective"
SEED_KEY = "seed_everything"
# The per-setting table's columns: the central fits and whether the objective converged.
SEED_SUMMARY = ("input rows: Spearman on KL(w)", "input rows: slope on KL(w)", "input rows: R^2 on KL(w)",
                "input rows: Spearman on -log P(w)", "IG on KL(w): R^2")  # fmt: skip


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
    columns["input rows: mean 0.5 ||w||^2"] = THEOREM_INPUT_HALF_NORM_MEAN
    columns["objective converged at step"] = CONVERGED_STEP
    columns["objective on fixed batches"] = OBJECTIVE
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
    """One row per run: its setting (the label without `config=`), seed where swept, in `order` (see `_ordered`)."""
    columns = table_columns()
    return [
        {"setting": _setting(label)}
        | ({"seed": _seed(label)} if _seed(label) is not None else {})
        | {"last step": int(runs[label]["step"].max())}
        | {words: _last(runs[label], key) for words, key in columns.items()}
        for label in _ordered(runs, order)
    ]


def seed_rows(rows: list[dict]) -> list[dict]:
    """Per setting with more than one seed: `mean (lowest, highest)` of the central fits, and how many runs converged."""
    by_setting: dict[str, list[dict]] = {}
    for row in rows:
        by_setting.setdefault(row["setting"], []).append(row)
    summary = []
    for setting, group in by_setting.items():
        if len(group) < 2:
            continue
        converged = sum(not math.isnan(row["objective converged at step"]) for row in group)
        cells = {"setting": setting, "seeds": len(group), "objective converged": f"{converged} of {len(group)}"}
        for column in SEED_SUMMARY:
            values = [row[column] for row in group if not math.isnan(row[column])]
            cells[column] = f"{sum(values) / len(values):.3g} ({min(values):.3g}, {max(values):.3g})" if values else ""
        summary.append(cells)
    return summary


def _setting(label: str) -> str:
    """The run's setting: its label without the seed; a swept config file by its name."""
    swept = parse_run_label(label)
    parts = {key: value for key, value in swept.items() if key != SEED_KEY}
    if list(parts) == ["config"]:
        return parts["config"]
    if not parts and SEED_KEY in swept:  # a sweep over seeds alone: one setting
        return "all seeds"
    return run_label(parts, list(parts)) if parts else label


def _seed(label: str) -> str | None:
    return parse_run_label(label).get(SEED_KEY)


def seed_curve(frames: list[pd.DataFrame], key: str) -> pd.DataFrame:
    """The curve of `key` over seeds: `figures.seed_band`'s mean per step, `low` and `high` the lowest and highest
    seed (one seed: its curve, no band)."""
    measured = [frame for frame in frames if key in frame and frame[key].notna().any()]
    if not measured:
        return pd.DataFrame({"step": [], "examples": [], "value": []})
    if len(measured) == 1:
        return curve_of(measured[0], key).dropna(subset=["value"])[["step", "examples", "value"]]
    return curve_of(seed_band(measured), key).dropna(subset=["value"]).reset_index(drop=True)


def figures(
    runs: dict[str, pd.DataFrame], title: str, x: XAxis, order: list[str] = (), references: dict[str, pd.DataFrame] | None = None
) -> dict[str, Figure]:
    """A figure per (target, quantity, statistic) that some run measured, a curve per setting (in `order`).

    A setting's seeds make one curve, their mean, shaded from the lowest to the highest seed. `references`
    (label -> frame with `step` and metric columns) are drawn in black. Slopes differ by orders of magnitude
    between settings (the norms' scale is free under cosine or normalisation): their axis is symmetric-log,
    with the theorem's slope 1 dotted."""
    drawn = {}
    frames_by_setting: dict[str, list[pd.DataFrame]] = {}
    for label in _ordered(runs, order):
        frames_by_setting.setdefault(_setting(label), []).append(runs[label])
    references = references or {}
    for target, target_words in TARGET_LABELS.items():
        for quantity, quantity_words in QUANTITY_LABELS.items():
            for statistic, words in STATISTIC_LABELS.items():
                key = getattr(THEOREM_KEYS[target, quantity], statistic)
                y_label = f"{words} of 0.5||w||^2 on {quantity_words}, {target_words}"
                curves = {name: seed_curve(frames, key) for name, frames in frames_by_setting.items()}
                figure = line_figure(curves, y_label, f"{y_label}\n{title}", x)
                if figure is None:
                    continue
                axes = figure.axes[0]
                for index, (name, frame) in enumerate(references.items()):
                    curve = curve_of(frame, key).dropna(subset=["value"])
                    if not curve.empty:
                        style = ("-", "--", ":", "-.")[index % 4]
                        axes.plot(curve[x], curve["value"], color="black", linestyle=style, linewidth=2, marker="s", markersize=3, label=name)
                _log_steps(axes, curves)
                drawn[f"theorem_{target}_{quantity}_{statistic}"] = _legend_outside(figure, len(curves))
                if statistic == "slope":
                    axes.set_yscale("symlog", linthresh=1.0)
                    axes.axhline(1.0, color="black", linestyle=":", linewidth=1)
    y_label = "mean 0.5||w||^2 of the fitted input rows"
    curves = {name: seed_curve(frames, THEOREM_INPUT_HALF_NORM_MEAN) for name, frames in frames_by_setting.items()}
    if (figure := line_figure(curves, y_label, f"{y_label}\n{title}", x)) is not None:  # the norms' growth
        figure.axes[0].set_yscale("log")
        _log_steps(figure.axes[0], curves)
        drawn["theorem_input_half_norm_mean"] = _legend_outside(figure, len(curves))
    return drawn


def _log_steps(axes, curves: dict[str, pd.DataFrame]) -> None:
    """Probes at log-spaced steps (a long run's preset) get a symmetric-log x-axis, so that the early steps show."""
    steps = pd.concat([curve["step"] for curve in curves.values()]) if curves else pd.Series(dtype=float)
    positive = steps[steps > 0]
    if not positive.empty and positive.max() >= 1000 * positive.min():
        axes.set_xscale("symlog", linthresh=1.0)
        axes.set_xlim(left=0)


def _legend_outside(figure: Figure, settings: int) -> Figure:
    """Many settings: dashed and dotted lines once the 10 colours are used, the legend right of the axes."""
    axes = figure.axes[0]
    for index, line in enumerate(axes.lines[:settings]):
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
