"""ctrain: contrastive fine-tuning of sentence encoders, and probes of what they learn.

The public API, for Python users (`from ctrain import ContrastiveModule, EncoderConfig`). Each name is imported
on first use: every `ctrain.*` import, the `ctrain` command's included, runs this file first, and importing
Lightning and the probes here would slow all of them down.
"""

from __future__ import annotations

import importlib

_PUBLIC = {
    "ContrastiveModule": "ctrain.training.module",
    "ContrastiveDataModule": "ctrain.data.datamodule",
    "EncoderConfig": "ctrain.models.encoder",
    "SentenceEncoder": "ctrain.models.encoder",
    "load_encoder": "ctrain.models.encoder",
    "save_sentence_transformer": "ctrain.models.export",
    "StsEvaluator": "ctrain.probes.sts",
    "WeightingConfig": "ctrain.probes.weighting",
    "weighting_probe": "ctrain.probes.weighting",
    "GeometryConfig": "ctrain.probes.geometry",
    "geometry_probe": "ctrain.probes.geometry",
    "WordWeightingProbe": "ctrain.callbacks.probes",
    "GeometryProbe": "ctrain.callbacks.probes",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'ctrain' has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name]), name)
    globals()[name] = value  # the next lookup finds it without this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
