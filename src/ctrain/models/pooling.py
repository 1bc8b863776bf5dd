"""Token states -> one sentence vector (cf. sentence-transformers `models.Pooling`)."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from ctrain.runtime import check_choice

PoolingMode = Literal["mean", "cls", "cls_mlp", "max"]

# ctrain's pooling -> sentence-transformers' `Pooling(pooling_mode=...)`: the one table both ways. cls_mlp exports as
# cls followed by a Dense (Tanh) layer, which loads back as cls and a dense layer: the same function.
ST_POOLING_MODES: dict[PoolingMode, str] = {"mean": "mean", "cls": "cls", "cls_mlp": "cls", "max": "max"}
_FROM_ST = {st_mode: mode for mode, st_mode in ST_POOLING_MODES.items() if mode != "cls_mlp"}
# sentence-transformers before 6 saved one flag per mode instead of `pooling_mode`; a config with none set means mean
_ST_FLAGS = {"cls": "pooling_mode_cls_token", "max": "pooling_mode_max_tokens"}


def pooling_of_st_config(config: dict) -> str:
    """ctrain's pooling of a saved sentence-transformers Pooling config; a mode ctrain lacks comes back as it is
    named there, for `Pooler` to refuse in one line."""
    mode = config.get("pooling_mode")
    if mode is None:
        mode = next((st_mode for st_mode, flag in _ST_FLAGS.items() if config.get(flag)), "mean")
    mode = mode if isinstance(mode, str) else mode[0]
    return _FROM_ST.get(mode, mode)


class Pooler(nn.Module):
    """Token states -> one vector per sentence (cf. sentence-transformers `models.Pooling`).

    `cls_mlp` is SimCSE's CLS + Linear + Tanh head; with `mlp_only_train` the head is
    used in training only and inference returns the plain CLS state (unsupervised SimCSE).
    """

    def __init__(self, mode: PoolingMode, hidden_size: int, mlp_only_train: bool = False) -> None:
        super().__init__()
        check_choice(mode, PoolingMode, "pooling")
        self.mode = mode
        self.mlp_only_train = mlp_only_train
        self.mlp = nn.Sequential(nn.Linear(hidden_size, hidden_size), nn.Tanh()) if mode == "cls_mlp" else None

    def forward(self, token_states: Tensor, attention_mask: Tensor) -> Tensor:
        if self.mode == "mean":
            mask = attention_mask.unsqueeze(-1).to(token_states.dtype)
            return (token_states * mask).sum(1) / mask.sum(1).clamp_min(1.0)
        if self.mode == "max":
            masked = token_states.masked_fill(~attention_mask.bool().unsqueeze(-1), torch.finfo(token_states.dtype).min)
            return masked.max(1).values
        cls = token_states[:, 0]
        if self.mlp is not None and (self.training or not self.mlp_only_train):
            return self.mlp(cls)
        return cls
