"""sentence-transformers' module classes, under the names of any supported release (ctrain loads and writes them)."""

try:  # sentence-transformers >= 6
    from sentence_transformers.sentence_transformer.modules import (
        Dense,
        Normalize,
        Pooling,
        Transformer,
    )
except ImportError:  # earlier releases
    from sentence_transformers.models import Dense, Normalize, Pooling, Transformer

__all__ = ["Dense", "Normalize", "Pooling", "Transformer"]
