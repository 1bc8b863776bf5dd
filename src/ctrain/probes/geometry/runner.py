"""The geometry probe's settings, probe corpus, memory model and the run that ties them together.

`GeometryConfig` is the one place for the probe's settings: the `GeometryProbe` callback, its
YAML presets and `ctrain probe` all take it whole. Fields left None take the value of the
named convention (`CONVENTIONS`); docs/metrics.md lists every decision with its field.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, NamedTuple

import torch
import torch.nn.functional as F

from ctrain.data.sources import StsSplit, read_sts_b
from ctrain.models.encoder import eval_mode
from ctrain.probes.geometry.metrics import (
    ACCUMULATE,
    UNIFORMITY_CHUNK,
    Measure,
    Occurrences,
    RoguePairs,
    alignment,
    layer_metrics,
    select_types,
    self_similarity,
    self_similarity_change,
    uniformity,
)
from ctrain.probes.geometry.streaming import Plan, stream
from ctrain.probes.jsonio import to_strict_json
from ctrain.runtime import check_choice

if TYPE_CHECKING:
    from ctrain.models.encoder import SentenceEncoder

Convention = Literal["default", "isotropy2023"]

# The fields each convention sets; docs/metrics.md gives the reason for each value.
CONVENTIONS: dict[str, dict[str, object]] = {
    "default": {
        "include_specials": False,
        "occurrences": "first_per_sentence",
        "min_sentences": 5,
        "redraw_per_layer": False,
        "rogue_pairs": "distinct",
        "positive_at_threshold": False,
    },
    "isotropy2023": {
        "include_specials": True,
        "occurrences": "first_per_sentence",
        "min_sentences": 2,
        "redraw_per_layer": True,
        "rogue_pairs": "with_self",
        "positive_at_threshold": True,
    },
}


@dataclass(kw_only=True)
class GeometryConfig:
    """Settings of the geometry probe. Fields left None take the convention's value (`CONVENTIONS`).

    Args:
        convention: named set of definitions: default (the published ones) or isotropy2023.
        split: STS-B split whose first sentences are the probe corpus.
        num_sentences: its first N sentences (None: all).
        include_specials: [CLS]/[SEP]-style tokens in the token set of every metric (PAD never).
        occurrences: self-similarity pairs: first_per_sentence (different contexts only) or all.
        min_occurrences: a type needs this many occurrences in total for self-similarity.
        min_sentences: ... and to occur in this many sentences.
        redraw_per_layer: draw a new anisotropy sample for each layer (else one draw for all).
        anisotropy_sentences: M, sentences per anisotropy sample (one token from each).
        anisotropy_resamples: R, anisotropy samples; their mean is A_l, their std the spread.
        rogue_pairs: rogue-dimension shares over distinct token pairs or with self-pairs.
        informativity_tokens: tokens sampled for informativity r^2.
        rogue_remove: informativity after removing each layer's top-k rogue dims, for each k.
        sentence_level: also alignment and uniformity of the sentence embeddings.
        positive_pairs: alignment positives; None: STS-B pairs of `positives_split` by score.
        positives_split: STS-B split of the alignment positives.
        positive_threshold: positives score above this.
        positive_at_threshold: ... or equal to it.
        alignment_alpha: exponent of the alignment distance.
        uniformity_t: temperature of uniformity.
        top_changes: types listed as rising and falling most in self-similarity vs the reference.
        max_length: tokens per sentence.
        batch_tokens: streamed batches hold up to this many tokens (at least one sentence).
        batch_size: sentences per batch when embedding the alignment pairs.
        max_memory_mb: estimated working-set cap; batches shrink to fit.
        seed: seed of every random draw (a local generator; the global RNG is untouched).
    """

    convention: Convention = "default"
    split: StsSplit = "test"
    num_sentences: int | None = None
    include_specials: bool | None = None
    occurrences: Occurrences | None = None
    min_occurrences: int = 5
    min_sentences: int | None = None
    redraw_per_layer: bool | None = None
    anisotropy_sentences: int = 1000
    anisotropy_resamples: int = 10
    rogue_pairs: RoguePairs | None = None
    informativity_tokens: int = 1000
    rogue_remove: tuple[int, ...] = (1, 3)
    sentence_level: bool = True
    positive_pairs: Sequence[tuple[str, str]] | None = None
    positives_split: StsSplit = "dev"
    positive_threshold: float = 4.0
    positive_at_threshold: bool | None = None
    alignment_alpha: float = 2.0
    uniformity_t: float = 2.0
    top_changes: int = 10
    max_length: int | None = 128
    batch_tokens: int = 2048
    batch_size: int = 64
    max_memory_mb: float = 1024.0
    seed: int = 0

    def resolved(self) -> GeometryConfig:
        """A copy with the convention's values filled in, validated."""
        check_choice(self.convention, CONVENTIONS, "convention")
        filled = {name: value for name, value in CONVENTIONS[self.convention].items() if getattr(self, name) is None}
        config = dataclasses.replace(self, **filled)
        check_choice(config.occurrences, Occurrences, "occurrences")
        check_choice(config.rogue_pairs, RoguePairs, "rogue_pairs")
        if min(config.anisotropy_sentences, config.informativity_tokens) < 2 or config.anisotropy_resamples < 1:
            raise ValueError("anisotropy_sentences and informativity_tokens need >= 2, anisotropy_resamples >= 1")
        return config

    def record(self) -> dict[str, object]:
        """JSON-ready settings (positive pairs by count only)."""
        record = dataclasses.asdict(self)
        record["positive_pairs"] = None if self.positive_pairs is None else len(self.positive_pairs)
        record["rogue_remove"] = list(self.rogue_remove)
        return record


