"""Information-theoretic quantities of token types (docs/metrics.md, "Information of a token type").

Everything is counted over a *statistics corpus* tokenised by the model's own
tokenizer. A *unit* is one occurrence of a type: a tokenizer token (``units="tokens"``,
the default) or a whole word (``units="words"``: consecutive positions with the same
``word_ids()`` value merged). Special tokens are never types.

Decisions the papers leave open:

- "Special" means ``tokenizer.all_special_ids`` except [UNK] (the same set as
  ``SentenceEncoder.special_mask``: [UNK] stands for a word of the sentence, so it is
  a type), plus any position whose ``word_ids()`` value is None.
- A token type is its token string (``convert_ids_to_tokens``), so RoBERTa's ``Ġthe``
  and ``the`` are different types. A word type is the decoded string of its subwords,
  stripped of surrounding spaces, so ``Ġthe`` and ``the`` are the same word.
- Statistics use the same truncation (``max_length``) as the probe inputs.
- ``P_sent(.|w)`` counts the occurrence of ``w`` itself by default (``include_self=True``:
  the paper's "sentences containing w"; the theorem's proof pairs ``w`` with its own
  copy); ``include_self=False`` leaves each occurrence out of its own context.
- ``KL(w)`` is NaN for a type whose occurrences have no other unit in their
  sentences (empty context distribution); regressions drop non-finite points.
- ``dKL``'s shuffled corpora permute all units of the corpus across sentences
  (each sentence keeps its length); the permutations come from a NumPy generator
  seeded by ``seed``, never from the global RNG.
- ``min_count`` is not applied here (all types are kept); ``TokenStatistics.eligible``
  gives the mask the regressions use.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from scipy import sparse
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from ctrain.models.encoder import word_special_ids
from ctrain.runtime import check_choice

Units = Literal["tokens", "words"]
UNITS: tuple[str, ...] = ("tokens", "words")


@dataclass(frozen=True)
class Segmentation:
    """Tokenised sentences and the units (type occurrences) at their positions.

    ``unit_of_position[b, t]`` is the unit index of position ``t`` of sentence ``b``,
    -1 at special positions; ``unit_sentence[u]`` is the sentence of unit ``u`` and
    ``unit_types[u]`` its type string. Units are numbered in reading order.
    """

    input_ids: Tensor
    attention_mask: Tensor
    unit_of_position: Tensor
    unit_sentence: Tensor
    unit_types: list[str]

    @property
    def num_units(self) -> int:
        return len(self.unit_types)


def segment(
    tokenizer: PreTrainedTokenizerBase, sentences: list[str], units: Units = "tokens", max_length: int | None = 128
) -> Segmentation:
    """Tokenise like ``SentenceEncoder.tokenize`` (right-aligned to the same positions) and find the units."""
    check_choice(units, UNITS, "units")
    encoding = tokenizer(
        list(sentences), padding=True, truncation=max_length is not None, max_length=max_length, return_tensors="pt"
    )
    input_ids = encoding["input_ids"]
    special_ids = torch.tensor(word_special_ids(tokenizer), dtype=torch.long)
    word_ids = torch.tensor(
        [[-1 if w is None else w for w in encoding.word_ids(b)] for b in range(input_ids.shape[0])], dtype=torch.long
    ).reshape(input_ids.shape)
    valid = ~torch.isin(input_ids, special_ids) & word_ids.ge(0)
    if units == "tokens":
        starts = valid
    else:
        previous = torch.nn.functional.pad(word_ids, (1, 0), value=-1)[:, :-1]
        previous_valid = torch.nn.functional.pad(valid, (1, 0), value=False)[:, :-1]
        starts = valid & (~previous_valid | word_ids.ne(previous))
    unit_of_position = torch.cumsum(starts.flatten().long(), 0).reshape(starts.shape) - 1
    unit_of_position = unit_of_position.masked_fill(~valid, -1)
    unit_sentence = torch.nonzero(starts)[:, 0]
    flat_ids = input_ids[valid].tolist()
    if units == "tokens":
        unit_types = tokenizer.convert_ids_to_tokens(flat_ids)
    else:
        boundaries = torch.bincount(unit_of_position[valid], minlength=int(starts.sum())).cumsum(0).tolist()
        pieces = [flat_ids[a:b] for a, b in zip([0, *boundaries[:-1]], boundaries)]
        unit_types = [word.strip() for word in tokenizer.batch_decode(pieces, clean_up_tokenization_spaces=False)]
    return Segmentation(input_ids, encoding["attention_mask"], unit_of_position, unit_sentence, unit_types)


def kl_information(sentence: np.ndarray, types: np.ndarray, num_types: int, include_self: bool = True) -> np.ndarray:
    """Plug-in ``KL(P_sent(.|w) || P)`` for every type, from one row per unit occurrence.

    With ``C[s, w]`` the count of ``w`` in sentence ``s``, the context counts are
    ``M = C^T C`` (minus ``diag(n_w)`` when an occurrence does not count itself), so the
    whole computation is one sparse product; ``0 log 0 = 0`` because zero entries are
    never stored.
    """
    counts = np.bincount(types, minlength=num_types).astype(np.float64)
    probability = counts / counts.sum()
    occurrences = sparse.csr_matrix(
        (np.ones(len(types)), (sentence, types)), shape=(int(sentence.max(initial=-1)) + 1, num_types)
    )
    context = occurrences.T @ occurrences
    if not include_self:
        context = context - sparse.diags(counts)
    context = sparse.coo_matrix(context)
    context.eliminate_zeros()
    totals = np.bincount(context.row, weights=context.data, minlength=num_types)
    conditional = context.data / totals[context.row]
    terms = conditional * (np.log(conditional) - np.log(probability[context.col]))
    kl = np.bincount(context.row, weights=terms, minlength=num_types)
    kl[totals == 0] = np.nan
    return kl


@dataclass(frozen=True)
class TokenStatistics:
    """Per-type counts, ``P``, ``I = -log P``, ``KL`` and bias-corrected ``dKL`` of a statistics corpus."""

    types: tuple[str, ...]
    counts: np.ndarray
    probability: np.ndarray
    self_information: np.ndarray
    kl: np.ndarray
    dkl: np.ndarray
    kl_shuffled: np.ndarray
    units: Units
    include_self: bool
    dkl_repeats: int
    seed: int
    max_length: int | None
    num_sentences: int

    @property
    def total(self) -> int:
        """``N``, all unit occurrences of the corpus."""
        return int(self.counts.sum())

    def index(self, unit_types: list[str]) -> np.ndarray:
        """Type index of each string, -1 where the corpus never saw it."""
        lookup = {name: i for i, name in enumerate(self.types)}
        return np.array([lookup.get(name, -1) for name in unit_types], dtype=np.int64)

    def eligible(self, min_count: int) -> np.ndarray:
        """Types with at least ``min_count`` occurrences (rare types have inflated plug-in KL)."""
        return self.counts >= min_count


def token_statistics(
    tokenizer: PreTrainedTokenizerBase,
    sentences: list[str],
    *,
    units: Units = "tokens",
    include_self: bool = True,
    dkl_repeats: int = 5,
    seed: int = 0,
    max_length: int | None = 128,
) -> TokenStatistics:
    """Statistics of ``sentences`` as the model's tokenizer sees them (compute once, reuse every probe)."""
    if dkl_repeats < 1:
        raise ValueError(f"dkl_repeats must be >= 1, got {dkl_repeats}")
    seg = segment(tokenizer, sentences, units, max_length)
    names, types = np.unique(np.array(seg.unit_types, dtype=object), return_inverse=True)
    types = types.astype(np.int64)
    sentence = seg.unit_sentence.numpy()
    num_types = len(names)
    counts = np.bincount(types, minlength=num_types)
    probability = counts / counts.sum()
    kl = kl_information(sentence, types, num_types, include_self)
    rng = np.random.default_rng(seed)
    kl_shuffled = np.mean(
        [kl_information(sentence, rng.permutation(types), num_types, include_self) for _ in range(dkl_repeats)], axis=0
    )
    return TokenStatistics(
        types=tuple(str(name) for name in names),
        counts=counts,
        probability=probability,
        self_information=-np.log(probability),
        kl=kl,
        dkl=kl - kl_shuffled,
        kl_shuffled=kl_shuffled,
        units=units,
        include_self=include_self,
        dkl_repeats=dkl_repeats,
        seed=seed,
        max_length=max_length,
        num_sentences=len(sentences),
    )
