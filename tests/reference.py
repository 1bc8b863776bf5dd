"""Reference implementations that tests and benchmarks compare the real metrics against.

Nothing here produces a logged value: these are the straightforward, slow versions (Shapley values over every
ordering of the players; IG's captum loop is ``ctrain.probes.weighting.captum_peer``, which a benchmark shares).
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import Tensor

from ctrain.models.encoder import SentenceEncoder, eval_mode


def masked_value(encoder: SentenceEncoder, input_ids: Tensor, players: list[int], coalition) -> Tensor:
    """``f`` of one sentence with the players outside ``coalition`` (indices into ``players``) set to MASK."""
    ids = input_ids.clone()
    for player in set(range(len(players))) - set(coalition):
        ids[players[player]] = encoder.tokenizer.mask_token_id
    with eval_mode(encoder), torch.no_grad():
        return encoder(input_ids=ids.unsqueeze(0))[0].double()


def brute_force_shapley(encoder: SentenceEncoder, input_ids: Tensor) -> Tensor:
    """Shapley values (p, d) of the non-special positions: marginal contributions averaged over all p! orderings."""
    players = torch.nonzero(~encoder.special_mask(input_ids))[:, 0].tolist()
    p = len(players)
    values = torch.zeros(p, encoder.embedding_size, dtype=torch.float64)
    for order in itertools.permutations(range(p)):
        for place, player in enumerate(order):
            values[player] += masked_value(encoder, input_ids, players, order[: place + 1]) - masked_value(
                encoder, input_ids, players, order[:place]
            )
    return values / math.factorial(p)
