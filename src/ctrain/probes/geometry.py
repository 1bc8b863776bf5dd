"""Geometry of the representation space, per layer (probe spec section 6).

For every layer 0..L of an encoder on a probe corpus: the anisotropy baseline A_l,
self-similarity of token types, intra-sentence similarity (raw and minus A_l), token
norms, rogue-dimension shares, informativity after removing rogue dimensions, and at
the sentence level alignment and uniformity (Wang and Isola) plus the per-type
self-similarity change against a reference model.

Why it is built this way: mean cosines over many pairs are computed in closed form
from sums of unit vectors, `(||sum u||^2 - n) / (n (n - 1))`, and the informativity
correlation from d x d Gram matrices, so no N x N matrix is built except uniformity's row
chunks. Hidden states are streamed batch by batch (sentences sorted by length, up to
`batch_tokens` tokens a batch) and never turned into unit vectors: per layer, one norm,
one bmm and one sparse product give every sum the metrics need. Within a batch this runs
in the model's float32; sums across batches are float64 (sums over tens of thousands of
unit vectors lose precision in float32). All random draws are made up front from a local
`torch.Generator`, so results do not depend on batching or on the memory cap, and the
global RNG is never touched.

Decisions where the spec is open (each one a `GeometryConfig` field where reasonable
people differ):

- Token set: PAD never; [CLS]/[SEP]-style specials per `include_specials`. "Special"
  is `SentenceEncoder.special_mask`, i.e. the tokenizer's `all_special_ids`, which
  also contains UNK. With specials included they are token types for self-similarity
  too (isotropy2023 says "in every metric").
- Self-similarity: "different contexts" = distinct occurrences (positions). A type
  qualifies with `min_occurrences` occurrences in total in the token set (counted over
  all occurrences even when only the first per sentence is used), in at least
  `min_sentences` sentences (default 1, isotropy2023 2), and at least 2 used
  occurrences (otherwise the mean over pairs is undefined). Layer value = unweighted
  mean over qualifying types. Types are keyed by token string.
- Anisotropy: sentences are drawn without replacement from those with at least one
  token in the token set, then one token uniformly among that sentence's tokens.
  `default` uses the same draw for every layer (paired comparison across layers),
  `isotropy2023` redraws per layer (`redraw_per_layer`). Value = mean over
  `anisotropy_resamples` resamples (default 10); spread = their std (ddof 1).
- Intra-sentence similarity: sentences with no token in the set are skipped; a
  one-token sentence contributes 1.
- Norm std: sample std (ddof 1), from streamed moments (Chan's merge).
- Rogue dimensions: `s` sums the unit vectors of *all* tokens of the set at that
  layer. `rogue_top{1,2,3}` are the shares of the 1st/2nd/3rd largest dimension
  individually (add them for a cumulative share); `rogue_dims_{10,20,50}` is the
  smallest number of dimensions whose shares add up to >= 10/20/50%.
- Informativity: `informativity_tokens` occurrences drawn uniformly without
  replacement (same sample for every layer); the top-k rogue dims of that layer (from
  the full-set shares) are zeroed; r^2 is the squared Pearson correlation between the
  cosines of all distinct pairs before and after (k from `rogue_remove`).
- Alignment: positives are STS-B `positives_split` (default dev) pairs with gold score
  >= `positive_min_score` (default 4.0, as in SimCSE's alignment/uniformity plot), or
  `positive_pairs` if given; alpha = 2. Uniformity over the probe sentences'
  embeddings, t = 2, all distinct pairs. Embeddings are f(X) as at inference (the
  encoder's pooler on the same forward pass), L2-normalised for these two metrics.
- Self-similarity change: at the last layer, over the types qualifying in both
  models; `self_similarity_change` is their mean, and the result lists the
  `top_changes` types that rose and fell most.
- Sample sizes (`GeometryResult.sample_sizes`, same keys as `.metrics`): tokens for
  anisotropy/norm/rogue/informativity, resamples for spreads, types for
  self-similarity, sentences for intra-similarity and uniformity, pairs for alignment.
- Memory: `max_memory_mb` caps the estimated working set (accumulators, the
  informativity sample and its float32 copies, uniformity's row chunks, plus the
  per-token cost of one batch: the model's hidden states of every layer and its
  activations); batches are made smaller when needed. It is an estimate, not a hard
  limit: model weights, the tokenised corpus and the allocator's cache come on top.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ctrain.data import StsSplit, read_sts_b
from ctrain.encoder import eval_mode
from ctrain.probes.jsonio import to_strict_json

if TYPE_CHECKING:
    from ctrain.encoder import SentenceEncoder

Convention = Literal["default", "isotropy2023"]
Occurrences = Literal["all", "first"]
CONVENTIONS: dict[str, dict[str, object]] = {
    "default": {"include_specials": False, "occurrences": "all", "min_sentences": 1, "redraw_per_layer": False},
    "isotropy2023": {"include_specials": True, "occurrences": "first", "min_sentences": 2, "redraw_per_layer": True},
}
ROGUE_FRACTIONS = (0.1, 0.2, 0.5)
ROGUE_TOP = 3
ACCUMULATE = torch.float64
UNIFORMITY_CHUNK = 256


class Measure(NamedTuple):
    """A metric value with the number of units it was computed from."""

    value: Tensor
    n: int


# ---------------------------------------------------------------------------------------
# Pure metric functions. Vectors are (..., N, d); leading dimensions (e.g. layers) batch.


def unit_vectors(vectors: Tensor) -> Tensor:
    """Rows scaled to unit length, in float64 so that closed-form sums stay exact."""
    return F.normalize(vectors.to(ACCUMULATE), dim=-1)


def closed_form_mean_cosine(unit_sum: Tensor, count: Tensor | int) -> Tensor:
    """Mean cosine over distinct pairs of n unit vectors from their sum: (||s||^2 - n) / (n(n-1))."""
    n = torch.as_tensor(count, dtype=unit_sum.dtype, device=unit_sum.device)
    return (unit_sum.pow(2).sum(-1) - n) / (n * (n - 1))


def mean_pairwise_cosine(vectors: Tensor) -> Measure:
    """Mean cosine over distinct pairs of rows, e.g. the anisotropy sample A_l, without a pair matrix."""
    count = vectors.shape[-2]
    return Measure(closed_form_mean_cosine(unit_vectors(vectors).sum(-2), count), count)


@dataclass(frozen=True)
class TypeSelection:
    """Which occurrences feed self-similarity: `slot[i]` is the type slot of occurrence i or -1."""

    type_ids: Tensor  # (T,) token id of each qualifying type
    slot: Tensor  # (N,) slot in 0..T-1 for used occurrences of qualifying types, else -1
    counts: Tensor  # (T,) used occurrences per qualifying type


def select_types(
    token_ids: Tensor, sentence_ids: Tensor, occurrences: Occurrences = "all", min_occurrences: int = 5, min_sentences: int = 1
) -> TypeSelection:
    """Qualify types (occurrences in total, sentences, >= 2 used) and map used occurrences to type slots."""
    if occurrences not in ("all", "first"):
        raise ValueError(f"unknown occurrences '{occurrences}': choose all or first")
    token_ids, sentence_ids = token_ids.long().cpu(), sentence_ids.long().cpu()
    vocab = int(token_ids.max()) + 1 if token_ids.numel() else 1
    _, inverse = torch.unique(sentence_ids * vocab + token_ids, return_inverse=True)
    position = torch.arange(token_ids.numel())
    first_index = torch.full((int(inverse.max()) + 1 if inverse.numel() else 0,), token_ids.numel(), dtype=torch.long)
    first_index.scatter_reduce_(0, inverse, position, reduce="amin")
    first = torch.zeros(token_ids.numel(), dtype=torch.bool)
    first[first_index] = True
    used = first if occurrences == "first" else torch.ones_like(first)
    total = torch.bincount(token_ids, minlength=vocab)
    sentences = torch.bincount(token_ids[first], minlength=vocab)
    used_count = torch.bincount(token_ids[used], minlength=vocab)
    qualifies = (total >= min_occurrences) & (sentences >= min_sentences) & (used_count >= 2)
    type_ids = qualifies.nonzero().squeeze(1)
    lookup = torch.full((vocab,), -1, dtype=torch.long)
    lookup[type_ids] = torch.arange(type_ids.numel())
    slot = torch.where(used, lookup[token_ids], -1)
    return TypeSelection(type_ids, slot, used_count[type_ids])


def type_self_similarity(unit_sums: Tensor, counts: Tensor) -> Measure:
    """Per-type mean cosine over distinct occurrence pairs from per-type unit sums (..., T, d); layer value = mean over types."""
    per_type = closed_form_mean_cosine(unit_sums, counts)
    return Measure(per_type, counts.numel())


def self_similarity(
    vectors: Tensor,
    token_ids: Tensor,
    sentence_ids: Tensor,
    occurrences: Occurrences = "all",
    min_occurrences: int = 5,
    min_sentences: int = 1,
) -> tuple[Tensor, Tensor, Measure]:
    """(type ids, per-type self-similarity (..., T), layer value = mean over types) of occurrence vectors (..., N, d)."""
    selection = select_types(token_ids, sentence_ids, occurrences, min_occurrences, min_sentences)
    used = selection.slot >= 0
    units = unit_vectors(vectors)[..., used.to(vectors.device), :]
    sums = units.new_zeros((*units.shape[:-2], selection.type_ids.numel(), units.shape[-1]))
    sums.index_add_(-2, selection.slot[used].to(units.device), units)
    per_type, count = type_self_similarity(sums, selection.counts.to(units.device))
    return selection.type_ids, per_type, Measure(per_type.mean(-1), count)


def intra_from_sums(unit_sums: Tensor, vector_sums: Tensor, counts: Tensor) -> Tensor:
    """Per sentence, mean over its n tokens of cos(h_t, m), from the sentence's sums of unit vectors
    and of raw vectors: sum_t cos(h_t, m) = (sum_t u_t) . m / ||m||, and m points along sum_t h_t."""
    dot = (unit_sums * vector_sums).sum(-1)
    return dot / vector_sums.norm(dim=-1).clamp_min(1e-12) / counts.clamp_min(1)


def intra_per_sentence(vectors: Tensor, sentence_ids: Tensor, num_sentences: int) -> tuple[Tensor, Tensor]:
    """Per sentence, mean over its tokens of cos(h(t), mean of the sentence's h): values (..., S), token counts (S,)."""
    vectors = vectors.to(ACCUMULATE)
    sentence_ids = sentence_ids.to(vectors.device)
    counts = torch.bincount(sentence_ids, minlength=num_sentences)
    shape = (*vectors.shape[:-2], num_sentences, vectors.shape[-1])
    vector_sums = vectors.new_zeros(shape).index_add_(-2, sentence_ids, vectors)
    unit_sums = vectors.new_zeros(shape).index_add_(-2, sentence_ids, unit_vectors(vectors))
    return intra_from_sums(unit_sums, vector_sums, counts), counts


def intra_sentence_similarity(vectors: Tensor, sentence_ids: Tensor) -> Measure:
    """Mean over sentences (those with >= 1 token) of the per-sentence intra similarity."""
    num_sentences = int(sentence_ids.max()) + 1 if sentence_ids.numel() else 0
    per_sentence, counts = intra_per_sentence(vectors, sentence_ids, num_sentences)
    present = counts > 0
    return Measure(per_sentence[..., present].mean(-1), int(present.sum()))


class Moments(NamedTuple):
    """Count, mean and sum of squared deviations, mergeable across batches (Chan et al.)."""

    count: Tensor
    mean: Tensor
    m2: Tensor

    @classmethod
    def of(cls, values: Tensor) -> Moments:
        """Moments of values (..., N) along the last dimension."""
        values = values.to(ACCUMULATE)
        mean = values.mean(-1)
        return cls(torch.full_like(mean, values.shape[-1]), mean, (values - mean.unsqueeze(-1)).pow(2).sum(-1))

    def merge(self, other: Moments) -> Moments:
        """Moments of the union of both samples, without revisiting the values."""
        count = self.count + other.count
        delta = other.mean - self.mean
        weight = other.count / count.clamp_min(1)
        return Moments(count, self.mean + delta * weight, self.m2 + other.m2 + delta.pow(2) * self.count * weight)

    def std(self) -> Tensor:
        """Sample standard deviation (ddof 1)."""
        return (self.m2 / (self.count - 1)).sqrt()


def norm_stats(vectors: Tensor) -> tuple[Measure, Measure]:
    """Mean and sample std of the token norms ||h(t)||."""
    moments = Moments.of(vectors.to(ACCUMULATE).norm(dim=-1))
    return Measure(moments.mean, vectors.shape[-2]), Measure(moments.std(), vectors.shape[-2])


def rogue_shares_from_sum(unit_sum: Tensor) -> Tensor:
    """CC_i = s_i^2 / ||s||^2: share of dimension i in the mean cosine of the set whose unit vectors sum to s."""
    squared = unit_sum.to(ACCUMULATE).pow(2)
    return squared / squared.sum(-1, keepdim=True)


def rogue_shares(vectors: Tensor) -> Measure:
    """Rogue-dimension shares (..., d) of a set of vectors (..., N, d); they sum to 1."""
    return Measure(rogue_shares_from_sum(unit_vectors(vectors).sum(-2)), vectors.shape[-2])


def rogue_summary(shares: Tensor) -> dict[str, Tensor]:
    """Top-1/2/3 individual shares and how many dimensions make 10/20/50% of the mean cosine."""
    ordered = shares.sort(dim=-1, descending=True).values
    cumulative = ordered.cumsum(-1)
    summary = {f"rogue_top{k + 1}": ordered[..., k] for k in range(min(ROGUE_TOP, shares.shape[-1]))}
    for fraction in ROGUE_FRACTIONS:
        needed = (cumulative < fraction).sum(-1) + 1
        summary[f"rogue_dims_{round(fraction * 100)}"] = needed.clamp_max(shares.shape[-1]).to(ACCUMULATE)
    return summary


def informativity_r2(
    vectors: Tensor, drop_sets: Sequence[Tensor], compute_dtype: torch.dtype = torch.float32
) -> list[Measure]:
    """For each set of dims to drop, (k,) or (..., k): r^2 between the cosines of all distinct pairs
    of a token sample (..., N, d) with and without those dims.

    Closed form, no N x N matrix. With rows x_i = mu + z_i (z centred), the sum over all
    (i, j) of (x_i.x_j)(y_i.y_j) is ||X^T Y||_F^2 and X^T Y = N mu_x mu_y^T + Z_x^T Z_y, so the
    covariance of pair cosines over all (i, j) is (2N sum_i (mu_x.z_i)(mu_y.w_i) + ||Z_x^T Z_y||^2) / N^2:
    d x d Gram matrices of centred vectors, which carry no large common offset and so can be
    computed in `compute_dtype` (float32: r^2 within ~1e-6, ~1e-5 where the cosines barely vary;
    float64: exact). The diagonal (i = j) is taken out in float64. Leading dimensions (e.g.
    layers) batch.
    """
    rows = vectors.to(compute_dtype)
    count = rows.shape[-2]
    sets, squared_norms = [], []
    masks = [None]
    for drop in drop_sets:
        kept = rows.new_ones(rows.shape[:-2] + rows.shape[-1:])
        masks.append(kept.scatter_(-1, drop.to(rows.device).expand(*kept.shape[:-1], -1), 0.0).unsqueeze(-2))
    for mask in masks:
        masked = rows if mask is None else rows * mask
        norms = masked.norm(dim=-1, keepdim=True)
        scale = 1 / norms.clamp_min(1e-12)  # as F.normalize: a zero vector stays zero
        sets.append(masked * scale)
        squared_norms.append((norms * scale).squeeze(-1).to(ACCUMULATE).pow(2))  # 1, or 0 for a zero vector
    means = [unit.mean(-2, keepdim=True) for unit in sets]
    centred = [unit - mean for unit, mean in zip(sets, means)]
    offsets = [(z @ mean.mT).squeeze(-1).to(ACCUMULATE) for z, mean in zip(centred, means)]  # mu.z_i
    mean_squares = [mean.squeeze(-2).to(ACCUMULATE).pow(2).sum(-1) for mean in means]  # |mu|^2

    def pair_mean(first: int) -> Tensor:
        """Mean over i < j of x_i.x_j."""
        return (count**2 * mean_squares[first] - squared_norms[first].sum(-1)) / (count * (count - 1))

    def pair_covariance(first: int, second: int) -> Tensor:
        """Covariance over i < j of (x_i.x_j) and (y_i.y_j)."""
        gram = (centred[first].mT @ centred[second]).to(ACCUMULATE)
        centred_sum = 2 * count * (offsets[first] * offsets[second]).sum(-1) + gram.pow(2).sum((-2, -1))
        all_pairs = centred_sum + count**2 * mean_squares[first] * mean_squares[second]
        diagonal = (squared_norms[first] * squared_norms[second]).sum(-1)
        return (all_pairs - diagonal) / (count * (count - 1)) - pair_mean(first) * pair_mean(second)

    variance_u = pair_covariance(0, 0)
    measures = []
    for index in range(1, len(sets)):
        r2 = pair_covariance(0, index).pow(2) / (variance_u * pair_covariance(index, index))
        measures.append(Measure(r2, count))
    return measures


def alignment(x: Tensor, y: Tensor, alpha: float = 2.0) -> Measure:
    """Wang and Isola alignment E ||f(x) - f(y)||^alpha over positive pairs of normalised embeddings (lower = closer)."""
    difference = unit_vectors(x) - unit_vectors(y)
    return Measure(difference.norm(dim=-1).pow(alpha).mean(), x.shape[0])


def uniformity(
    x: Tensor, t: float = 2.0, chunk_rows: int = UNIFORMITY_CHUNK, compute_dtype: torch.dtype = torch.float32
) -> Measure:
    """Wang and Isola uniformity log E exp(-t ||f(x_i) - f(x_j)||^2) over distinct pairs.

    Row chunks against the later rows only, so each pair is computed once. The distances and
    exponentials run in `compute_dtype` (float32: relative error ~1e-7), the log-sum in float64.
    """
    units = unit_vectors(x).to(compute_dtype)
    count = units.shape[0]
    partial = []
    for start in range(0, count - 1, chunk_rows):
        rows, later = units[start : start + chunk_rows], units[start + 1 :]
        squared = (2 - 2 * rows @ later.T).clamp_min(0)
        # row start+r pairs with later rows start+1+c for c >= r
        pairs = torch.arange(later.shape[0], device=units.device) >= torch.arange(rows.shape[0], device=units.device).unsqueeze(1)
        partial.append(torch.logsumexp((-t * squared).masked_fill(~pairs, -math.inf).flatten(), 0).to(ACCUMULATE))
    return Measure(torch.logsumexp(torch.stack(partial), 0) - math.log(count * (count - 1) // 2), count)


def self_similarity_change(
    current: dict[str, float], anisotropy_last: float, reference: dict[str, float], reference_anisotropy_last: float
) -> dict[str, float]:
    """(ss_w - A_L) - (ss_w_ref - A_L_ref) for the types present in both, keyed by type."""
    return {
        token: (current[token] - anisotropy_last) - (reference[token] - reference_anisotropy_last)
        for token in current.keys() & reference.keys()
    }


# ---------------------------------------------------------------------------------------
# Configuration, result and runner.


@dataclass
class GeometryConfig:
    """Settings of the geometry probe; fields left None take the convention's value."""

    convention: Convention = "default"
    include_specials: bool | None = None
    occurrences: Occurrences | None = None
    min_occurrences: int = 5
    min_sentences: int | None = None
    redraw_per_layer: bool | None = None
    anisotropy_sentences: int = 1000
    anisotropy_resamples: int = 10
    informativity_tokens: int = 1000
    rogue_remove: tuple[int, ...] = (1, 3)
    sentence_level: bool = True
    positive_pairs: Sequence[tuple[str, str]] | None = None
    positives_split: StsSplit = "dev"
    positive_min_score: float = 4.0
    alignment_alpha: float = 2.0
    uniformity_t: float = 2.0
    top_changes: int = 10
    max_length: int | None = 128
    batch_tokens: int = 2048  # streamed batches: sentences, longest first, up to this many tokens (at least one)
    batch_size: int = 64  # sentences per batch when embedding the alignment pairs
    max_memory_mb: float = 1024.0
    seed: int = 0

    def resolved(self) -> GeometryConfig:
        """A copy with the convention's values filled in, validated."""
        if self.convention not in CONVENTIONS:
            raise ValueError(f"unknown convention '{self.convention}': choose one of {', '.join(CONVENTIONS)}")
        filled = {name: value for name, value in CONVENTIONS[self.convention].items() if getattr(self, name) is None}
        config = dataclasses.replace(self, **filled)
        if config.occurrences not in ("all", "first"):
            raise ValueError(f"unknown occurrences '{config.occurrences}': choose all or first")
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
    config: dict[str, object]
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


def probe_sentences(split: StsSplit = "test") -> list[str]:
    """The first sentence of each STS-B pair of a split (isotropy2023's probe corpus; also the default one)."""
    return [row[0] for row in read_sts_b(split)]


def positive_pairs(split: StsSplit = "dev", min_score: float = 4.0) -> list[tuple[str, str]]:
    """STS-B pairs with gold score >= min_score, used as alignment positives."""
    return [(s1, s2) for s1, s2, score in read_sts_b(split) if score >= min_score]


class _Plan(NamedTuple):
    """Tokenised corpus in processing order, batches, and the up-front random draws."""

    order: list[int]  # corpus index of each sentence in processing order
    ids: Tensor  # token ids of all sentences, concatenated in processing order (no padding)
    keep: Tensor  # token-set mask of the same tokens
    lengths: Tensor  # (S,) tokens per sentence, processing order (longest first)
    token_start: Tensor  # (S + 1,) index in `ids` of each sentence's first token
    batches: list[tuple[int, int]]  # sentence ranges in processing order
    occurrence_start: Tensor  # (S + 1,) first occurrence index of each sentence
    selection: TypeSelection
    anisotropy_draws: Tensor  # (L + 1, R, M) occurrence indices
    informativity_draws: Tensor  # (K,) occurrence indices


def _draw_anisotropy(counts: Tensor, starts: Tensor, layers: int, config: GeometryConfig, generator: torch.Generator) -> Tensor:
    """(layers, R, M) occurrences: M sentences without replacement, one uniform token of each."""
    pool = (counts > 0).nonzero().squeeze(1)
    sample = min(config.anisotropy_sentences, pool.numel())
    sets = (layers if config.redraw_per_layer else 1) * config.anisotropy_resamples
    chosen = pool[torch.rand(sets, pool.numel(), generator=generator).argsort(dim=1)[:, :sample]]
    offset = (torch.rand(sets, sample, generator=generator, dtype=ACCUMULATE) * counts[chosen]).long()
    draws = (starts[chosen] + offset).view(-1, config.anisotropy_resamples, sample)
    return draws.expand(layers, -1, -1)


def _plan(encoder: SentenceEncoder, sentences: list[str], config: GeometryConfig) -> _Plan:
    """Tokenise once, order by length, size batches to the memory cap and draw all samples."""
    layers, hidden = encoder.num_layers + 1, encoder.hidden_size
    lengths, flat_ids, flat_keep = [], [], []
    for start in range(0, len(sentences), 256):
        batch = encoder.tokenize(sentences[start : start + 256], config.max_length)
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
        raise ValueError("the probe corpus has fewer than 2 tokens in the token set")
    token_ids = ids[keep]
    sentence_ids = torch.repeat_interleave(torch.arange(len(order)), counts)
    selection = select_types(token_ids, sentence_ids, config.occurrences, config.min_occurrences, config.min_sentences)

    generator = torch.Generator().manual_seed(config.seed)
    anisotropy_draws = _draw_anisotropy(counts, starts, layers, config, generator)
    informativity_draws = torch.randperm(occurrences, generator=generator)[: config.informativity_tokens]

    # float64 sums per type, resample and layer; the informativity sample (float32); embeddings; token bookkeeping
    fixed = 8 * hidden * layers * (selection.type_ids.numel() + config.anisotropy_resamples + 1)
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
                f"and one sentence of {length} tokens needs {per_token * length / 2**20:.1f} MB more"
            )
        batches.append((start, start + size))
        start += size
    token_start = F.pad(sorted_lengths.cumsum(0), (1, 0))
    return _Plan(order, ids, keep, sorted_lengths, token_start, batches, starts, selection, anisotropy_draws, informativity_draws)


class _BatchIndex(NamedTuple):
    """Which of a batch's occurrences feed which sums, sorted as its CSR rows need them (occurrence indices)."""

    first: int  # the batch's first occurrence
    summed: Tensor  # per layer, the occurrences its type and resample sums take, in CSR row order, concatenated
    per_layer: list[int]  # how many of `summed` belong to each layer
    row_starts: Tensor  # (L+1, present types + R + 1) CSR row pointers
    present_types: Tensor  # the type slots whose sums come first, in that order
    info_occurrences: Tensor  # informativity draws on this batch
    info_columns: Tensor  # their places in the informativity sample


def _batch_indices(plan: _Plan, layers: int) -> list[_BatchIndex]:
    """Split the selection and the random draws by batch, each group pre-sorted, with a few global sorts."""
    bounds = plan.occurrence_start[[begin for begin, _ in plan.batches] + [len(plan.order)]]
    batch_count = len(plan.batches)

    def batch_of(occurrences: Tensor) -> Tensor:
        return torch.searchsorted(bounds, occurrences, right=True) - 1

    def per_batch(values: Tensor, batch: Tensor) -> list[Tensor]:
        return list(values.split(torch.bincount(batch, minlength=batch_count).tolist()))

    types = max(plan.selection.type_ids.numel(), 1)  # (no qualifying type: nothing below is used)
    used = (plan.selection.slot >= 0).nonzero().squeeze(1)
    slot = plan.selection.slot[used]
    order = (batch_of(used) * types + slot).argsort(stable=True)  # by batch, then type, then occurrence
    used, slot = used[order], slot[order]
    key = batch_of(used) * types + slot
    groups, group_counts = torch.unique_consecutive(key, return_counts=True)
    group_batch = groups // types

    resamples, sample = plan.anisotropy_draws.shape[1:]
    draws = plan.anisotropy_draws.reshape(-1)
    rows = torch.arange(draws.numel()) // sample  # layer * R + resample
    key = batch_of(draws) * (layers * resamples) + rows
    order = (key * (int(bounds[-1]) + 1) + draws).argsort()  # by batch, (layer, resample), occurrence
    draws, key = draws[order], key[order]
    draw_counts = torch.bincount(key, minlength=batch_count * layers * resamples).view(batch_count, layers, resamples)

    info, info_columns = plan.informativity_draws.sort()
    info_batch = batch_of(info)
    indices = []
    for batch, (type_occurrences, present, counts, batch_draws, info_occurrences, columns) in enumerate(
        zip(
            per_batch(used, batch_of(used)),
            per_batch(groups % types, group_batch),
            per_batch(group_counts, group_batch),
            per_batch(draws, batch_of(draws)),
            per_batch(info, info_batch),
            per_batch(info_columns, info_batch),
        )
    ):
        layer_draws = batch_draws.split(draw_counts[batch].sum(1).tolist())
        summed = torch.cat([torch.cat([type_occurrences, layer]) for layer in layer_draws])
        per_layer = [type_occurrences.numel() + layer.numel() for layer in layer_draws]
        row_starts = F.pad(torch.cat([counts.expand(layers, -1), draw_counts[batch]], 1).cumsum(1), (1, 0))
        indices.append(_BatchIndex(int(bounds[batch]), summed, per_layer, row_starts, present, info_occurrences, columns))
    return indices


class _Accumulators:
    """Per-layer running sums over streamed batches; everything the metrics need, nothing per token."""

    def __init__(self, plan: _Plan, layers: int, hidden: int, device: torch.device) -> None:
        def zeros(*shape: int) -> Tensor:
            return torch.zeros(*shape, hidden, dtype=ACCUMULATE, device=device)

        self.unit_sum = zeros(layers)
        # (types, L+1, d) and (resamples, L+1, d): a batch adds whole rows of every layer at once
        self.type_sums = zeros(plan.selection.type_ids.numel(), layers)
        self.anisotropy_sums = zeros(plan.anisotropy_draws.shape[1], layers)
        self.informativity = zeros(layers, plan.informativity_draws.numel()).float()  # the model's own values
        self.norms = Moments(*(torch.zeros(layers, dtype=ACCUMULATE, device=device) for _ in range(3)))
        self.intra_sum = torch.zeros(layers, dtype=ACCUMULATE, device=device)
        self.intra_sentences = 0
        self.embeddings: list[Tensor] = []
        self.resamples, self.sample = plan.anisotropy_draws.shape[1:]

    def add(self, hidden_states: Sequence[Tensor], keep: Tensor, index: _BatchIndex) -> None:
        """Fold one batch: padded states (B, len, d) per layer and the token-set mask (B, len).

        Unit vectors are never materialised for all tokens. Per layer, one bmm with weights
        keep/||h|| and keep gives each sentence's sums of unit and raw vectors, and one sparse
        product with values 1/||h|| gives the unit sums of each type present and of each
        anisotropy resample. These run in the model's float32 over one batch; everything that
        crosses batches is accumulated in float64.
        """
        position = keep.flatten().nonzero().squeeze(1)  # padded position of each occurrence
        if position.numel() == 0:  # e.g. sentences of special tokens only, with specials excluded
            return
        device = keep.device
        columns = keep.numel()
        resamples, layers, hidden = self.anisotropy_sums.shape
        present_types = index.present_types.to(device)
        summed = position[index.summed.to(device) - index.first].split(index.per_layer)
        row_starts = index.row_starts.to(device)
        sum_rows = row_starts.shape[1] - 1

        weights = keep.float()
        scaled = torch.stack([weights, weights], 1)  # (B, 2, len): row 0 becomes keep/||h|| per layer
        sentence_sums, token_norms, set_sums = [], [], []
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Sparse CSR tensor support is in beta")
            for layer, states in enumerate(hidden_states):
                states = states.float()
                norms = states.norm(dim=-1)
                inverse = torch.div(weights, norms.clamp_min(1e-12), out=scaled[:, 0])  # a zero vector stays zero
                sentence_sums.append(torch.bmm(scaled, states))  # (B, 2, d): sums of unit and of raw vectors
                token_norms.append(norms)
                rows, scale = states.reshape(columns, hidden), inverse.flatten()
                to_sums = torch.sparse_csr_tensor(
                    row_starts[layer], summed[layer], scale[summed[layer]], (sum_rows, columns), check_invariants=False
                )
                set_sums.append(to_sums @ rows)  # (present types + resamples, d)
        set_sums = torch.stack(set_sums, 1).to(ACCUMULATE)  # (present types + resamples, L+1, d)
        self.type_sums.index_add_(0, present_types, set_sums[: present_types.numel()])
        self.anisotropy_sums += set_sums[present_types.numel() :]

        sentence_sums = torch.stack(sentence_sums)  # (L+1, B, 2, d)
        unit_sums, vector_sums = sentence_sums[:, :, 0], sentence_sums[:, :, 1]
        self.unit_sum += unit_sums.sum(1).to(ACCUMULATE)
        counts = keep.sum(1)
        present = counts > 0
        intra = intra_from_sums(unit_sums, vector_sums, counts)  # per sentence, float32 is enough
        self.intra_sum += intra[:, present].to(ACCUMULATE).sum(-1)
        self.intra_sentences += int(present.sum())
        self.norms = self.norms.merge(Moments.of(torch.stack(token_norms).flatten(1)[:, position]))
        info_position = position[index.info_occurrences.to(device) - index.first]
        picked = torch.stack([states.reshape(columns, hidden)[info_position] for states in hidden_states])
        self.informativity[:, index.info_columns.to(device)] = picked.float()


def _stream(encoder: SentenceEncoder, plan: _Plan, config: GeometryConfig) -> _Accumulators:
    """Run the model batch by batch and fold each batch's hidden states into the accumulators."""
    device = next(encoder.parameters()).device
    layers = encoder.num_layers + 1
    accumulators = _Accumulators(plan, layers, encoder.hidden_size, device)
    pad = encoder.tokenizer.pad_token_id
    for (begin, end), index in zip(plan.batches, _batch_indices(plan, layers)):
        lengths = plan.lengths[begin:end]
        tokens = slice(int(plan.token_start[begin]), int(plan.token_start[end]))
        attended = torch.arange(int(lengths[0])) < lengths.unsqueeze(1)  # longest sentence first
        input_ids = torch.full(attended.shape, pad, dtype=plan.ids.dtype).masked_scatter_(attended, plan.ids[tokens])
        keep = torch.zeros_like(attended).masked_scatter_(attended, plan.keep[tokens])
        attention_mask = attended.long().to(device)
        output = encoder.token_states(input_ids=input_ids.to(device), attention_mask=attention_mask, output_hidden_states=True)
        accumulators.add(output.hidden_states, keep.to(device), index)
        if config.sentence_level:
            accumulators.embeddings.append(encoder.pooler(output.last_hidden_state, attention_mask).float())
    return accumulators


def _layer_columns(accumulators: _Accumulators, plan: _Plan, config: GeometryConfig) -> dict[str, Measure]:
    """Per-layer metric vectors (L+1,) with their sample sizes, from the accumulated sums."""
    anisotropy = closed_form_mean_cosine(accumulators.anisotropy_sums.transpose(0, 1), accumulators.sample)  # (L+1, R)
    spread = anisotropy.std(-1) if accumulators.resamples > 1 else torch.zeros_like(anisotropy[:, 0])
    baseline = anisotropy.mean(-1)
    counts = plan.selection.counts.to(baseline.device)
    per_type, types = type_self_similarity(accumulators.type_sums.transpose(0, 1), counts)
    self_sim = per_type.mean(-1)
    intra = accumulators.intra_sum / accumulators.intra_sentences
    tokens = int(plan.occurrence_start[-1])
    sentences = accumulators.intra_sentences
    columns = {
        "anisotropy": Measure(baseline, accumulators.sample),
        "anisotropy_std": Measure(spread, accumulators.resamples),
        "self_similarity": Measure(self_sim, types),
        "self_similarity_adjusted": Measure(self_sim - baseline, types),
        "intra_similarity": Measure(intra, sentences),
        "intra_similarity_adjusted": Measure(intra - baseline, sentences),
        "norm_mean": Measure(accumulators.norms.mean, tokens),
        "norm_std": Measure(accumulators.norms.std(), tokens),
    }
    shares = rogue_shares_from_sum(accumulators.unit_sum)
    columns.update({name: Measure(value, tokens) for name, value in rogue_summary(shares).items()})
    ranked = shares.argsort(dim=-1, descending=True)
    per_layer = [  # one layer at a time keeps the float32 copies of the sample small
        informativity_r2(sample, [ranked[layer, :k] for k in config.rogue_remove])
        for layer, sample in enumerate(accumulators.informativity)
    ]
    for index, k in enumerate(config.rogue_remove):
        columns[f"informativity_r2_k{k}"] = Measure(torch.stack([m[index].value for m in per_layer]), per_layer[0][index].n)
    return columns


def _sentence_level(encoder: SentenceEncoder, accumulators: _Accumulators, config: GeometryConfig) -> dict[str, Measure]:
    """Alignment over positive pairs and uniformity over the probe sentences' inference embeddings."""
    pairs = list(config.positive_pairs) if config.positive_pairs is not None else positive_pairs(
        config.positives_split, config.positive_min_score
    )
    measures = {"uniformity": uniformity(torch.cat(accumulators.embeddings), config.uniformity_t)}
    if pairs:
        left = encoder.encode([a for a, _ in pairs], config.batch_size, config.max_length)
        right = encoder.encode([b for _, b in pairs], config.batch_size, config.max_length)
        measures["alignment"] = alignment(left, right, config.alignment_alpha)
    return measures


def geometry_probe(
    encoder: SentenceEncoder,
    sentences: Sequence[str] | None = None,
    config: GeometryConfig | None = None,
    reference: GeometryResult | SelfSimilarityState | None = None,
) -> GeometryResult:
    """All section-6 geometry metrics for layers 0..L of `encoder` on `sentences` (default: STS-B test first sentences).

    `reference` is an earlier result (or its `reference_state`), e.g. from step 0, for the
    per-type self-similarity change. The model runs in eval mode without gradients and
    gets its train/eval mode back afterwards.
    """
    config = (config or GeometryConfig()).resolved()
    sentences = list(sentences) if sentences is not None else probe_sentences()
    with eval_mode(encoder), torch.no_grad():
        plan = _plan(encoder, sentences, config)
        accumulators = _stream(encoder, plan, config)
        columns = _layer_columns(accumulators, plan, config)
        summaries = _sentence_level(encoder, accumulators, config) if config.sentence_level else {}

    layers = encoder.num_layers + 1
    per_layer = [{name: float(m.value[layer]) for name, m in columns.items()} for layer in range(layers)]
    metrics = {f"{name}/layer_{layer}": row[name] for layer, row in enumerate(per_layer) for name in row}
    sample_sizes = {f"{name}/layer_{layer}": columns[name].n for layer in range(layers) for name in columns}
    metrics.update({name: float(m.value) for name, m in summaries.items()})
    sample_sizes.update({name: m.n for name, m in summaries.items()})

    tokens = encoder.tokenizer.convert_ids_to_tokens(plan.selection.type_ids.tolist())
    per_type_last = closed_form_mean_cosine(accumulators.type_sums[:, -1], plan.selection.counts.to(accumulators.type_sums.device))
    result = GeometryResult(
        convention=config.convention,
        config=config.record(),
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
        result.metrics["self_similarity_change"] = sum(changes.values()) / len(changes) if changes else math.nan
        result.sample_sizes["self_similarity_change"] = len(changes)
        result.type_changes = {
            "increased": [item for item in ranked[: config.top_changes] if item[1] > 0],
            "decreased": [item for item in ranked[::-1][: config.top_changes] if item[1] < 0],
        }
    return result


def format_layer_table(result: GeometryResult, metrics: Sequence[str] | None = None) -> str:
    """Per-layer table for the terminal: one row per layer, one column per metric (6 significant digits shown)."""
    names = list(metrics) if metrics is not None else list(result.per_layer[0])
    widths = [max(11, len(name)) for name in names]
    lines = [f"geometry ({result.convention})", "layer " + " ".join(n.rjust(w) for n, w in zip(names, widths))]
    for layer, row in enumerate(result.per_layer):
        lines.append(f"{layer:>5} " + " ".join(f"{row[n]:>{w}.6g}" for n, w in zip(names, widths)))
    summaries = {k: v for k, v in result.metrics.items() if "/layer_" not in k}
    lines.extend(f"{name}: {value:.6g} (n={result.sample_sizes[name]})" for name, value in summaries.items())
    for direction, items in result.type_changes.items():
        lines.append(f"self-similarity {direction} most: " + ", ".join(f"{token} {value:+.4f}" for token, value in items))
    return "\n".join(lines)
