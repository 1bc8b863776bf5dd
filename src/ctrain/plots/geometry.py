"""Figures of the geometry probe: metric vs layer for one model, metric vs step for a run.

Agg backend without pyplot state; files are written atomically (`save_figure`), since a
dashboard may read a figure while the next probe rewrites it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from matplotlib import colormaps
from matplotlib.figure import Figure

from ctrain.plots.weighting import save_figure
from ctrain.probes.geometry import GeometryResult

# One panel per family in the by-layer figure; `anisotropy_std` and `norm_std` draw bands.
FAMILIES: dict[str, tuple[str, ...]] = {
    "cosine similarity": ("anisotropy", "self_similarity", "intra_similarity"),
    "minus anisotropy A_l": ("self_similarity_adjusted", "intra_similarity_adjusted"),
    "token norm": ("norm_mean",),
    "rogue dimension share": ("rogue_top1", "rogue_top2", "rogue_top3"),
    "dimensions for share": ("rogue_dims_10", "rogue_dims_20", "rogue_dims_50"),
    "informativity r^2": (),  # filled with the informativity_r2_k* columns present
}
BANDS = {"anisotropy": "anisotropy_std", "norm_mean": "norm_std"}
STEP_METRICS = (
    "anisotropy",
    "self_similarity_adjusted",
    "intra_similarity_adjusted",
    "norm_mean",
    "rogue_top1",
    "informativity_r2_k1",
)
PREFIX = "geometry/"


def _grid(panels: int, width: float = 4.0, height: float = 3.0) -> tuple[Figure, list]:
    """A figure with `panels` axes in rows of at most three."""
    columns = min(3, panels)
    rows = math.ceil(panels / columns)
    figure = Figure(figsize=(width * columns, height * rows), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for unused in axes[panels:]:
        unused.set_visible(False)
    return figure, list(axes[:panels])


def plot_metrics_by_layer(result: GeometryResult, path: str | Path, title: str | None = None) -> Path:
    """Each metric family against layer 0..L, with the resample spread of A_l and the norm std as bands."""
    columns = result.per_layer[0].keys()
    families = {
        name: [m for m in (metrics or sorted(c for c in columns if c.startswith("informativity_r2_k"))) if m in columns]
        for name, metrics in FAMILIES.items()
    }
    families = {name: metrics for name, metrics in families.items() if metrics}
    figure, axes = _grid(len(families))
    layers = list(range(len(result.per_layer)))
    for axis, (family, metrics) in zip(axes, families.items()):
        for metric in metrics:
            values = [row[metric] for row in result.per_layer]
            (line,) = axis.plot(layers, values, marker="o", markersize=3, label=metric)
            if metric in BANDS and BANDS[metric] in columns:
                spread = [row[BANDS[metric]] for row in result.per_layer]
                low = [v - s for v, s in zip(values, spread)]
                high = [v + s for v, s in zip(values, spread)]
                axis.fill_between(layers, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
        axis.set_title(family, fontsize=10)
        axis.set_xlabel("layer")
        axis.set_xticks(layers)
        axis.legend(fontsize=7)
    summaries = ", ".join(f"{k} {v:.3g}" for k, v in result.metrics.items() if "/layer_" not in k)
    figure.suptitle(title or f"geometry by layer ({result.convention}){': ' + summaries if summaries else ''}", fontsize=10)
    return save_figure(figure, path)


def _strip(metrics: Mapping[str, float]) -> dict[str, float]:
    """Metric keys without the callback's `geometry/` prefix."""
    return {key.removeprefix(PREFIX): value for key, value in metrics.items()}


def plot_metrics_by_step(
    records: Sequence[tuple[int, Mapping[str, float]]],
    path: str | Path,
    metrics: Sequence[str] = STEP_METRICS,
    layers: Sequence[int] | None = None,
    log_steps: bool = False,
) -> Path:
    """Per-layer metrics against training step (one line per layer), and the alignment-uniformity trajectory.

    `records` are (step, metrics) pairs as logged (keys `<metric>/layer_<l>`, optionally
    prefixed `geometry/`); metrics or layers absent from every record are left out.
    """
    records = sorted(((step, _strip(values)) for step, values in records), key=lambda record: record[0])
    keys = set().union(*(values for _, values in records)) if records else set()
    available = sorted({int(key.rsplit("_", 1)[1]) for key in keys if "/layer_" in key})
    layers = [layer for layer in (layers if layers is not None else available) if layer in available]
    shown = [m for m in metrics if any(f"{m}/layer_{layer}" in keys for layer in layers)]
    trajectory = {"alignment", "uniformity"} <= keys
    figure, axes = _grid(max(1, len(shown) + trajectory))
    colours = colormaps["viridis"]
    for axis, metric in zip(axes, shown):
        for layer in layers:
            key = f"{metric}/layer_{layer}"
            points = [(step, values[key]) for step, values in records if key in values]
            if points:
                colour = colours(layer / max(1, max(available)))
                axis.plot(*zip(*points), marker="o", markersize=2, color=colour, label=f"layer {layer}")
        axis.set_title(metric, fontsize=10)
        axis.set_xlabel("step")
        if log_steps:
            axis.set_xscale("symlog", linthresh=1)
    if shown:
        axes[0].legend(fontsize=7, ncol=2)
    if trajectory:
        axis = axes[len(shown)]
        points = [(step, v["uniformity"], v["alignment"]) for step, v in records if {"alignment", "uniformity"} <= v.keys()]
        steps, uniformity, alignment = zip(*points)
        axis.plot(uniformity, alignment, color="0.7", linewidth=0.8, zorder=1)
        scatter = axis.scatter(uniformity, alignment, c=steps, cmap="viridis", s=12, zorder=2)
        figure.colorbar(scatter, ax=axis, label="step")
        axis.set_xlabel("uniformity (lower = more uniform)")
        axis.set_ylabel("alignment (lower = closer positives)")
        axis.set_title("alignment vs uniformity", fontsize=10)
    if not shown and not trajectory:
        axes[0].text(0.5, 0.5, "no geometry records", ha="center", va="center", transform=axes[0].transAxes)
    return save_figure(figure, path)
