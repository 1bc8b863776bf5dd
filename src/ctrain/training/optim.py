"""The one optimizer and schedule builder of ctrain's LightningModules (contrastive and masked-LM)."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

OptimizerName = Literal["adamw", "sgd"]
ScheduleName = Literal["linear", "constant"]

def build_optimizer(
    module: nn.Module,
    total_steps: int,
    learning_rate: float,
    *,
    weight_decay: float = 0.0,
    warmup: float = 0.0,
    optimizer: OptimizerName = "adamw",
    schedule: ScheduleName = "linear",
) -> dict:
    """Lightning's `configure_optimizers` answer: AdamW (decoupled decay) or SGD (L2 in the gradient, no momentum),
    linear warm-up over `warmup` steps (a fraction of `total_steps` when < 1), then linear decay to 0 or constant.

    Weight decay applies to exactly the matrices (parameters of two or more dimensions: linear and embedding
    weights), never to biases or normalisation scales, whatever their names (nanoGPT's rule)."""
    decay, plain = [], []
    for parameter in module.parameters():
        if parameter.requires_grad:
            (decay if parameter.dim() >= 2 else plain).append(parameter)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]
    built = (torch.optim.SGD if optimizer == "sgd" else torch.optim.AdamW)(groups, lr=learning_rate)
    total = max(int(total_steps), 1)
    warmup_steps = int(warmup * total) if warmup < 1 else int(warmup)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "constant":
            return 1.0
        return max(0.0, (total - step) / max(total - warmup_steps, 1))

    scheduler = torch.optim.lr_scheduler.LambdaLR(built, factor)
    return {"optimizer": built, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
