"""Figures of the geometry probe: every metric family against layer, for one model.

Agg backend without pyplot state; files are written atomically (`save_figure`), since a
dashboard may read a figure while the next probe rewrites it. `METRIC_LABELS` is the one
place that names the geometry metrics in words; `ctrain report` uses it for its per-step figures.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

from matplotlib.figure import Figure

if TYPE_CHECKING:  # `ctrain report` imports the words without torch
    from ctrain.probes.geometry import GeometryResult

METRIC_LABELS: dict[str, str] = {
    "anisotropy": "anisotropy (mean cosine of random word pairs)",
    "self_similarity": "self-similarity (same word, other contexts)",
    "intra_similarity": "intra-sentence similarity (word vs its sentence)",
    "self_similarity_adjusted": "self-similarity minus anisotropy",
    "intra_similarity_adjusted": "intra-sentence similarity minus anisotropy",
    "norm_mean": "mean embedding norm",
    "rogue_top1": "share of the largest dimension",
    "rogue_top2": "share of the 2nd largest dimension",
    "rogue_top3": "share of the 3rd largest dimension",
    "rogue_dims_10": "dimensions holding 10% of the share",
    "rogue_dims_20": "dimensions holding 20% of the share",
    "rogue_dims_50": "dimensions holding 50% of the share",
    "informativity_r2_k1": "informativity R^2, top 1 rogue dim removed",
    "informativity_r2_k3": "informativity R^2, top 3 rogue dims removed",
    "alignment": "alignment (positive pairs)",
    "uniformity": "uniformity (log mean Gaussian potential)",
}

# One panel per family: (panel title, y-axis label, metrics); informativity lists the columns present.
FAMILIES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("similarities", "cosine similarity", ("anisotropy", "self_similarity", "intra_similarity")),
    ("similarities minus anisotropy", "cosine similarity - anisotropy", ("self_similarity_adjusted", "intra_similarity_adjusted")),
    ("token norms", "L2 norm of token vectors", ("norm_mean",)),
    ("rogue dimensions", "share of cosine similarity", ("rogue_top1", "rogue_top2", "rogue_top3")),
    ("dimensions for a share", "number of dimensions", ("rogue_dims_10", "rogue_dims_20", "rogue_dims_50")),
    ("informativity", "R^2 of cosines (full vs reduced)", ()),
)
# Metrics drawn with a +-1 standard deviation band, and what the spread is over.
BANDS: dict[str, tuple[str, str]] = {
    "anisotropy": ("anisotropy_std", "+-1 std over resamples"),
    "norm_mean": ("norm_std", "+-1 std over tokens"),
}


def words(metric: str) -> str:
    """The metric in words (its key with spaces when it has no entry)."""
    return METRIC_LABELS.get(metric, metric.replace("_", " "))


def _grid(panels: int, width: float = 4.2, height: float = 3.2) -> tuple[Figure, list]:
    """A figure with `panels` axes in rows of at most three."""
    columns = min(3, panels)
    rows = math.ceil(panels / columns)
    figure = Figure(figsize=(width * columns, height * rows), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for unused in axes[panels:]:
        unused.set_visible(False)
    return figure, list(axes[:panels])


def plot_metrics_by_layer(result: "GeometryResult", path: str | Path, model: str = "model") -> Path:
    """Each metric family against layer 0 (embeddings) .. L, in words, with the spread of A_l and of the norms as bands."""
    columns = result.per_layer[0].keys()
    panels = []
    for title, y_label, metrics in FAMILIES:
        chosen = metrics or tuple(sorted(c for c in columns if c.startswith("informativity_r2_k")))
        present = [metric for metric in chosen if metric in columns]
        if present:
            panels.append((title, y_label, present))
    figure, axes = _grid(len(panels))
    layers = list(range(len(result.per_layer)))
    for axis, (title, y_label, metrics) in zip(axes, panels):
        for metric in metrics:
            values = [row[metric] for row in result.per_layer]
            (line,) = axis.plot(layers, values, marker="o", markersize=3, label=words(metric))
            band = BANDS.get(metric)
            if band and band[0] in columns:
                spread = [row[band[0]] for row in result.per_layer]
                low = [v - s for v, s in zip(values, spread)]
                high = [v + s for v, s in zip(values, spread)]
                axis.fill_between(layers, low, high, color=line.get_color(), alpha=0.2, linewidth=0, label=band[1])
        axis.set_title(title, fontsize=10)
        axis.set_xlabel("layer (0 = embeddings)")
        axis.set_ylabel(y_label)
        axis.set_xticks(layers)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    sentence_level = ", ".join(f"{words(k)} {v:.3g}" for k, v in result.metrics.items() if "/layer_" not in k)
    figure.suptitle(
        f"{model}: geometry by layer, convention {result.convention}, {result.num_sentences} sentences"
        + (f"\nsentence embeddings: {sentence_level}" if sentence_level else ""),
        fontsize=10,
    )
    from ctrain.reporting.figures import save_figure

    return save_figure(figure, path)
