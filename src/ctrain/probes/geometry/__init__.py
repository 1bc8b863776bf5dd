"""Geometry of the representation space per layer (docs/metrics.md, "Geometry").

- `metrics`: the metrics as pure functions of accumulated sums; `layer_metrics` computes every
  logged per-layer value.
- `streaming`: runs the model batch by batch and accumulates those sums.
- `runner`: `GeometryConfig` (the one settings dataclass, with its named conventions), the
  probe corpus, the memory model and `geometry_probe`, which ties them together.
- `table`: the terminal table.
"""

from ctrain.probes.geometry.runner import (
    CONVENTIONS,
    GeometryConfig,
    GeometryResult,
    SelfSimilarityState,
    geometry_probe,
    positive_pairs,
    probe_sentences,
)
from ctrain.probes.geometry.table import format_layer_table

__all__ = [
    "CONVENTIONS",
    "GeometryConfig",
    "GeometryResult",
    "SelfSimilarityState",
    "format_layer_table",
    "geometry_probe",
    "positive_pairs",
    "probe_sentences",
]
