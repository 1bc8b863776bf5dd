"""``weigh_batch``: what one batch of probe sentences weighs, the public per-batch step of every word-weighting probe.

The probe (``weighting_probe``), and through it the training callback and ``ctrain probe``, weigh their
sentences one ``weigh_batch`` at a time; a benchmark that times or inspects a batch calls it and reads the
arrays it returns, or times each method by handing ``weighting_probe`` a ``weigh_batch`` whose ``attribute``
is its own wrapper of ``attribute``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from ctrain.models.encoder import SentenceEncoder, attribution_mode
from ctrain.probes.weighting.config import WeightingConfig
from ctrain.probes.weighting.ig import Attribution, integrated_gradients, unit_weights
from ctrain.probes.weighting.information import Segmentation, segment
from ctrain.probes.weighting.shapley import shap_weights
from ctrain.probes.weighting.theorem import vectors_per_unit


@dataclass
class BatchWeights:
    """One batch's units (``segmentation``) and, per unit, what the fits need: arrays in the units' reading order.

    ``attributions`` (per method: per-position ``c_i`` and IG's completeness and path points) are there only for a batch weighed
    now, not for one read back from a ``BatchStore``.
    """

    segmentation: Segmentation
    weights: dict[str, np.ndarray]  # method -> normalised unit weight c' (float64)
    completeness_error: np.ndarray | None  # IG's relative completeness error of each sentence
    evaluations: np.ndarray | None  # IG's path points evaluated for each sentence (adaptive: its own; fixed: steps)
    input_vectors: np.ndarray | None  # (units, e) input word-embedding vector of each unit (Theorem 1; None when off)
    last_vectors: np.ndarray | None  # (units, h) last-layer state of each unit
    attributions: dict[str, Attribution] = field(default_factory=dict)

    def stored(self) -> dict:
        """The arrays a ``BatchStore`` keeps (tensors: ``torch.load(weights_only=True)`` reads them back)."""
        stored = {"weights": {m: torch.from_numpy(w) for m, w in self.weights.items()}, "completeness": None, "evaluations": None}
        if self.completeness_error is not None:
            stored["completeness"] = torch.from_numpy(self.completeness_error)
            stored["evaluations"] = torch.from_numpy(self.evaluations)
        if self.input_vectors is not None:
            stored["vectors"] = (torch.from_numpy(self.input_vectors), torch.from_numpy(self.last_vectors))
        return stored

    @classmethod
    def from_stored(cls, segmentation: Segmentation, stored: dict) -> BatchWeights:
        vectors = stored.get("vectors", (None, None))
        return cls(
            segmentation,
            {m: w.numpy() for m, w in stored["weights"].items()},
            *(None if stored[name] is None else stored[name].numpy() for name in ("completeness", "evaluations")),
            *(None if v is None else v.numpy() for v in vectors),
        )


def attribute(
    encoder: SentenceEncoder, method: str, segmentation: Segmentation, sentences: list[str], config: WeightingConfig, seed: int
) -> Attribution:
    """Per-position weights ``c_i`` of one batch by ``method`` (``ig`` or ``shap``) with the config's settings."""
    ids, mask = segmentation.input_ids, segmentation.attention_mask
    if method == "ig":
        return integrated_gradients(
            encoder, ids, mask, steps=config.steps, quadrature=config.quadrature, mode=config.ig_mode,
            sketch_size=config.sketch_size, sketch_kind=config.sketch_kind, seed=seed, vjp_batch=config.vjp_batch,
            completeness=config.completeness, completeness_tol=config.completeness_tol, max_evaluations=config.max_evaluations,
            precision=config.ig_precision,
        )  # fmt: skip
    return shap_weights(
        encoder, ids, mask, sentences, mode=config.shap_mode, max_exact_tokens=config.shap_max_exact_tokens,
        permutations=config.shap_permutations, max_evals=config.shap_max_evals, seed=seed, batch_size=config.shap_batch_size,
    )  # fmt: skip


def theorem_vectors(encoder: SentenceEncoder, segmentation: Segmentation, config: WeightingConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-unit input word-embedding vectors and last-layer hidden states of one batch."""
    seg = segmentation
    with attribution_mode(encoder) as device, torch.no_grad():
        ids, mask = seg.input_ids.to(device), seg.attention_mask.to(device)
        last = encoder.token_states(ids, mask).last_hidden_state
        inputs = encoder.word_embeddings(ids)
        unit_of_position = seg.unit_of_position.to(device)
        return tuple(vectors_per_unit(s, unit_of_position, seg.num_units, config.word_vector).cpu() for s in (inputs, last))


Attribute = Callable[[SentenceEncoder, str, Segmentation, list[str], WeightingConfig, int], Attribution]


def weigh_batch(
    encoder: SentenceEncoder, sentences: list[str], config: WeightingConfig, seed: int | None = None, *, attribute: Attribute = attribute
) -> BatchWeights:
    """Weigh one batch of sentences by every method of ``config`` (and take its Theorem-1 vectors when on).

    ``seed`` (default ``config.seed``) seeds the sketch directions and SHAP's draws; ``weighting_probe`` passes
    ``config.seed`` plus the batch's start in its length-sorted order. ``attribute`` weighs by one method.
    """
    seed = config.seed if seed is None else seed
    seg = segment(encoder.tokenizer, sentences, config.units, config.max_length)
    attributions = {method: attribute(encoder, method, seg, sentences, config, seed) for method in config.methods}
    weights = {m: unit_weights(a.weights, seg.unit_of_position, seg.unit_sentence)[1].numpy() for m, a in attributions.items()}
    ig = attributions.get("ig")
    checked = (ig.completeness_error.numpy(), ig.evaluations.numpy()) if ig is not None else (None, None)
    vectors = tuple(v.numpy() for v in theorem_vectors(encoder, seg, config)) if config.theorem else (None, None)
    return BatchWeights(seg, weights, *checked, *vectors, attributions)
