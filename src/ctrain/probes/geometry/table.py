"""The per-layer geometry table `ctrain probe` prints."""

from __future__ import annotations

from collections.abc import Sequence

from ctrain.probes.geometry.runner import CONVENTIONS, GeometryResult


def format_layer_table(result: GeometryResult, metrics: Sequence[str] | None = None) -> str:
    """The convention's choices, one row per layer and one column per metric (6 significant digits shown),
    then the sentence-level values."""
    names = list(metrics) if metrics is not None else list(result.per_layer[0])
    widths = [max(11, len(name)) for name in names]
    choices = ", ".join(f"{name} {result.config[name]}" for name in CONVENTIONS[result.convention])
    lines = [f"geometry ({result.convention}: {choices})", "layer " + " ".join(n.rjust(w) for n, w in zip(names, widths))]
    for layer, row in enumerate(result.per_layer):
        lines.append(f"{layer:>5} " + " ".join(f"{row[n]:>{w}.6g}" for n, w in zip(names, widths)))
    summaries = {k: v for k, v in result.metrics.items() if "/layer_" not in k}
    lines.extend(f"{name}: {value:.6g} (n={result.sample_sizes[name]})" for name, value in summaries.items())
    for direction, items in result.type_changes.items():
        lines.append(f"self-similarity {direction} most: " + ", ".join(f"{token} {value:+.4f}" for token, value in items))
    return "\n".join(lines)
