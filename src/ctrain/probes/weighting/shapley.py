"""Word weights by SHAP (docs/metrics.md, "Weights"): Shapley values of the unit tokens, or the paper's PartitionSHAP.

Like IG (``ig``), SHAP attributes the inference sentence embedding ``f(X)`` under
``attribution_mode`` and leaves the model as it found it; permutations come from a
``torch.Generator`` seeded by an argument, never from the global RNG.

Decisions the papers leave open:

- SHAP ``exact`` mode enumerates all coalitions of sentences with at most
  ``max_exact_tokens`` players and samples permutations beyond (exact enumeration
  costs ``2^p`` forward passes); ``permutation`` mode always samples.
- SHAP permutation sampling averages the
  marginal contributions along ``permutations`` uniformly random orderings (budget:
  ``permutations * (p + 1)`` forward passes); like exact SHAP it is efficient, i.e.
  the values of a sentence sum to ``f(x) - f(all MASK)``.
- SHAP ``partition`` mode is ``shap.PartitionExplainer`` with ``shap.maskers.Text``
  (the word-weighting paper's tool): Owen values over the masker's hierarchical
  clustering of the tokens, MASK as the absent value, the model called on the masked
  *strings* (so a masked word may re-tokenise differently, as in the paper). Owen
  values equal Shapley values on additive games and are efficient on every game.
  ``partition_native`` is the same recursion run by the module
  ``ctrain.probes.weighting.partition``: the same strings, tree and budget, the coalitions of all sentences of the batch evaluated
  together (equal to the library's values to float rounding; tests/test_partition_shap.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import numpy as np
import torch
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from ctrain.models.encoder import SentenceEncoder, attribution_mode
from ctrain.probes.weighting.ig import Attribution
from ctrain.probes.weighting.partition import batched_owen_values, length_grouped_encoder, text_masker
from ctrain.runtime import check_choice

ShapMode = Literal["exact", "permutation", "partition", "partition_native"]
SHAP_MODES: tuple[str, ...] = ("exact", "permutation", "partition", "partition_native")


def shapley_coefficients(players: int) -> Tensor:
    """``A`` with ``phi = A^T v`` over all ``2^p`` coalitions (row ``T`` = bitmask of present players).

    ``A[T, i] = w(|T| - 1)`` if ``i`` is in ``T`` else ``-w(|T|)``, with the Shapley
    weight ``w(s) = s! (p - s - 1)! / p!``.
    """
    present = (torch.arange(2**players).unsqueeze(1) >> torch.arange(players)) & 1
    size = present.sum(1, keepdim=True).double()

    def weight(s: Tensor) -> Tensor:
        return torch.exp(torch.lgamma(s + 1) + torch.lgamma(players - s) - math.lgamma(players + 1))

    inside, outside = weight((size - 1).clamp_min(0)), weight(size.clamp_max(players - 1))
    return torch.where(present.bool(), inside, -outside)


def _coalition_values(
    encoder: SentenceEncoder, input_ids: Tensor, positions: Tensor, players: Tensor, present: Tensor, batch_size: int
) -> Tensor:
    """``f`` of the sentence with absent players set to MASK, one row per coalition in ``present`` (C, p)."""
    ids = input_ids.repeat(len(present), 1)
    ids[:, players] = torch.where(present, ids[:, players], encoder.tokenizer.mask_token_id)
    return torch.cat(
        [
            encoder(input_ids=chunk, attention_mask=torch.ones_like(chunk), position_ids=positions.expand_as(chunk))
            for chunk in ids.split(batch_size)
        ]
    ).double()


def shapley_values(
    encoder: SentenceEncoder,
    input_ids: Tensor,
    max_exact_tokens: int = 10,
    permutations: int = 64,
    seed: int = 0,
    batch_size: int = 256,
) -> Tensor:
    """Shapley values ``phi`` (p, d) of the non-special positions of one unpadded sentence (n,).

    Exact over all ``2^p`` coalitions when ``p <= max_exact_tokens``, else the mean
    marginal contribution over ``permutations`` random orderings. MASK is the absent
    value; special positions are always present.
    """
    if encoder.tokenizer.mask_token_id is None:
        raise ValueError("SHAP needs a tokenizer with a mask token (the absent value)")
    generator = torch.Generator().manual_seed(seed)
    with attribution_mode(encoder) as device, torch.no_grad():
        input_ids = input_ids.to(device).unsqueeze(0)
        positions = encoder.position_ids(input_ids)
        players = torch.nonzero(~encoder.special_mask(input_ids[0]))[:, 0]
        p = len(players)
        if p == 0:
            return torch.zeros(0, encoder.embedding_size, dtype=torch.float64)
        if p <= max_exact_tokens:
            present = ((torch.arange(2**p).unsqueeze(1) >> torch.arange(p)) & 1).bool().to(device)
            values = _coalition_values(encoder, input_ids, positions, players, present, batch_size)
            return shapley_coefficients(p).to(device).T @ values
        order = torch.argsort(torch.rand(permutations, p, generator=generator), dim=1)
        rank = torch.argsort(order, dim=1).to(device)  # rank[q, i]: place of player i in ordering q
        present = rank.unsqueeze(1) < torch.arange(p + 1, device=device).view(1, -1, 1)  # (Q, p + 1, p) prefixes
        values = _coalition_values(encoder, input_ids, positions, players, present.flatten(0, 1), batch_size)
        values = values.view(permutations, p + 1, -1)
        after = values.gather(1, (rank + 1).unsqueeze(-1).expand(-1, -1, values.shape[-1]))
        before = values.gather(1, rank.unsqueeze(-1).expand(-1, -1, values.shape[-1]))
        return (after - before).mean(0)


def owen_values(
    value_function: Callable[[list[str]], np.ndarray],
    tokenizer: PreTrainedTokenizerBase,
    sentence: str,
    max_evals: int = 500,
    batch_size: int | None = None,
) -> np.ndarray:
    """PartitionSHAP (``shap`` library) values (n, d) of every position of ``sentence``, specials included (0 there).

    ``value_function`` maps masked sentences (strings, MASK as the absent value) to
    outputs (C, d); the players are the tokenizer's tokens, grouped by ``shap``'s text
    clustering. ``max_evals`` bounds the model calls of one sentence; ``batch_size`` (coalitions
    per call) None is the library's ``"auto"``.
    """
    import shap

    explainer = shap.PartitionExplainer(value_function, text_masker(tokenizer))
    batch = "auto" if batch_size is None else batch_size
    return explainer([sentence], max_evals=max_evals, batch_size=batch, silent=True).values[0]


def shap_weights(
    encoder: SentenceEncoder,
    input_ids: Tensor,
    attention_mask: Tensor,
    sentences: list[str],
    *,
    mode: ShapMode = "exact",
    max_exact_tokens: int = 10,
    permutations: int = 64,
    max_evals: int = 500,
    seed: int = 0,
    batch_size: int | None = None,
) -> Attribution:
    """SHAP weights ``c_i = ||phi_i||_2`` of a padded batch of ``sentences`` (sentence ``b`` sampled with seed ``seed + b``).

    ``batch_size``: in the partition modes the library's coalitions per round (None: its default, which changes the
    values of sentences that exhaust ``max_evals``); in exact and permutation mode only the coalitions per forward
    pass (None: 256), which change no value.
    """
    check_choice(mode, SHAP_MODES, "shap_mode")
    weights = torch.zeros(input_ids.shape, dtype=torch.float64)
    special = encoder.special_mask(input_ids)
    forward_batch = batch_size or 256

    def encode(masked: list[str]) -> np.ndarray:
        with attribution_mode(encoder), torch.no_grad():
            return encoder.encode(list(masked), batch_size=forward_batch).double().cpu().numpy()

    if mode == "partition_native":  # the same values as "partition", all sentences' coalitions batched together
        native = batched_owen_values(
            length_grouped_encoder(encoder), encoder.tokenizer, sentences, max_evals, batch_size, seeds=[seed + b for b in range(len(sentences))]
        )  # fmt: skip
    for b, (ids, keep) in enumerate(zip(input_ids, attention_mask.bool())):
        players = torch.nonzero(keep & ~special[b])[:, 0].cpu()
        if mode in ("partition", "partition_native"):
            phi = native[b] if mode == "partition_native" else owen_values(encode, encoder.tokenizer, sentences[b], max_evals, batch_size)
            if len(phi) != int(keep.sum()):
                raise ValueError(
                    f"shap's tokenisation of sentence '{sentences[b]}' has {len(phi)} positions, the probe's {int(keep.sum())}: "
                    "raise max_length or use shap_mode exact"
                )
            weights[b, players] = torch.from_numpy(np.linalg.norm(phi, axis=1))[players]  # right padding: same positions
        else:
            exact_limit = max_exact_tokens if mode == "exact" else 0
            phi = shapley_values(encoder, ids[keep], exact_limit, permutations, seed + b, forward_batch)
            weights[b, players] = phi.norm(dim=1).cpu()
    return Attribution(weights=weights, completeness_error=None)
