"""The word-weighting probe: attribution weights regressed on token information.

``weighting_probe`` is what the training callback and ``ctrain probe`` call. It
weighs every unit of the probe sentences by IG (and optionally SHAP), regresses the
normalised weights ``c'`` on ``KL``, ``dKL`` and ``I`` of a statistics corpus (spec
sections 1-4), and measures Theorem 1 (section 5). Pass ``statistics`` (from
``token_statistics``) to reuse them across calls: they depend on the corpus and the
tokenizer only, not on the weights being trained.

Decisions where the spec is open (see also the modules it calls):

- The same ``min_count`` filter applies to the KL, dKL and I regressions and to the
  theorem fits, so that all of them use the same points and their R^2 compare; set
  ``min_count=1`` to fit dKL on every type.
- Probe units missing from the statistics corpus (possible with a separate corpus)
  have count 0 and NaN information, so they never enter a fit.
- Sentences are processed in order of token length (less padding); the batch that
  starts at sorted position ``s`` uses seed ``seed + s`` for its sketch probes and
  SHAP sentence ``s + b`` uses ``seed + s + b``, so results do not depend on the
  batch size except through float reassociation.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np
import torch

from ctrain.encoder import SentenceEncoder
from ctrain.probes.attribution import (
    Mode,
    ProbeKind,
    Quadrature,
    integrated_gradients,
    probe_mode,
    shap_weights,
    unit_weights,
)
from ctrain.probes.information import Segmentation, TokenStatistics, Units, segment, token_statistics
from ctrain.probes.jsonio import to_strict_json
from ctrain.probes.regression import Points, ols, regression_points
from ctrain.probes.theorem import TypeAverage, WordVector, theorem_regressions, unit_vectors

Method = Literal["ig", "shap"]
METHODS: tuple[str, ...] = ("ig", "shap")
Quantity = Literal["kl", "dkl", "selfinfo"]
QUANTITIES: tuple[str, ...] = ("kl", "dkl", "selfinfo")


@dataclass
class WeightingConfig:
    """Flags of the probe; defaults follow the spec (exact IG, 50 Gauss-Legendre steps, token units)."""

    methods: tuple[str, ...] = ("ig",)
    mode: Mode = "exact"
    probes: int = 32
    probe_kind: ProbeKind = "rademacher"
    steps: int = 50
    quadrature: Quadrature = "gauss_legendre"
    units: Units = "tokens"
    min_count: int = 5
    include_self: bool = False
    dkl_repeats: int = 5
    points: Points = "occurrence"
    max_length: int | None = 128
    seed: int = 0
    batch_size: int = 8
    vjp_batch: int | None = 8
    shap_max_exact_tokens: int = 10
    shap_permutations: int = 64
    shap_batch_size: int = 256
    theorem: bool = True
    word_vector: WordVector = "sum"
    type_average: TypeAverage = "vectors"

    def __post_init__(self) -> None:
        self.methods = tuple(self.methods)
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown or not self.methods:
            raise ValueError(f"methods must be a non-empty subset of {METHODS}, got {self.methods}")


@dataclass(frozen=True)
class TokenRecord:
    """One unit occurrence: its sentence (index into the probe sentences), type, ``c'`` per method and information."""

    sentence: int
    token: str
    weights: dict[str, float]
    kl: float
    dkl: float
    self_information: float
    count: int


@dataclass
class WeightingResult:
    """Flat metrics for loggers, per-unit records for plots, and the config that produced them."""

    metrics: dict[str, float]
    records: list[TokenRecord]
    config: WeightingConfig = field(default_factory=WeightingConfig)

    def regression_data(self, method: str, quantity: Quantity) -> tuple[np.ndarray, np.ndarray]:
        """The (x, y) points of the ``{method}_{quantity}`` fit: eligible units, per occurrence or per type."""
        attribute = {"kl": "kl", "dkl": "dkl", "selfinfo": "self_information"}[quantity]
        kept = [r for r in self.records if r.count >= self.config.min_count and math.isfinite(getattr(r, attribute))]
        x = np.array([getattr(r, attribute) for r in kept], dtype=np.float64)
        y = np.array([r.weights[method] for r in kept], dtype=np.float64)
        return regression_points(x, y, np.array([r.token for r in kept], dtype=object), self.config.points)

    def to_json(self) -> str:
        """Config, metrics and records as strict JSON (NaN written as null), full float precision."""
        return to_strict_json({"config": asdict(self.config), "metrics": self.metrics, "records": [asdict(r) for r in self.records]})


