"""Theorem 1 of the word-weighting theory measured directly (docs/metrics.md, "Keys").

The theory predicts ``0.5 ||w||^2 ~ KL(w)`` (slope 1) for a mean-pooled encoder
trained with an inner-product objective. We regress ``0.5 ||w||^2`` on ``KL(w)``.

Decisions the papers leave open:

- The vector of a multi-position unit (a word of several subwords) is the *sum* of
  its positions' vectors by default (its total contribution to a mean-pooled sum), or
  their mean (``word_vector="mean"``). With token units both are the position's vector.
- The input vector of a type is the mean over its occurrences of their input vectors:
  exactly its word-embedding row for token units; for word units the mean over the
  tokenisations the word had in the corpus.
- "Averaged per type" for last-layer states averages the *vectors* of the occurrences
  and then takes ``0.5 ||mean||^2`` (``type_average="vectors"``, the type's static
  vector, as for the input rows), or averages ``0.5 ||h||^2`` (``type_average="norms"``).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from torch import Tensor

from ctrain.probes.weighting.regression import Regression, ols
from ctrain.runtime import check_choice

WordVector = Literal["sum", "mean"]
TypeAverage = Literal["vectors", "norms"]


def vectors_per_unit(states: Tensor, unit_of_position: Tensor, num_units: int, word_vector: WordVector = "sum") -> Tensor:
    """One vector per unit from per-position vectors (B, n, h); ``unit_of_position`` is -1 at specials."""
    check_choice(word_vector, WordVector, "word_vector")
    valid = unit_of_position.ge(0)
    index = unit_of_position[valid]
    sums = torch.zeros(num_units, states.shape[-1], dtype=torch.float64, device=states.device)
    sums.index_add_(0, index, states[valid].double())
    if word_vector == "sum":
        return sums
    return sums / torch.bincount(index, minlength=num_units).clamp_min(1).unsqueeze(1)


def type_means(vectors: Tensor, types: np.ndarray) -> tuple[np.ndarray, Tensor]:
    """Distinct types and the mean of their rows."""
    present, inverse = np.unique(types, return_inverse=True)
    index = torch.from_numpy(inverse).to(vectors.device)
    sums = torch.zeros(len(present), *vectors.shape[1:], dtype=vectors.dtype, device=vectors.device).index_add_(0, index, vectors)
    return present, sums / torch.bincount(index, minlength=len(present)).view(-1, *[1] * (vectors.dim() - 1))


def half_squared_norm(vectors: Tensor) -> np.ndarray:
    """``0.5 ||v||^2`` of each row."""
    return (0.5 * vectors.double().pow(2).sum(-1)).cpu().numpy()


def theorem_regressions(
    input_vectors: Tensor,
    last_vectors: Tensor,
    types: np.ndarray,
    kl: np.ndarray,
    type_average: TypeAverage = "vectors",
) -> dict[str, Regression]:
    """OLS (with Spearman) of ``0.5 ||w||^2`` on ``KL(w)`` for input rows (per type) and last-layer states (per occurrence, per type).

    ``input_vectors`` and ``last_vectors`` hold one row per unit occurrence, ``types``
    their type index into ``kl`` (only occurrences the caller wants in the fit). Any per-type
    quantity can stand for ``kl`` (the probe also passes dKL and -log P).
    """
    check_choice(type_average, TypeAverage, "type_average")
    input_types, input_means = type_means(input_vectors, types)
    last_norms = torch.from_numpy(half_squared_norm(last_vectors))
    if type_average == "vectors":
        last_types, last_means = type_means(last_vectors, types)
        last_type_norms = half_squared_norm(last_means)
    else:
        last_types, last_mean_norms = type_means(last_norms, types)
        last_type_norms = last_mean_norms.numpy()
    return {
        "input": ols(kl[input_types], half_squared_norm(input_means), spearman=True),
        "last": ols(kl[types], last_norms.numpy(), spearman=True),
        "last_type": ols(kl[last_types], last_type_norms, spearman=True),
    }
