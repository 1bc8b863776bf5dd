"""What a process of a run knows about the run: its global seed, a step's seed and the global batch.

One definition each, shared by the contrastive and masked-LM modules, the data and the loggers.
"""

from __future__ import annotations

import os

# Distinct seeds per (step, rank); any odd constant larger than a world size works.
STEP_STRIDE = 1_000_003


def global_seed() -> int:
    """The run's seed (`seed_everything` in the config), which Lightning exports to every process."""
    return int(os.environ.get("PL_GLOBAL_SEED", 0))


def step_seed(step: int, rank: int = 0) -> int:
    """The seed of optimizer step `step` on process `rank`: a resumed run draws what an uninterrupted one did."""
    return global_seed() + STEP_STRIDE * step + rank


def global_batch_size(batch_size: int, trainer) -> int:
    """Examples per optimizer step over all processes: per-process batch x processes x accumulation."""
    return batch_size * trainer.world_size * trainer.accumulate_grad_batches
