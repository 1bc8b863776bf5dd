"""The geometry metrics (docs/metrics.md, "Geometry") as pure functions of accumulated sums.

Every per-layer value that `GeometryProbe` logs as `geometry/<name>/layer_<l>` is computed in
`layer_metrics` below, from the sufficient statistics in `LayerSums`; the sentence-level values
(`geometry/alignment`, `geometry/uniformity`, `geometry/self_similarity_change`) by the functions
of the same names. Mean cosines over many pairs come in closed form from sums of unit vectors,
`(||sum u||^2 - n) / (n (n - 1))`, so no pair matrix is built. Leading dimensions (layers,
resamples) batch. Sums arrive in float64 (sums over tens of thousands of unit vectors lose
precision in float32).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ctrain.runtime import check_choice

ACCUMULATE = torch.float64
UNIFORMITY_CHUNK = 256

Occurrences = Literal["first_per_sentence", "all"]
RoguePairs = Literal["distinct", "with_self"]


class Measure(NamedTuple):
    """A metric value with the number of units it was computed from."""

    value: Tensor
    n: int


def closed_form_mean_cosine(unit_sum: Tensor, count: Tensor | int) -> Tensor:
    """Mean cosine over distinct pairs of n unit vectors from their sum: (||s||^2 - n) / (n(n-1))."""
    n = torch.as_tensor(count, dtype=unit_sum.dtype, device=unit_sum.device)
    return (unit_sum.pow(2).sum(-1) - n) / (n * (n - 1))


# ---------------------------------------------------------------------------------------
# Anisotropy baseline A_l


def anisotropy(sample_unit_sums: Tensor, sample_size: int) -> tuple[Tensor, Tensor]:
    """Mean and sample std (ddof 1; 0 for one resample) over resamples of the mean cosine of M random tokens.

    `sample_unit_sums` (..., R, d) holds, per resample, the sum of the M drawn tokens' unit vectors.
    """
    per_resample = closed_form_mean_cosine(sample_unit_sums, sample_size)
    spread = per_resample.std(-1) if per_resample.shape[-1] > 1 else torch.zeros_like(per_resample[..., 0])
    return per_resample.mean(-1), spread


# ---------------------------------------------------------------------------------------
# Self-similarity of token types (Ethayarajh 2019)


@dataclass(frozen=True)
class TypeSelection:
    """Which occurrences feed self-similarity: `slot[i]` is the type slot of occurrence i or -1."""

    type_ids: Tensor  # (T,) token id of each qualifying type
    slot: Tensor  # (N,) slot in 0..T-1 for used occurrences of qualifying types, else -1
    counts: Tensor  # (T,) used occurrences per qualifying type


def select_types(
    token_ids: Tensor,
    sentence_ids: Tensor,
    occurrences: Occurrences = "first_per_sentence",
    min_occurrences: int = 5,
    min_sentences: int = 5,
) -> TypeSelection:
    """Qualify types and map the occurrences their self-similarity uses to type slots.

    `first_per_sentence` uses one occurrence per sentence (the first), so every pair is from two
    different contexts, as Ethayarajh defines it; `all` also pairs repeats inside one sentence. A
    type qualifies with `min_occurrences` occurrences in total, in `min_sentences` sentences, and
    >= 2 used occurrences (a mean over pairs needs a pair).
    """
    check_choice(occurrences, Occurrences, "occurrences")
    token_ids, sentence_ids = token_ids.long().cpu(), sentence_ids.long().cpu()
    vocab = int(token_ids.max()) + 1 if token_ids.numel() else 1
    _, inverse = torch.unique(sentence_ids * vocab + token_ids, return_inverse=True)
    position = torch.arange(token_ids.numel())
    first_index = torch.full((int(inverse.max()) + 1 if inverse.numel() else 0,), token_ids.numel(), dtype=torch.long)
    first_index.scatter_reduce_(0, inverse, position, reduce="amin")
    first = torch.zeros(token_ids.numel(), dtype=torch.bool)
    first[first_index] = True
    used = first if occurrences == "first_per_sentence" else torch.ones_like(first)
    total = torch.bincount(token_ids, minlength=vocab)
    sentences = torch.bincount(token_ids[first], minlength=vocab)
    used_count = torch.bincount(token_ids[used], minlength=vocab)
    qualifies = (total >= min_occurrences) & (sentences >= min_sentences) & (used_count >= 2)
    type_ids = qualifies.nonzero().squeeze(1)
    lookup = torch.full((vocab,), -1, dtype=torch.long)
    lookup[type_ids] = torch.arange(type_ids.numel())
    slot = torch.where(used, lookup[token_ids], -1)
    return TypeSelection(type_ids, slot, used_count[type_ids])


def self_similarity(type_unit_sums: Tensor, counts: Tensor) -> Tensor:
    """Per type (..., T), the mean cosine over distinct pairs of its used occurrences, from their unit sums (..., T, d)."""
    return closed_form_mean_cosine(type_unit_sums, counts)


def self_similarity_change(
    current: dict[str, float], anisotropy_last: float, reference: dict[str, float], reference_anisotropy_last: float
) -> dict[str, float]:
    """(ss_w - A_L) - (ss_w_ref - A_L_ref) for the types present in both, keyed by type."""
    return {
        token: (current[token] - anisotropy_last) - (reference[token] - reference_anisotropy_last)
        for token in current.keys() & reference.keys()
    }


# ---------------------------------------------------------------------------------------
# Intra-sentence similarity and norms


def intra_similarity(unit_sums: Tensor, vector_sums: Tensor, counts: Tensor) -> Tensor:
    """Per sentence, mean over its n tokens of cos(h_t, m), m the sentence's mean vector, from the
    sentence's sums of unit and of raw vectors: sum_t cos(h_t, m) = (sum_t u_t) . m / ||m||, and m
    points along sum_t h_t."""
    dot = (unit_sums * vector_sums).sum(-1)
    return dot / vector_sums.norm(dim=-1).clamp_min(1e-12) / counts.clamp_min(1)


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


# ---------------------------------------------------------------------------------------
# Rogue dimensions (Timkey and van Schijndel 2021) and informativity


def rogue_shares(unit_sum: Tensor, unit_square_sum: Tensor | None = None) -> Tensor:
    """Share CC_i of dimension i in the mean cosine of a set of unit vectors u_t with sum s (..., d).

    With `unit_square_sum` (sum_t u_ti^2 per dimension) the pairs are distinct tokens,
    CC_i = (s_i^2 - sum_t u_ti^2) / (||s||^2 - M); without it each token's pair with itself is
    included, CC_i = s_i^2 / ||s||^2 (self-pairs, which dominate near isotropy). Either way the
    shares add up to 1; distinct-pair shares can be negative, and are unstable when the mean
    cosine is near 0.
    """
    squared = unit_sum.to(ACCUMULATE).pow(2)
    if unit_square_sum is not None:
        squared = squared - unit_square_sum.to(ACCUMULATE)
    return squared / squared.sum(-1, keepdim=True)


def rogue_summary(shares: Tensor) -> dict[str, Tensor]:
    """Shares of the 1st/2nd/3rd largest dimension, and the fewest dimensions whose shares add up to 10/20/50%."""
    ordered = shares.sort(dim=-1, descending=True).values
    cumulative = ordered.cumsum(-1)

    def dimensions_for(fraction: float) -> Tensor:
        needed = (cumulative < fraction).sum(-1) + 1
        return needed.clamp_max(shares.shape[-1]).to(ACCUMULATE)

    return {
        "rogue_top1": ordered[..., 0],
        "rogue_top2": ordered[..., 1],
        "rogue_top3": ordered[..., 2],
        "rogue_dims_10": dimensions_for(0.1),
        "rogue_dims_20": dimensions_for(0.2),
        "rogue_dims_50": dimensions_for(0.5),
    }


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
    float64: exact). The diagonal (i = j) is taken out in float64.
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
    return [
        Measure(pair_covariance(0, index).pow(2) / (variance_u * pair_covariance(index, index)), count)
        for index in range(1, len(sets))
    ]


# ---------------------------------------------------------------------------------------
# Sentence level (Wang and Isola 2020)


def alignment(x: Tensor, y: Tensor, alpha: float = 2.0) -> Measure:
    """E ||f(x) - f(y)||^alpha over positive pairs of L2-normalised embeddings (lower = closer)."""
    difference = F.normalize(x.to(ACCUMULATE), dim=-1) - F.normalize(y.to(ACCUMULATE), dim=-1)
    return Measure(difference.norm(dim=-1).pow(alpha).mean(), x.shape[0])


def uniformity(
    x: Tensor, t: float = 2.0, chunk_rows: int = UNIFORMITY_CHUNK, compute_dtype: torch.dtype = torch.float32
) -> Measure:
    """log E exp(-t ||f(x_i) - f(x_j)||^2) over distinct pairs of L2-normalised embeddings.

    Row chunks against the later rows only, so each pair is computed once. The distances and
    exponentials run in `compute_dtype` (float32: relative error ~1e-7), the log-sum in float64.
    """
    units = F.normalize(x.to(ACCUMULATE), dim=-1).to(compute_dtype)
    count = units.shape[0]
    partial = []
    for start in range(0, count - 1, chunk_rows):
        rows, later = units[start : start + chunk_rows], units[start + 1 :]
        squared = (2 - 2 * rows @ later.T).clamp_min(0)
        # row start+r pairs with later rows start+1+c for c >= r
        pairs = torch.arange(later.shape[0], device=units.device) >= torch.arange(rows.shape[0], device=units.device).unsqueeze(1)
        partial.append(torch.logsumexp((-t * squared).masked_fill(~pairs, -math.inf).flatten(), 0).to(ACCUMULATE))
    return Measure(torch.logsumexp(torch.stack(partial), 0) - math.log(count * (count - 1) // 2), count)


# ---------------------------------------------------------------------------------------
# Every per-layer value, from the accumulated sums


@dataclass
class LayerSums:
    """Sufficient statistics of the token set at every layer (leading dimension L+1), in float64."""

    unit_sum: Tensor  # (L+1, d) sum of the unit vectors of all tokens
    unit_square_sum: Tensor | None  # (L+1, d) sum_t u_ti^2 per dimension; None when rogue shares include self-pairs
    type_unit_sums: Tensor  # (L+1, T, d) per qualifying type, over its used occurrences
    type_counts: Tensor  # (T,) used occurrences per qualifying type
    anisotropy_unit_sums: Tensor  # (L+1, R, d) per resample, over its M drawn tokens
    anisotropy_sample: int  # M
    intra_sum: Tensor  # (L+1,) sum over sentences of their intra-sentence similarity
    sentences: int  # sentences with at least one token in the set
    norms: Moments  # of ||h_l(t)||, (L+1,)
    informativity_sample: Tensor  # (L+1, K, d) the sampled tokens' vectors, in the model's dtype


def layer_metrics(sums: LayerSums, rogue_remove: Sequence[int] = (1, 3)) -> dict[str, Measure]:
    """Every per-layer metric (L+1,) with its sample size; `GeometryProbe` logs each as `geometry/<name>/layer_<l>`.

    Rogue shares exclude self-pairs when `sums.unit_square_sum` is present. Informativity drops
    each layer's top-k dimensions by those shares, for each k in `rogue_remove`.
    """
    tokens = int(sums.norms.count[0])
    baseline, spread = anisotropy(sums.anisotropy_unit_sums, sums.anisotropy_sample)
    types = sums.type_counts.numel()
    self_sim = self_similarity(sums.type_unit_sums, sums.type_counts.to(sums.type_unit_sums.device)).mean(-1)
    intra = sums.intra_sum / sums.sentences
    columns = {
        "anisotropy": Measure(baseline, sums.anisotropy_sample),  # geometry/anisotropy/layer_<l>
        "anisotropy_std": Measure(spread, sums.anisotropy_unit_sums.shape[-2]),  # geometry/anisotropy_std/layer_<l>
        "self_similarity": Measure(self_sim, types),  # geometry/self_similarity/layer_<l>
        "self_similarity_adjusted": Measure(self_sim - baseline, types),  # geometry/self_similarity_adjusted/layer_<l>
        "intra_similarity": Measure(intra, sums.sentences),  # geometry/intra_similarity/layer_<l>
        "intra_similarity_adjusted": Measure(intra - baseline, sums.sentences),  # geometry/intra_similarity_adjusted/...
        "norm_mean": Measure(sums.norms.mean, tokens),  # geometry/norm_mean/layer_<l>
        "norm_std": Measure(sums.norms.std(), tokens),  # geometry/norm_std/layer_<l>
    }
    shares = rogue_shares(sums.unit_sum, sums.unit_square_sum)
    # geometry/rogue_top1..3/layer_<l>, geometry/rogue_dims_10|20|50/layer_<l>
    columns.update({name: Measure(value, tokens) for name, value in rogue_summary(shares).items()})
    ranked = shares.argsort(dim=-1, descending=True)
    per_layer = [  # one layer at a time keeps the float32 copies of the sample small
        informativity_r2(sample, [ranked[layer, :k] for k in rogue_remove])
        for layer, sample in enumerate(sums.informativity_sample)
    ]
    for index, k in enumerate(rogue_remove):  # geometry/informativity_r2_k1/layer_<l>, ..._k3 by default
        columns[f"informativity_r2_k{k}"] = Measure(torch.stack([m[index].value for m in per_layer]), per_layer[0][index].n)
    return columns
