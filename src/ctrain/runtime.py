"""What a process of a run knows about the run: its global seed, a step's seed and the global batch.

One definition each, shared by the contrastive and masked-LM modules, the data and the loggers; and the one
check of a setting against its allowed values.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Literal, get_args

import numpy as np
import torch

from ctrain.keys import EXAMPLES_SEEN

# Distinct seeds per (step, rank); any odd constant larger than a world size works.
STEP_STRIDE = 1_000_003

# Each random use of a step draws from its own stream: seeded alike, two uses would draw the same numbers
# (DiffCSE's edit mask would repeat token_dropout's keep mask, MLM masks would repeat dropout's).
Stream = Literal["dropout", "positives", "objective", "mlm_masks"]
STREAMS: tuple[str, ...] = ("dropout", "positives", "objective", "mlm_masks")


def global_seed() -> int:
    """The run's seed (`seed_everything` in the config), which Lightning exports to every process."""
    return int(os.environ.get("PL_GLOBAL_SEED", 0))


def step_seed(step: int, rank: int = 0, stream: Stream = "dropout", micro_batch: int = 0) -> int:
    """The seed of one random use (`stream`) of micro-batch `micro_batch` of optimizer step `step` on process `rank`.

    A resumed run draws what an uninterrupted one did. Under gradient accumulation each micro-batch of a step
    draws its own masks. Micro-batch 0, the only one without accumulation, is seeded from (seed, step, rank)
    alone, so runs without accumulation keep their recorded results: its dropout stream by the plain formula,
    the others as independent streams of numpy's SeedSequence; later micro-batches add a fifth word of entropy.
    """
    check_choice(stream, STREAMS, "random stream")
    if stream == "dropout" and micro_batch == 0:
        return global_seed() + STEP_STRIDE * step + rank
    entropy = [global_seed(), step, rank, STREAMS.index(stream)] + ([micro_batch] if micro_batch else [])
    return int(np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0] >> 1)


def micro_batch_index(batch_idx: int, trainer) -> int:
    """Which micro-batch of its optimizer step a training batch is: Lightning accumulates `accumulate_grad_batches`
    batches counted from each epoch's start (an epoch's last, partial group steps early). A module used without
    a trainer (`trainer` None) takes one batch a step."""
    return 0 if trainer is None else batch_idx % trainer.accumulate_grad_batches


def seed_dropout(seed: int, device: torch.device) -> None:
    """Seeds the generators dropout draws from: the CPU's and, on an accelerator, that device's.

    `torch.manual_seed` also queues a seeding call, with a formatted stack, for every accelerator type
    not yet initialised (CUDA, XPU, MTIA): per step on a CPU machine that cost about a millisecond
    and kept growing a queue for the whole run.
    """
    torch.default_generator.manual_seed(seed)
    if device.type != "cpu":
        getattr(torch, device.type).manual_seed(seed)


def global_batch_size(batch_size: int, trainer) -> int:
    """Examples per optimizer step over all processes: per-process batch x processes x accumulation."""
    return batch_size * trainer.world_size * trainer.accumulate_grad_batches


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Torch's CPU generator seeded with `seed` inside the block and restored after it: a draw (initial weights,
    a fixed evaluation's dropout) that depends on its seed alone and leaves the run's own draws where they were."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


class SeededSteps:
    """The seeds of a LightningModule's training steps, shared by the contrastive and masked-LM modules.

    Dropout is seeded from (seed, step, micro-batch, rank) at the start of every training batch: a resumed
    run and an uninterrupted one draw the same masks, whatever else used the RNG between steps (validation,
    probes, dataloader start-up), and the micro-batches of an accumulated step differ.
    """

    _micro_batch = 0  # of the training batch in progress: its seeds differ from its step's other micro-batches'

    def _step_seed(self, stream: Stream = "dropout", step: int | None = None) -> int:
        """The seed of the training batch in progress, or of micro-batch 0 of a given `step`."""
        if step is None:
            return step_seed(self.global_step, self.global_rank, stream, self._micro_batch)
        return step_seed(step, self.global_rank, stream)

    def seed_training_batch(self, batch_idx: int) -> None:
        """Seeds the dropout of training batch `batch_idx` (call it from `on_train_batch_start`)."""
        self._micro_batch = micro_batch_index(batch_idx, self._trainer)
        seed_dropout(self._step_seed(), self.device)


def check_choice(value: Any, choices: Any, key: str) -> None:
    """Raises the one-line error of setting `key` set to `value`, not one of `choices` (a Literal type or the
    allowed values themselves), naming the allowed values."""
    allowed: Iterable[Any] = get_args(choices) or choices
    if value not in allowed:
        raise ValueError(f"unknown {key} '{value}': choose one of {', '.join(map(str, allowed))}")


def with_examples_seen(metrics: Mapping[str, float], step: int | None, examples_per_step: int | None) -> dict:
    """`metrics` with `trainer/examples_seen` (step x global batch) added, as every logger writes them; unchanged
    while the global batch is not known yet."""
    if step is None or examples_per_step is None:
        return dict(metrics)
    return {**metrics, EXAMPLES_SEEN: step * examples_per_step}
