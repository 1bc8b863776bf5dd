"""How two sentence embeddings are compared: the one table of similarity names, read by the training
objectives, the training module's diagnostics and the export to sentence-transformers."""

from __future__ import annotations

from typing import Literal, NamedTuple

Similarity = Literal["cos", "dot"]


class SimilarityKind(NamedTuple):
    st_name: str  # sentence-transformers' `similarity_fn_name`
    normalized: bool  # embeddings scaled to unit length first: similarities bounded by 1


SIMILARITIES: dict[str, SimilarityKind] = {
    "cos": SimilarityKind("cosine", normalized=True),
    "dot": SimilarityKind("dot", normalized=False),  # inner product: the word-weighting theorem's setting
}
