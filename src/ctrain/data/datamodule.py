"""LightningDataModule: training examples in, tokenised batches out.

Batches are drawn by `EpochSampler`, a seeded per-epoch shuffle that shards one global
batch over processes and can start mid-epoch. Lightning does not skip the batches a
resumed run already trained on; this sampler does, from the restored global step, so
a run killed and resumed sees exactly the batches of an uninterrupted one.
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from collections import Counter
from itertools import chain, islice
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pytorch_lightning as pl
import torch
import torch.distributed as dist
from torch import Tensor
from torch.utils.data import DataLoader, Sampler

from ctrain.data import sources

log = logging.getLogger(__name__)


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


class EpochSampler(Sampler[int]):
    """Seeded shuffle per epoch; global batch g is split over ranks; drops the last partial batch."""

    def __init__(self, num_examples: int, batch_size: int, seed: int, shuffle: bool = True) -> None:
        self.num_examples, self.batch_size, self.seed, self.shuffle = num_examples, batch_size, seed, shuffle
        self.epoch = 0
        self._skip = 0

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning at every epoch start."""
        self.epoch = epoch

    def skip_batches(self, count: int) -> None:
        """Start the next iteration `count` batches into the epoch (after a resume)."""
        self._skip = count

    def batches_per_epoch(self) -> int:
        world, _ = _world()
        return self.num_examples // (world * self.batch_size)

    def __iter__(self):
        world, rank = _world()
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.num_examples, generator=generator)
        else:
            order = torch.arange(self.num_examples)
        usable = self.batches_per_epoch() * world * self.batch_size
        mine = order[:usable].view(-1, world, self.batch_size)[:, rank]
        start, self._skip = self._skip, 0
        return iter(mine[start:].reshape(-1).tolist())

    def __len__(self) -> int:
        return self.batches_per_epoch() * self.batch_size


def resumable_sampler(trainer: pl.Trainer, num_examples: int, batch_size: int, shuffle: bool = True) -> EpochSampler:
    """The training sampler of a run that may be resumed: it skips the batches the restored steps trained on."""
    sampler = EpochSampler(num_examples, batch_size, int(os.environ.get("PL_GLOBAL_SEED", 0)), shuffle)
    batches_done = trainer.global_step * trainer.accumulate_grad_batches
    if batches_done:  # resumed: Lightning restores the epoch, the sampler skips what was trained
        sampler.skip_batches(batches_done % sampler.batches_per_epoch())
    return sampler


def _epochs_to_train(trainer: pl.Trainer, batches_per_epoch: int) -> float:
    """Epochs the run's data loader goes through (started ones count): max_steps or max_epochs, whichever stops first."""
    epochs = trainer.max_epochs if trainer.max_epochs not in (None, -1) else math.inf
    if trainer.max_steps > 0:
        epochs = min(epochs, math.ceil(trainer.max_steps * trainer.accumulate_grad_batches / max(batches_per_epoch, 1)))
    return epochs


@dataclass
class Collator:
    """Tokenises a list of example tuples into one flat batch: views stacked along dim 0.

    With `labelled`, the items are (example, NLI class id) and the batch also holds `labels`.
    The first `cache_size` distinct texts keep their tokens (in each process and loader worker, about
    0.7 kB a text): a later epoch then reads them back, 0.8 ms instead of 11 ms a batch of 64 STS-B
    sentences, about a third of a bag-model step. A run that sees each text once keeps none (0).
    """

    tokenizer: object
    max_length: int
    labelled: bool = False
    cache_size: int = 0
    _tokenised: dict[str, tuple[list[int], bool]] = field(default_factory=dict, init=False, repr=False)

    def _tokenise(self, texts: list[str]) -> list[tuple[list[int], bool]]:
        """Token ids of each text (its first `max_length` window) and whether it was truncated."""
        cached = self._tokenised
        new = list(dict.fromkeys(text for text in texts if text not in cached))
        fresh: dict[str, tuple[list[int], bool]] = {}
        if new:
            encoded = self.tokenizer(new, truncation=True, max_length=self.max_length, return_overflowing_tokens=True)
            # A text longer than max_length comes back as several rows: keep its first, count it truncated.
            owners = encoded["overflow_to_sample_mapping"]
            windows = Counter(owners)
            for row, owner in enumerate(owners):
                if row == 0 or owners[row - 1] != owner:
                    fresh[new[owner]] = (encoded["input_ids"][row], windows[owner] > 1)
            cached.update(islice(fresh.items(), max(self.cache_size - len(cached), 0)))
        return [fresh[text] if text in fresh else cached[text] for text in texts]

    def __call__(self, items: list) -> dict[str, Tensor]:
        examples, labels = zip(*items) if self.labelled else (items, None)
        num_views = len(examples[0])
        rows = self._tokenise([example[view] for view in range(num_views) for example in examples])
        lengths = torch.tensor([len(ids) for ids, _ in rows])
        width = int(lengths.max())
        columns = torch.arange(width)
        if self.tokenizer.padding_side == "left":
            attention_mask = columns >= width - lengths.unsqueeze(1)
        else:
            attention_mask = columns < lengths.unsqueeze(1)
        input_ids = torch.full(attention_mask.shape, self.tokenizer.pad_token_id)
        input_ids[attention_mask] = torch.from_numpy(np.fromiter(chain.from_iterable(ids for ids, _ in rows), dtype=np.int64))
        batch = {
            "input_ids": input_ids,
            "attention_mask": attention_mask.long(),
            "num_views": torch.tensor(num_views),
            "truncated": torch.tensor(sum(truncated for _, truncated in rows)),
        }
        if labels is not None:
            batch["labels"] = torch.tensor(labels, dtype=torch.long)
        return batch


