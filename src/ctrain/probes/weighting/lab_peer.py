"""The Theorem-1 lab's input-row fits of any table of token rows, and gensim's word2vec, the lab's peer.

`LabProbe` measures a (vocab, width) table of rows on the lab's points (docs/theorem_lab.md, callbacks/theorem_lab.yaml,
`split: training`): the 300 probe sentences drawn with seed 0 from the lab's training texts (the 10,566 unique STS-B
train sentences), the token statistics (`KL`, `dKL`, `-log P`, include_self, 5 shuffles, seed 0) of those texts at 32
tokens, types seen at least 5 times, one point per type, OLS of `0.5 ||w||^2` of the rows with Spearman
(`theorem_regressions`, as `weighting_probe` calls it). For a model's input rows it gives exactly the lab's
`weighting/theorem_input*` numbers (tests/test_lab_peer.py checks it), so that a table no ctrain run trained (word2vec's)
is measured as the lab measures its runs. benchmarks/lab/lab_peer.py sets word2vec beside ctrain's `sgns` with it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ctrain.data.sources import sts_b_examples
from ctrain.models.encoder import load_encoder
from ctrain.probes.sentences import sample_sentences
from ctrain.probes.weighting.config import WeightingConfig
from ctrain.probes.weighting.information import segment
from ctrain.probes.weighting.theorem import theorem_regressions, vectors_per_unit

LAB_MAX_LENGTH = 32  # the lab presets' max_length


@dataclass(frozen=True)
class Fit:
    slope: float
    r2: float
    spearman: float
    n: int


def lab_training_tokens(tokenizer) -> tuple[list[str], list[list[str]]]:
    """The lab's training sentences (unique STS-B train: data.train sts-b, keep_eval_overlap) and their tokens as the lab trains on them."""
    sentences = [example[0] for example in sts_b_examples(supervised=False, keep_eval_overlap=True)]
    seg = segment(tokenizer, sentences, "tokens", LAB_MAX_LENGTH)
    tokens: list[list[str]] = [[] for _ in sentences]
    for sentence, token in zip(seg.unit_sentence.tolist(), seg.unit_types):
        tokens[sentence].append(token)
    return sentences, tokens


class LabProbe:
    """The lab's theorem fits of any (vocab, width) table of token rows, by ctrain's functions."""

    def __init__(self, tokenizer=None, num_sentences: int = 300, min_count: int = 5) -> None:
        config = WeightingConfig(max_length=LAB_MAX_LENGTH)  # the rest as the lab presets leave it: the defaults
        self.tokenizer = tokenizer or load_encoder("bag-bert").tokenizer
        corpus, _ = lab_training_tokens(self.tokenizer)  # the presets' split: training, the texts the lab trains on
        self.statistics = config.statistics(self.tokenizer, corpus)
        self.sentences = sample_sentences(corpus, num_sentences, config.seed)
        self.segmentation = segment(self.tokenizer, self.sentences, config.units, config.max_length)
        types = self.statistics.index(self.segmentation.unit_types)
        keep = types >= 0
        keep[keep] = self.statistics.eligible(min_count)[types[keep]]
        self.keep, self.types = torch.from_numpy(keep), types[keep]
        self.values = {
            "kl": self.statistics.kl,
            "dkl": self.statistics.dkl,
            "selfinfo": self.statistics.self_information,
        }

    def fits(self, table: torch.Tensor) -> dict[str, Fit]:
        """Input-row fits on KL, dKL and -log P; a NaN row (a type the model never had) drops out of the fit."""
        seg = self.segmentation
        rows = table.detach().double().cpu()[seg.input_ids]
        vectors = vectors_per_unit(rows, seg.unit_of_position, seg.num_units, "sum")[self.keep]
        result = {}
        for quantity, values in self.values.items():
            fit = theorem_regressions(vectors, vectors, self.types, values)["input"]
            result[quantity] = Fit(fit.slope, fit.r2, fit.spearman, fit.n)
        return result


def train_word2vec(
    tokens: Sequence[Sequence[str]],
    *,
    width: int,
    epochs: int,
    negative: int,
    ns_exponent: float,
    min_count: int,
    seed: int,
    workers: int = 1,
    alpha: float = 0.025,
    min_alpha: float = 0.0001,
    callbacks: Sequence = (),
):
    """gensim's skip-gram word2vec with the pairs ctrain's `sgns` trains on, but for a position's pair with itself.

    Negative sampling only (hs=0), no subsampling of frequent words (sample=0) and a window of the whole sentence at
    every position (the longest sentence's length, shrink_windows=False): every ordered pair of a sentence's tokens.
    The rate decays linearly from `alpha` to `min_alpha` over all `epochs`; `callbacks` are gensim's (per epoch).
    """
    from gensim.models import Word2Vec  # the `peer` extra

    window = max(len(sentence) for sentence in tokens)
    model = Word2Vec(
        vector_size=width, window=window, shrink_windows=False, min_count=min_count, sg=1, hs=0, negative=negative,
        ns_exponent=ns_exponent, sample=0, workers=workers, seed=seed, alpha=alpha, min_alpha=min_alpha,
    )  # fmt: skip
    model.build_vocab(tokens)
    model.train(tokens, total_examples=len(tokens), epochs=epochs, callbacks=list(callbacks))
    return model


def gensim_rows(model, tokenizer, vectors: np.ndarray) -> torch.Tensor:
    """word2vec's rows in the tokenizer's (vocab, width) layout; NaN for the types it did not keep (out of every fit)."""
    table = torch.full((len(tokenizer), vectors.shape[1]), math.nan, dtype=torch.float64)
    ids = tokenizer.convert_tokens_to_ids(list(model.wv.index_to_key))
    table[torch.tensor(ids)] = torch.from_numpy(np.asarray(vectors, dtype=np.float64))
    return table
