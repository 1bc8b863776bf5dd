"""Token states -> one sentence vector (cf. sentence-transformers `models.Pooling`)."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from ctrain.runtime import check_choice

PoolingMode = Literal["mean", "cls", "cls_mlp", "max"]


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
