"""Save a SentenceEncoder in sentence-transformers format, atomically.

`SentenceTransformer(path)` then returns the same embeddings as `SentenceEncoder` at
inference: same pooling, the SimCSE MLP when it is used at inference (as a Tanh `Dense`),
the Dense layers the model was loaded with, the model's own normalisation, and the training
similarity as `similarity_fn_name`.
"""

from __future__ import annotations

import copy
import os
import tempfile
from pathlib import Path

import torch

from ctrain.encoder import SentenceEncoder

try:  # sentence-transformers >= 6
    from sentence_transformers.sentence_transformer.modules import Dense, Normalize, Pooling, Transformer
except ImportError:  # earlier releases
    from sentence_transformers.models import Dense, Normalize, Pooling, Transformer

SIMILARITY_NAMES = {"cos": "cosine", "dot": "dot"}


def save_sentence_transformer(
    encoder: SentenceEncoder, path: str | Path, similarity: str = "cos", max_seq_length: int = 128
) -> Path:
    """Write `encoder` to `path` (replacing it only once the new copy is complete)."""
    from sentence_transformers import SentenceTransformer

    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{target.name}.") as scratch:
        source = Path(scratch) / "backbone"
        backbone = copy.deepcopy(encoder.backbone).float().cpu()
        backbone.save_pretrained(source)
        encoder.tokenizer.save_pretrained(source)
        modules: list[torch.nn.Module] = [Transformer(str(source), max_seq_length=max_seq_length)]
        pooler = encoder.pooler
        modules.append(Pooling(encoder.hidden_size, pooling_mode="mean" if pooler.mode == "mean" else pooler.mode[:3]))
        if pooler.mlp is not None and not pooler.mlp_only_train:
            linear = pooler.mlp[0]
            modules.append(
                Dense(
                    encoder.hidden_size,
                    encoder.hidden_size,
                    activation_function=torch.nn.Tanh(),
                    init_weight=linear.weight.detach().float().cpu().clone(),
                    init_bias=linear.bias.detach().float().cpu().clone(),
                )
            )
        modules.extend(copy.deepcopy(layer).float().cpu() for layer in encoder.dense)
        if encoder.normalize:
            modules.append(Normalize())
        model = SentenceTransformer(modules=modules, device="cpu", similarity_fn_name=SIMILARITY_NAMES[similarity])
        staged = Path(scratch) / "model"
        model.save(str(staged))
        previous = Path(scratch) / "previous"
        if target.exists():
            os.replace(target, previous)  # moved aside, removed with the scratch directory
        os.replace(staged, target)
    return target

