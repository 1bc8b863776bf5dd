"""Reference implementations that tests and benchmarks compare the real metrics against.

Nothing here produces a logged value: these are the straightforward, slow versions
(captum one output dim at a time, Shapley values over every ordering of the players).
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import Tensor

from ctrain.models.encoder import SentenceEncoder, eval_mode
from ctrain.probes.attribution import pad_baseline


def captum_loop_weights(encoder: SentenceEncoder, input_ids: Tensor, attention_mask: Tensor, steps: int = 50) -> Tensor:
    """IG weights by captum's IntegratedGradients one output dim at a time (``d`` attribution calls).

    Same PAD baseline, explicit position ids and Gauss-Legendre steps as
    ``integrated_gradients``; ``c_i = sqrt(sum_k sum_j IG_ijk^2)``.
    """
    from captum.attr import IntegratedGradients

    positions = encoder.position_ids(input_ids)
    x, baseline = pad_baseline(encoder, input_ids)
    ig = IntegratedGradients(lambda z, mask, pos: encoder(inputs_embeds=z, attention_mask=mask, position_ids=pos))
    squares = torch.zeros(input_ids.shape)
    for k in range(encoder.embedding_size):
        attribution = ig.attribute(
            x, baselines=baseline, target=k, additional_forward_args=(attention_mask, positions), n_steps=steps,
            method="gausslegendre",
        )  # fmt: skip
        squares += attribution.detach().pow(2).sum(-1)
    return squares.sqrt()


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
