"""Semantic textual similarity (docs/metrics.md, "Training and evaluation")."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from scipy.stats import spearmanr
from torch import Tensor


def sts_spearman(embeddings1: Tensor, embeddings2: Tensor, gold_scores: Tensor) -> tuple[float, int]:
    """(Spearman x 100 between gold scores and pair cosines, number of pairs)."""
    if not embeddings1.shape == embeddings2.shape or embeddings1.shape[0] != gold_scores.shape[0]:
        raise ValueError(
            f"STS inputs disagree: {tuple(embeddings1.shape)}, {tuple(embeddings2.shape)}, {tuple(gold_scores.shape)}"
        )
    cosines = F.cosine_similarity(embeddings1.double(), embeddings2.double(), dim=-1)
    correlation = spearmanr(cosines.cpu().numpy(), gold_scores.double().cpu().numpy()).statistic
    return float(correlation) * 100.0, int(gold_scores.shape[0])


def encoder_sts(encoder: torch.nn.Module, rows: list[tuple[str, str, float]], batch_size: int = 64) -> tuple[float, int]:
    """STS Spearman of an encoder with an `encode(sentences)` method on (s1, s2, score) rows."""
    first = encoder.encode([row[0] for row in rows], batch_size=batch_size)
    second = encoder.encode([row[1] for row in rows], batch_size=batch_size)
    return sts_spearman(first, second, torch.tensor([row[2] for row in rows]))