def _method_weights(
    encoder: SentenceEncoder, method: str, seg: Segmentation, config: WeightingConfig, seed: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Normalised unit weights ``c'`` of one batch, and IG's per-sentence completeness errors."""
    if method == "ig":
        attribution = integrated_gradients(
            encoder, seg.input_ids, seg.attention_mask, config.steps, config.quadrature, config.mode,
            config.probes, config.probe_kind, seed, config.vjp_batch,
        )  # fmt: skip
    else:
        attribution = shap_weights(
            encoder, seg.input_ids, seg.attention_mask, config.shap_max_exact_tokens, config.shap_permutations,
            seed, config.shap_batch_size,
        )  # fmt: skip
    _, normalised = unit_weights(attribution.weights, seg.unit_of_position, seg.unit_sentence)
    return normalised, attribution.completeness_error


def _theorem_vectors(encoder: SentenceEncoder, seg: Segmentation, config: WeightingConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-unit input word-embedding vectors and last-layer hidden states of one batch."""
    with probe_mode(encoder) as device, torch.no_grad():
        ids, mask = seg.input_ids.to(device), seg.attention_mask.to(device)
        last = encoder.token_states(ids, mask).last_hidden_state
        inputs = encoder.word_embeddings(ids)
        unit_of_position = seg.unit_of_position.to(device)
        return tuple(unit_vectors(s, unit_of_position, seg.num_units, config.word_vector).cpu() for s in (inputs, last))


def weighting_probe(
    encoder: SentenceEncoder,
    sentences: list[str],
    config: WeightingConfig | None = None,
    statistics: TokenStatistics | None = None,
) -> WeightingResult:
    """Weigh the probe sentences' units and regress the weights on information (statistics default: the sentences)."""
    config = config or WeightingConfig()
    tokenizer = encoder.tokenizer
    if statistics is None:
        statistics = token_statistics(
            tokenizer, sentences, config.units, config.include_self, config.dkl_repeats, config.seed, config.max_length
        )
    if (statistics.units, statistics.include_self) != (config.units, config.include_self):
        raise ValueError(
            f"statistics were computed with units={statistics.units}, include_self={statistics.include_self}; "
            f"the config asks for units={config.units}, include_self={config.include_self}"
        )
    lengths = [len(ids) for ids in tokenizer(list(sentences), truncation=config.max_length is not None, max_length=config.max_length)["input_ids"]]
    order = np.argsort(lengths, kind="stable")
    records: list[TokenRecord] = []
    errors: list[torch.Tensor] = []
    input_vectors, last_vectors, unit_types = [], [], []
    for start in range(0, len(sentences), config.batch_size):
        indices = order[start : start + config.batch_size]
        seg = segment(tokenizer, [sentences[i] for i in indices], config.units, config.max_length)
        weights = {}
        for method in config.methods:
            weights[method], completeness = _method_weights(encoder, method, seg, config, config.seed + start)
            if completeness is not None:
                errors.append(completeness)
        types = statistics.index(seg.unit_types)
        for u, (b, name, t) in enumerate(zip(seg.unit_sentence.tolist(), seg.unit_types, types.tolist())):
            known = t >= 0
            records.append(
                TokenRecord(
                    sentence=int(indices[b]),
                    token=name,
                    weights={m: float(w[u]) for m, w in weights.items()},
                    kl=float(statistics.kl[t]) if known else math.nan,
                    dkl=float(statistics.dkl[t]) if known else math.nan,
                    self_information=float(statistics.self_information[t]) if known else math.nan,
                    count=int(statistics.counts[t]) if known else 0,
                )
            )
        if config.theorem:
            vectors = _theorem_vectors(encoder, seg, config)
            input_vectors.append(vectors[0])
            last_vectors.append(vectors[1])
            unit_types.append(types)
    result = WeightingResult(metrics={}, records=records, config=config)
    metrics: dict[str, float] = {"num_sentences": float(len(sentences)), "num_units": float(len(records))}
    for method in config.methods:
        for quantity in QUANTITIES:
            metrics.update(ols(*result.regression_data(method, quantity)).metrics(f"{method}_{quantity}", "beta"))
    if errors:
        error = torch.cat(errors).double()
        metrics.update(
            ig_completeness_error_mean=float(error.mean()),
            ig_completeness_error_max=float(error.max()),
            ig_completeness_error_n=float(len(error)),
        )
    if config.theorem and records:
        types = np.concatenate(unit_types)
        keep = types >= 0
        keep[keep] = statistics.eligible(config.min_count)[types[keep]]
        mask = torch.from_numpy(keep)
        fits = theorem_regressions(
            torch.cat(input_vectors)[mask], torch.cat(last_vectors)[mask], types[keep], statistics.kl, config.type_average
        )
        for name, fit in fits.items():
            metrics.update(fit.metrics(f"theorem_{name}"))
    result.metrics = metrics
    return result
