"""The figures of `ctrain probe`: drawn from what `probe_model` returned, into its output folder."""

from __future__ import annotations

from pathlib import Path

from ctrain.probes.model import ModelProbe
from ctrain.reporting.geometry_plots import plot_metrics_by_layer
from ctrain.reporting.weighting_plots import plot_sentence_weights, plot_weight_vs_information


def model_probe_figures(probed: ModelProbe) -> list[Path]:
    """Each weighting method's weight-vs-KL scatter and sentence weight bars, and each geometry convention's metrics
    by layer."""
    paths = []
    directory, model = probed.directory, probed.model
    if probed.weighting is not None:
        result = probed.weighting.result
        for method in result.config.methods:
            paths.append(plot_weight_vs_information(result, directory / f"{method}_vs_kl.png", method, "kl", model))
            paths.append(plot_sentence_weights(result, directory / f"{method}_sentences.png", 4, method, model))
    for convention, result in probed.geometry.items():
        paths.append(plot_metrics_by_layer(result, directory / f"geometry_{convention}.png", model))
    return paths
