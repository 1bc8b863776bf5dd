"""Semantic textual similarity (docs/metrics.md, "Training and evaluation").

`StsEvaluator` is the one way ctrain scores STS: validation and testing while training, pre-training, the exported
models' cards and `ctrain probe` all call it, as sentence-transformers' trainers call an
`EmbeddingSimilarityEvaluator` (its pairs and its encoding settings in one object, called on a model).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from scipy.stats import spearmanr
from torch import Tensor

StsRow = tuple[str, str, float]  # (sentence 1, sentence 2, gold score)


def sts_spearman(embeddings1: Tensor, embeddings2: Tensor, gold_scores: Tensor) -> tuple[float, int]:
    """(Spearman x 100 between gold scores and pair cosines, number of pairs)."""
    if not embeddings1.shape == embeddings2.shape or embeddings1.shape[0] != gold_scores.shape[0]:
        raise ValueError(
            f"STS inputs disagree: {tuple(embeddings1.shape)}, {tuple(embeddings2.shape)}, {tuple(gold_scores.shape)}"
        )
    cosines = F.cosine_similarity(embeddings1.double(), embeddings2.double(), dim=-1)
    correlation = spearmanr(cosines.cpu().numpy(), gold_scores.double().cpu().numpy()).statistic
    return float(correlation) * 100.0, int(gold_scores.shape[0])


@dataclass(frozen=True)
class StsEvaluator:
    """STS Spearman x100 of an encoder on (s1, s2, gold score) rows: `evaluator(encoder) -> (spearman, pairs)`.

    Each column is embedded by the encoder's `encode` (eval mode, `batch_size` sentences a batch, `max_length`
    tokens a sentence); the pair cosines are ranked against the gold scores (`sts_spearman`). Every process that
    calls it scores all the pairs, so under DDP the value needs no gathering.
    """

    rows: Sequence[StsRow]
    batch_size: int = 64
    max_length: int | None = 128

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"STS batch size {self.batch_size}: give at least 1 sentence a batch")
        if self.max_length is not None and self.max_length < 3:
            raise ValueError(f"STS max length {self.max_length}: give at least 3 tokens ([CLS], a word, [SEP])")

    def __call__(self, encoder: torch.nn.Module) -> tuple[float, int]:
        first, second = (encoder.encode([row[column] for row in self.rows], batch_size=self.batch_size, max_length=self.max_length) for column in (0, 1))
        return sts_spearman(first, second, torch.tensor([row[2] for row in self.rows]))