class ContrastiveDataModule(pl.LightningDataModule):
    """Training examples and STS-B evaluation pairs, tokenised by the model's own tokenizer.

    Args:
        train: "sts-b" (offline STS-B train), a .txt/.csv/.tsv/.jsonl file, or "hub:<dataset>[:<config>]".
        supervised: pairs / triplets (anchor, positive[, hard negative]) instead of single sentences.
        columns: the text columns of a csv/jsonl/hub source, in the order above.
        label_column: the NLI label column (entailment / neutral / contradiction, or 0 / 1 / 2) of labelled
            (premise, hypothesis) pairs; needs supervised and two columns. model.objective=nli_classifier trains
            on every labelled pair, the other objectives on the entailment pairs as positives.
        min_positive_score: STS-B train pairs at or above this score are the offline supervised positives.
        keep_eval_overlap: with train "sts-b", keep the STS-B train sentences (and pairs with one) that are also
            STS-B dev or test sentences after `sources.normalise` (471 of 10,566 sentences, 139 of 1,406 pairs).
            Off by default: STS-B dev picks the best checkpoint and STS-B test scores it, on sentences not trained on.
        eval_source: STS-B dev/test from the installed package ("offline") or the hub ("hub").
        batch_size: examples per process and step (the global batch is this times the number of processes).
        max_length: training tokens per sentence; longer ones are truncated and counted in `data/truncated`.
        max_examples: use only the first N training examples (quick runs).
        max_eval_pairs: score STS-B dev/test on their first N pairs only (quick runs; None: all, as published).
        eval_batch_size, eval_max_length: deprecated; how STS is scored is the model's (model.sts_batch_size,
            model.sts_max_length), where `ctrain fit` moves these keys with a warning.
        cache_texts: when the run trains more than one epoch, each process and loader worker keeps the tokens of
            the first N distinct training texts (about 0.7 kB each), tokenised once instead of every epoch; a run of
            one epoch keeps none, as no text comes back.
    """

    def __init__(
        self,
        train: str = "sts-b",
        *,
        supervised: bool = False,
        columns: list[str] | None = None,
        label_column: str | None = None,
        min_positive_score: float = 4.0,
        keep_eval_overlap: bool = False,
        eval_source: Literal["offline", "hub"] = "offline",
        batch_size: int = 64,
        max_length: int = 32,
        num_workers: int = 0,
        shuffle: bool = True,
        max_examples: int | None = None,
        max_eval_pairs: int | None = None,
        cache_texts: int = 100_000,
        eval_batch_size: int | None = None,
        eval_max_length: int | None = None,
    ) -> None:
        super().__init__()
        for key, value in (("eval_batch_size", eval_batch_size), ("eval_max_length", eval_max_length)):
            if value is not None:
                warnings.warn(f"data.{key} is no longer read here: give the model's sts_{key[5:]} (ContrastiveModule)", FutureWarning, stacklevel=2)
        if cache_texts < 0:
            raise ValueError(f"data.cache_texts must be >= 0 (0: tokenise every batch), got {cache_texts}")
        self.save_hyperparameters()
        self.examples: list[tuple[str, ...]] = []
        self.labels: list[int] | None = None
        self.dev: list[tuple[str, str, float]] = []
        self.test: list[tuple[str, str, float]] = []

    @property
    def tokenizer(self):
        return self.trainer.lightning_module.encoder.tokenizer

    def setup(self, stage: str) -> None:
        hp = self.hparams
        if stage == "fit":
            self.load_training_examples(self.trainer.world_size)
        if not self.dev:
            read = sources.read_sts_b if hp.eval_source == "offline" else sources.sts_b_hub
            self.dev, self.test = read("dev")[: hp.max_eval_pairs], read("test")[: hp.max_eval_pairs]

    def load_training_examples(self, world_size: int) -> None:
        """Read and check the training examples once (the CLI calls this before anything else runs)."""
        if self.examples:
            return
        hp = self.hparams
        labels = None
        if hp.label_column is not None:
            if hp.train == "sts-b" or not hp.supervised:
                raise ValueError(
                    "data.label_column needs data.supervised=true and a csv/jsonl/hub source of NLI-labelled pairs "
                    f"(data.train is '{hp.train}', supervised={hp.supervised})"
                )
            examples, labels = sources.load_nli_pairs(hp.train, hp.columns or [], hp.label_column)
        elif hp.train == "sts-b":
            examples = sources.sts_b_examples(hp.supervised, hp.min_positive_score, hp.keep_eval_overlap)
        else:
            examples = sources.load_examples(hp.train, hp.columns)
        if hp.max_examples is not None:
            examples = examples[: hp.max_examples]
            labels = labels if labels is None else labels[: hp.max_examples]
        self._check_examples(examples, world_size)
        self.examples, self.labels = examples, labels

    def _check_examples(self, examples: list[tuple[str, ...]], world_size: int) -> None:
        hp = self.hparams
        views = {len(example) for example in examples}
        expected = {2, 3} if hp.supervised else {1}
        if not views <= expected:
            kind = "pairs or triplets" if hp.supervised else "single sentences"
            raise ValueError(
                f"data.train '{hp.train}' gives examples of {sorted(views)} texts but supervised={hp.supervised} "
                f"needs {kind}: set data.columns / data.supervised to match"
            )
        if len(views) > 1:
            raise ValueError(f"data.train '{hp.train}' mixes pairs and triplets: give every example a hard negative or none")
        if any(not text.strip() for example in examples for text in example):
            raise ValueError(f"data.train '{hp.train}' has empty texts: remove those rows")
        if len(examples) < hp.batch_size * world_size:
            raise ValueError(
                f"data.train '{hp.train}' has {len(examples)} examples, fewer than one global batch "
                f"({hp.batch_size} x {world_size} processes): lower data.batch_size or add data"
            )

    def training_items(self, wants_labels: bool) -> list:
        """What the loader draws. Of NLI-labelled pairs: (pair, label) for an objective that reads labels,
        else the entailment pairs alone, as (anchor, positive) (supervised SimCSE's positives)."""
        if self.labels is None:
            return self.examples
        if wants_labels:
            return list(zip(self.examples, self.labels))
        entailment = sources.NLI_LABELS.index("entailment")
        positives = [pair for pair, label in zip(self.examples, self.labels) if label == entailment]
        self._check_examples(positives, self.trainer.world_size)
        return positives

    def train_dataloader(self) -> DataLoader:
        hp = self.hparams
        wants_labels = getattr(getattr(self.trainer.lightning_module, "objective", None), "reads_labels", False)
        items = self.training_items(wants_labels)
        sampler = resumable_sampler(self.trainer, len(items), hp.batch_size, hp.shuffle)
        cache_size = hp.cache_texts if _epochs_to_train(self.trainer, sampler.batches_per_epoch()) > 1 else 0
        labelled = wants_labels and self.labels is not None
        return DataLoader(
            items,
            batch_size=hp.batch_size,
            sampler=sampler,
            drop_last=True,
            collate_fn=Collator(self.tokenizer, hp.max_length, labelled, cache_size),
            num_workers=hp.num_workers,
            persistent_workers=hp.num_workers > 0,
        )

    def val_dataloader(self) -> DataLoader:
        """STS-B dev as one batch of rows, which the model's STS evaluator scores whole: every process scores all
        pairs (cheap), so the metric needs no gathering."""
        return _one_batch(self.dev)

    def test_dataloader(self) -> DataLoader:
        return _one_batch(self.test)


def _one_batch(rows: list) -> DataLoader:
    return DataLoader([rows], batch_size=None, collate_fn=list)
