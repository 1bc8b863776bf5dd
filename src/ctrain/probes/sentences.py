"""The sentences a word-weighting probe weighs and the corpus its statistics come from (STS-B)."""

from __future__ import annotations

import random
from typing import Literal

from ctrain.data.sources import read_sts_b
from ctrain.runtime import check_choice

Columns = Literal["first", "both"]


def sts_b_sentences(split: str, columns: Columns = "both") -> list[str]:
    """The sentences of an STS-B split: the first of each pair, or both (pair by pair, first then second)."""
    check_choice(columns, Columns, "columns")
    rows = read_sts_b(split)
    return [row[0] for row in rows] if columns == "first" else [sentence for row in rows for sentence in row[:2]]


def sample_sentences(sentences: list[str], num_sentences: int | None, seed: int) -> list[str]:
    """``num_sentences`` of ``sentences`` drawn at random without replacement (seeded), in corpus order; all when None."""
    if num_sentences is None or num_sentences >= len(sentences):
        return list(sentences)
    if num_sentences < 1:
        raise ValueError(f"num_sentences must be >= 1 (or null for all), got {num_sentences}")
    chosen = sorted(random.Random(seed).sample(range(len(sentences)), num_sentences))
    return [sentences[i] for i in chosen]
