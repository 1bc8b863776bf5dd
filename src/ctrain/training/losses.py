"""Training objectives on sentence embeddings, computed in fp32.

The in-batch objectives take local anchors and candidates; under torch.distributed the
candidates of all processes are gathered so that every anchor sees the global
batch's negatives. The gather's backward sums the gradient that every process's
loss sends to a shard, so with DDP's gradient averaging the update equals the
single-process update on the same global batch (not just the loss).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from ctrain.models.similarity import SIMILARITIES, Similarity
from ctrain.runtime import check_choice


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward all-reduces the gradient and returns this rank's slice."""

    @staticmethod
    def forward(ctx, tensor: Tensor) -> Tensor:  # type: ignore[override]
        ctx.rank, ctx.size = dist.get_rank(), tensor.shape[0]
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.size : (ctx.rank + 1) * ctx.size]


def gather_across_processes(tensor: Tensor) -> tuple[Tensor, int]:
    """(concatenation over ranks, offset of this rank's rows); identity when not distributed.

    All ranks must hold the same number of rows (drop_last batches guarantee it).
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor, 0
    return _GatherWithGrad.apply(tensor), dist.get_rank() * tensor.shape[0]


def similarity_matrix(anchors: Tensor, candidates: Tensor, similarity: Similarity) -> Tensor:
    """(A, C) cosines or inner products, in fp32 whatever the autocast dtype."""
    check_choice(similarity, SIMILARITIES, "similarity")
    anchors, candidates = anchors.float(), candidates.float()
    if SIMILARITIES[similarity].normalized:
        anchors, candidates = F.normalize(anchors, dim=-1), F.normalize(candidates, dim=-1)
    with torch.autocast(device_type=anchors.device.type, enabled=False):
        return anchors @ candidates.T


def info_nce(
    anchors: Tensor,
    positives: Tensor,
    temperature: float,
    similarity: Similarity = "cos",
    hard_negatives: Tensor | None = None,
    hard_negative_weight: float = 0.0,
    *,
    symmetric: bool = False,
) -> Tensor:
    """SimCSE's InfoNCE: anchor i's positive is positives[i]; every other candidate is a negative.

    Candidates are the (gathered) positives, then the (gathered) hard negatives. As in
    SimCSE, `hard_negative_weight` is added to the logit of each anchor's own hard negative.
    `symmetric` averages both directions: anchors retrieve positives and positives retrieve anchors, the in-batch
    ranking loss of the all-* sentence-transformers models (MultipleNegativesSymmetricRankingLoss,
    scale = 1 / temperature); hard negatives are candidates of the anchor -> positive direction only, as there.
    """
    candidates, offset = gather_across_processes(positives)
    if hard_negatives is not None:
        gathered_negatives, _ = gather_across_processes(hard_negatives)
        candidates = torch.cat([candidates, gathered_negatives])
    logits = similarity_matrix(anchors, candidates, similarity) / temperature
    targets = torch.arange(anchors.shape[0], device=anchors.device) + offset
    if hard_negatives is not None and hard_negative_weight != 0.0:
        num_positives = candidates.shape[0] - gathered_negatives.shape[0]
        logits = logits.clone()
        logits[torch.arange(anchors.shape[0]), num_positives + targets] += hard_negative_weight
    loss = F.cross_entropy(logits, targets)
    if symmetric:
        loss = (loss + info_nce(positives, anchors, temperature, similarity)) / 2
    return loss


def pair_features(first: Tensor, second: Tensor) -> Tensor:
    """SBERT's classifier input (u, v, |u - v|), in fp32."""
    first, second = first.float(), second.float()
    return torch.cat([first, second, (first - second).abs()], dim=-1)


def pair_classifier_loss(first: Tensor, second: Tensor, labels: Tensor, classifier: torch.nn.Linear) -> Tensor:
    """SBERT's softmax classifier objective: cross-entropy of a linear classifier over (u, v, |u - v|).

    Each pair is its own example (no in-batch negatives), so nothing is gathered across processes.
    """
    with torch.autocast(device_type=first.device.type, enabled=False):
        logits = F.linear(pair_features(first, second), classifier.weight.float(), classifier.bias.float())
    return F.cross_entropy(logits, labels)


def replaced_token_detection_loss(logits: Tensor, replaced: Tensor, scored: Tensor) -> Tensor:
    """ELECTRA / DiffCSE discriminator loss: binary cross-entropy of "was this token replaced?".

    Averaged over the `scored` positions only (words: not [CLS]/[SEP]/PAD), which carry no signal
    elsewhere: special tokens are never replaced, and [CLS] holds the sentence embedding.
    """
    if not scored.any():
        raise ValueError("replaced-token detection has no scored tokens: the batch holds only special tokens")
    return F.binary_cross_entropy_with_logits(logits[scored].float(), replaced[scored].float())


def logistic_loss(
    anchors: Tensor,
    positives: Tensor,
    temperature: float,
    similarity: Similarity = "dot",
    num_negatives: int = 1,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Binary logistic objective of the word-weighting theorem's setting.

    -log sigma(<s, s+>/T) - sum over k random other sentences of log sigma(-<s, s->/T),
    averaged over anchors. Negatives are drawn from the (gathered) batch, never the
    anchor's own positive.
    """
    candidates, offset = gather_across_processes(positives)
    total = candidates.shape[0]
    if not 1 <= num_negatives < total:
        raise ValueError(f"num_negatives={num_negatives} must be between 1 and the global batch size - 1 ({total - 1})")
    logits = similarity_matrix(anchors, candidates, similarity) / temperature
    rows = torch.arange(anchors.shape[0], device=anchors.device)
    own = rows + offset
    # A random non-zero shift modulo the batch picks another sentence, uniformly.
    shifts = torch.randint(1, total, (anchors.shape[0], num_negatives), generator=generator).to(anchors.device)
    negatives = (own.unsqueeze(1) + shifts) % total
    positive_term = F.logsigmoid(logits[rows, own])
    negative_term = F.logsigmoid(-logits.gather(1, negatives)).sum(1)
    return -(positive_term + negative_term).mean()


def sgns_loss(words: Tensor, contexts: Tensor, negatives: Tensor) -> Tensor:
    """word2vec's skip-gram with negative sampling, averaged over pairs.

    -log sigma(<u_w, v_c>) - sum over k noise words n of log sigma(-<u_w, v_n>); ``words`` and
    ``contexts`` are (P, d), ``negatives`` (P, k, d). Per pair, not per batch, so no gathering.
    """
    words, contexts, negatives = words.float(), contexts.float(), negatives.float()
    positive = F.logsigmoid((words * contexts).sum(-1))
    negative = F.logsigmoid(-torch.einsum("pd,pkd->pk", words, negatives)).sum(-1)
    return -(positive + negative).mean()
