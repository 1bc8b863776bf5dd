"""IG the straightforward way: captum's ``IntegratedGradients`` one output dim at a time, the peer of ``ig``.

Nothing here produces a logged value: the tests (tests/test_attribution.py) and benchmarks/speed/ig_probe.py
check ``integrated_gradients``'s weights and speed against it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ctrain.models.encoder import SentenceEncoder
from ctrain.probes.weighting.ig import pad_baseline


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