class SelfSimilarityState(NamedTuple):
    """What a later probe needs from a reference model: last-layer per-type self-similarity and A_L."""

    per_type: dict[str, float]
    anisotropy_last: float


@dataclass
class GeometryResult:
    """Flat metrics `<metric>/layer_<l>` plus sentence-level summaries, with sample sizes under the same keys."""

    convention: str
    config: dict[str, object]  # resolved: the convention's values filled in
    num_sentences: int  # probe sentences
    metrics: dict[str, float]
    sample_sizes: dict[str, int]
    per_layer: list[dict[str, float]]
    type_self_similarity: dict[str, float]
    type_counts: dict[str, int]
    type_changes: dict[str, list[tuple[str, float]]] = field(default_factory=dict)

    @property
    def reference_state(self) -> SelfSimilarityState:
        """The state to pass as `reference` to later probes (compute once at step 0)."""
        return SelfSimilarityState(self.type_self_similarity, self.per_layer[-1]["anisotropy"])

    def to_json(self) -> str:
        """All values with their sample sizes and the convention; NaN (undefined) becomes null."""
        return to_strict_json(dataclasses.asdict(self))


def probe_sentences(split: StsSplit = "test", num_sentences: int | None = None) -> list[str]:
    """The first sentence of the first `num_sentences` (None: all) STS-B pairs of a split."""
    return [row[0] for row in read_sts_b(split)][:num_sentences]


def positive_pairs(split: StsSplit = "dev", threshold: float = 4.0, at_threshold: bool = False) -> list[tuple[str, str]]:
    """STS-B pairs scoring above `threshold` (or equal to it, with `at_threshold`): alignment positives."""
    return [(s1, s2) for s1, s2, score in read_sts_b(split) if score > threshold or (at_threshold and score == threshold)]


def _draw_anisotropy(counts: torch.Tensor, starts: torch.Tensor, layers: int, config: GeometryConfig, generator: torch.Generator) -> torch.Tensor:
    """(layers, R, M) occurrences: M sentences without replacement, one uniform token of each."""
    pool = (counts > 0).nonzero().squeeze(1)
    sample = min(config.anisotropy_sentences, pool.numel())
    sets = (layers if config.redraw_per_layer else 1) * config.anisotropy_resamples
    chosen = pool[torch.rand(sets, pool.numel(), generator=generator).argsort(dim=1)[:, :sample]]
    offset = (torch.rand(sets, sample, generator=generator, dtype=ACCUMULATE) * counts[chosen]).long()
    draws = (starts[chosen] + offset).view(-1, config.anisotropy_resamples, sample)
    return draws.expand(layers, -1, -1)


