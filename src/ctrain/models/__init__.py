"""Encoders: loading any Hugging Face or sentence-transformers model (encoder), pooling, the bag-of-embeddings
encoder (bag), tokenizers that need no hub, and the export to sentence-transformers format (export)."""