def build_plan(encoder: SentenceEncoder, sentences: Sequence[str], config: GeometryConfig) -> Plan:
    """Tokenise once, order by length, size batches to the memory cap and draw all samples (`config` resolved)."""
    layers, hidden = encoder.num_layers + 1, encoder.hidden_size
    lengths, flat_ids, flat_keep = [], [], []
    for start in range(0, len(sentences), 256):
        batch = encoder.tokenize(list(sentences[start : start + 256]), config.max_length)
        attended = batch["attention_mask"].bool()
        mask = attended if config.include_specials else attended & ~encoder.special_mask(batch["input_ids"])
        lengths.append(attended.sum(1))
        flat_ids.append(batch["input_ids"][attended])
        flat_keep.append(mask[attended])
    lengths = torch.cat(lengths)
    order = torch.argsort(lengths, descending=True, stable=True)
    # the corpus's tokens regrouped in processing order (longest sentence first)
    sorted_lengths = lengths[order]
    sentence_of_token = torch.repeat_interleave(torch.arange(len(order)), sorted_lengths)
    offset_in_sentence = torch.arange(int(sorted_lengths.sum())) - (sorted_lengths.cumsum(0) - sorted_lengths)[sentence_of_token]
    source = (lengths.cumsum(0) - lengths)[order][sentence_of_token] + offset_in_sentence
    ids, keep = torch.cat(flat_ids)[source], torch.cat(flat_keep)[source]
    order = order.tolist()
    counts = torch.zeros(len(order), dtype=torch.long).index_add_(0, sentence_of_token, keep.long())
    starts = torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)])
    occurrences = int(starts[-1])
    if occurrences < 2:
        raise ValueError("the probe corpus has fewer than 2 tokens in the token set: give more or longer sentences")
    token_ids = ids[keep]
    sentence_ids = torch.repeat_interleave(torch.arange(len(order)), counts)
    selection = select_types(token_ids, sentence_ids, config.occurrences, config.min_occurrences, config.min_sentences)

    generator = torch.Generator().manual_seed(config.seed)
    anisotropy_draws = _draw_anisotropy(counts, starts, layers, config, generator)
    informativity_draws = torch.randperm(occurrences, generator=generator)[: config.informativity_tokens]

    # float64 sums per type, resample and layer (+ unit and squared-unit sums); the informativity
    # sample (float32); embeddings; token bookkeeping
    fixed = 8 * hidden * layers * (selection.type_ids.numel() + config.anisotropy_resamples + 2)
    fixed += 4 * hidden * (layers * informativity_draws.numel() + len(order)) + 64 * occurrences
    # after streaming, one layer at a time: informativity's float32 copies (4 per vector set) and uniformity's row chunks
    fixed += 16 * hidden * informativity_draws.numel() * (1 + len(config.rogue_remove))
    fixed += 32 * min(UNIFORMITY_CHUNK, len(order)) * len(order) if config.sentence_level else 0
    heads = getattr(encoder.backbone.config, "num_attention_heads", 16)
    budget = config.max_memory_mb * 2**20 - fixed
    batches, start = [], 0
    while start < len(order):
        length = int(sorted_lengths[start])
        # the model's hidden states of every layer (float32), its FFN activations and attention scores
        per_token = 4 * hidden * layers + 32 * hidden + 12 * heads * length
        size = min(max(1, config.batch_tokens // length), int(budget // (per_token * length)), len(order) - start)
        if size < 1:
            raise ValueError(
                f"max_memory_mb={config.max_memory_mb} is too small: the accumulators take {fixed / 2**20:.1f} MB "
                f"and one sentence of {length} tokens needs {per_token * length / 2**20:.1f} MB more; raise max_memory_mb"
            )
        batches.append((start, start + size))
        start += size
    token_start = F.pad(sorted_lengths.cumsum(0), (1, 0))
    return Plan(order, ids, keep, sorted_lengths, token_start, batches, starts, selection, anisotropy_draws, informativity_draws)


def _sentence_level(encoder: SentenceEncoder, embeddings: torch.Tensor, config: GeometryConfig) -> dict[str, Measure]:
    """Uniformity over the probe sentences' inference embeddings; alignment over the positive pairs."""
    pairs = list(config.positive_pairs) if config.positive_pairs is not None else positive_pairs(
        config.positives_split, config.positive_threshold, config.positive_at_threshold
    )
    measures = {"uniformity": uniformity(embeddings, config.uniformity_t)}  # geometry/uniformity
    if pairs:
        left = encoder.encode([a for a, _ in pairs], config.batch_size, config.max_length)
        right = encoder.encode([b for _, b in pairs], config.batch_size, config.max_length)
        measures["alignment"] = alignment(left, right, config.alignment_alpha)  # geometry/alignment
    return measures


def geometry_probe(
    encoder: SentenceEncoder,
    sentences: Sequence[str] | None = None,
    config: GeometryConfig | None = None,
    reference: GeometryResult | SelfSimilarityState | None = None,
) -> GeometryResult:
    """All section-6 geometry metrics for layers 0..L of `encoder` on `sentences` (default: the config's STS-B split).

    `reference` is an earlier result (or its `reference_state`), e.g. from step 0, for the
    per-type self-similarity change. The model runs in eval mode without gradients and
    gets its train/eval mode back afterwards.
    """
    config = (config or GeometryConfig()).resolved()
    sentences = list(sentences) if sentences is not None else probe_sentences(config.split, config.num_sentences)
    with eval_mode(encoder), torch.no_grad():
        plan = build_plan(encoder, sentences, config)
        sums, embeddings = stream(encoder, plan, config.rogue_pairs == "distinct", config.sentence_level)
        columns = layer_metrics(sums, config.rogue_remove)
        summaries = _sentence_level(encoder, embeddings, config) if config.sentence_level else {}

    layers = encoder.num_layers + 1
    per_layer = [{name: float(m.value[layer]) for name, m in columns.items()} for layer in range(layers)]
    metrics = {f"{name}/layer_{layer}": row[name] for layer, row in enumerate(per_layer) for name in row}
    sample_sizes = {f"{name}/layer_{layer}": columns[name].n for layer in range(layers) for name in columns}
    metrics.update({name: float(m.value) for name, m in summaries.items()})
    sample_sizes.update({name: m.n for name, m in summaries.items()})

    tokens = encoder.tokenizer.convert_ids_to_tokens(plan.selection.type_ids.tolist())
    per_type_last = self_similarity(sums.type_unit_sums[-1], sums.type_counts)
    result = GeometryResult(
        convention=config.convention,
        config=config.record(),
        num_sentences=len(sentences),
        metrics=metrics,
        sample_sizes=sample_sizes,
        per_layer=per_layer,
        type_self_similarity=dict(zip(tokens, per_type_last.tolist())),
        type_counts=dict(zip(tokens, plan.selection.counts.tolist())),
    )
    if reference is not None:
        state = reference.reference_state if isinstance(reference, GeometryResult) else reference
        changes = self_similarity_change(result.type_self_similarity, per_layer[-1]["anisotropy"], *state)
        ranked = sorted(changes.items(), key=lambda item: item[1], reverse=True)
        # geometry/self_similarity_change
        result.metrics["self_similarity_change"] = sum(changes.values()) / len(changes) if changes else math.nan
        result.sample_sizes["self_similarity_change"] = len(changes)
        result.type_changes = {
            "increased": [item for item in ranked[: config.top_changes] if item[1] > 0],
            "decreased": [item for item in ranked[::-1][: config.top_changes] if item[1] < 0],
        }
    return result
