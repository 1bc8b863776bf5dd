"""The masked-LM pre-training data (`ctrain pretrain`): BERT's masking, sentence packing, the collators and
`PretrainDataModule`, which reads a text file and holds out a fixed share for the validation loss.

Masking runs in the training step (MaskedLMModule, ctrain.training.pretrain), not in the data loader, from a generator
seeded by (seed, step, micro-batch, rank): a resumed run draws the same masks as an uninterrupted one. The collators
mark which positions masking may choose and where each word starts. `pack_sentences` packs the training sentences end
to end into full rows (no padding, nothing truncated); the held-out sentences are always one a row, so packed and
unpacked runs share the measurement.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pytorch_lightning as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerBase

from ctrain.data import sources
from ctrain.data.datamodule import resumable_sampler

IGNORE_INDEX = -100  # the label of every position the loss skips (PyTorch's cross-entropy default)


def mask_tokens(
    input_ids: Tensor,
    maskable: Tensor,
    word_start: Tensor,
    *,
    mask_token_id: int,
    vocab_size: int,
    generator: torch.Generator,
    probability: float = 0.15,
) -> tuple[Tensor, Tensor]:
    """BERT's masking: choose `probability` of the maskable words; of their tokens 80% -> [MASK],
    10% -> a random token, 10% unchanged. Returns (masked input ids, labels with -100 where not chosen).

    `word_start[b, t]` is the position of the first token of token t's word; a word is chosen
    with its first token, so whole-word masking is `word_start` of real words, and token masking
    is `word_start = arange`. Positions where `maskable` is False (specials, padding) are never chosen.
    """
    choice_draw = torch.rand(input_ids.shape, generator=generator)
    action_draw = torch.rand(input_ids.shape, generator=generator)
    random_tokens = torch.randint(vocab_size, input_ids.shape, generator=generator)
    chosen = (choice_draw.gather(1, word_start) < probability) & maskable
    labels = input_ids.masked_fill(~chosen, IGNORE_INDEX)
    masked = input_ids.masked_fill(chosen & (action_draw < 0.8), mask_token_id)
    replace_randomly = chosen & (action_draw >= 0.8) & (action_draw < 0.9)
    masked = torch.where(replace_randomly, random_tokens, masked)
    return masked, labels


def word_start_positions(word_ids: list[int | None]) -> list[int]:
    """Position of the first token of each token's word (a special token, word id None, is its own word)."""
    starts, first_of = [], {}
    for position, word in enumerate(word_ids):
        if word is None:
            starts.append(position)
        else:
            starts.append(first_of.setdefault(word, position))
    return starts


def masking_batch(
    input_ids: Tensor, attention_mask: Tensor, word_start: Tensor | None, special_ids: Sequence[int]
) -> dict[str, Tensor]:
    """A training batch: ids, attention, the positions masking may choose (real tokens, not `special_ids`) and the
    word starts (None for token masking: every token is its own word)."""
    if word_start is None:
        word_start = torch.arange(input_ids.shape[1]).expand_as(input_ids).clone()
    special = torch.isin(input_ids, torch.tensor(list(special_ids), dtype=input_ids.dtype))
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "maskable": attention_mask.bool() & ~special,
        "word_start": word_start,
    }


@dataclass
class MaskedLMCollator:
    """Tokenises sentences (truncated to `max_length`), one a row, and marks the positions masking may choose (none
    of `special_ids`, the tokenizer's ids that are never words: `ctrain.models.encoder.word_special_ids`)."""

    tokenizer: PreTrainedTokenizerBase
    max_length: int
    whole_word_masking: bool
    special_ids: Sequence[int]

    def __call__(self, sentences: list[str]) -> dict[str, Tensor]:
        encoded = self.tokenizer(sentences, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        word_start = None  # token masking needs no word boundaries
        if self.whole_word_masking:
            word_start = torch.tensor([word_start_positions(encoded.word_ids(row)) for row in range(len(sentences))])
        return masking_batch(encoded["input_ids"], encoded["attention_mask"], word_start, self.special_ids)


def pack_sentences(tokenizer: PreTrainedTokenizerBase, sentences: list[str], max_length: int) -> list[tuple[list[int], list[int]]]:
    """The sentences' tokens end to end in rows of `max_length` (token ids, word starts), as BERT and RoBERTa pre-train.

    Each row starts with [CLS] (<s>), each sentence ends with [SEP] (</s>), and a sentence that does not fit goes on
    in the next row: no padding and nothing truncated, where one sentence a row pads short sentences and truncates
    long ones (docs/vanilla_start.md measures both). A token's word start is the row position of its word's first token;
    a word split between two rows counts as a word in each.
    """
    encoded = tokenizer(sentences, add_special_tokens=False)
    rows: list[tuple[list[int], list[int]]] = []
    ids, starts, first_of = [tokenizer.cls_token_id], [0], {}
    for index in range(len(sentences)):
        words = [None if word is None else (index, word) for word in encoded.word_ids(index)] + [None]
        for token, word in zip(encoded["input_ids"][index] + [tokenizer.sep_token_id], words):
            if len(ids) == max_length:
                rows.append((ids, starts))
                ids, starts, first_of = [tokenizer.cls_token_id], [0], {}
            starts.append(len(ids) if word is None else first_of.setdefault(word, len(ids)))
            ids.append(token)
    if len(ids) > 1:
        rows.append((ids, starts))
    return rows


@dataclass
class PackedRowsCollator:
    """Stacks packed rows (`pack_sentences`); only a corpus's last row can be short, and it is padded. Masking may
    choose no position of `special_ids`, as in `MaskedLMCollator`."""

    tokenizer: PreTrainedTokenizerBase
    whole_word_masking: bool
    special_ids: Sequence[int]

    def __call__(self, rows: list[tuple[list[int], list[int]]]) -> dict[str, Tensor]:
        length = max(len(ids) for ids, _ in rows)
        input_ids = torch.full((len(rows), length), self.tokenizer.pad_token_id)
        attention_mask = torch.zeros(len(rows), length, dtype=torch.long)
        word_start = torch.arange(length).repeat(len(rows), 1)
        for row, (ids, starts) in enumerate(rows):
            input_ids[row, : len(ids)], attention_mask[row, : len(ids)] = torch.tensor(ids), 1
            word_start[row, : len(ids)] = torch.tensor(starts)
        return masking_batch(input_ids, attention_mask, word_start if self.whole_word_masking else None, self.special_ids)


class PretrainDataModule(pl.LightningDataModule):
    """Sentences from a text file (one a line); a fixed held-out share for the MLM validation loss.

    Args:
        train: a .txt file with one sentence a line (e.g. all.txt of `ctrain corpus`).
        val_size: sentences held out (chosen by a fixed permutation, whatever the seed) for val/mlm_loss.
        batch_size: sentences per process and step.
        eval_batch_size: sentences per held-out batch.
        max_examples: use only the first N sentences of the file (quick runs).
        pack: train on the sentences packed end to end into rows of `model.max_length` tokens (`pack_sentences`)
            instead of one sentence a row padded to the batch's longest and truncated at `model.max_length`.
    """

    def __init__(
        self,
        train: str = "data/corpus/all.txt",
        *,
        val_size: int = 1000,
        batch_size: int = 64,
        eval_batch_size: int = 128,
        num_workers: int = 0,
        max_examples: int | None = None,
        pack: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.sentences: list[str] = []
        self.held_out: list[str] = []
        self.rows: list[tuple[list[int], list[int]]] = []

    def load_training_examples(self, world_size: int) -> None:
        """Read the file once and split off the held-out sentences; fail early on too little data."""
        if self.sentences:
            return
        hp = self.hparams
        sentences = [example[0] for example in sources.load_examples(hp.train, None)][: hp.max_examples]
        order = torch.randperm(len(sentences), generator=torch.Generator().manual_seed(0)).tolist()
        held_out = set(order[: hp.val_size])
        self.held_out = [sentences[i] for i in sorted(held_out)]
        self.sentences = [sentence for i, sentence in enumerate(sentences) if i not in held_out]
        if len(self.sentences) < hp.batch_size * world_size or not self.held_out:
            raise ValueError(
                f"data.train '{hp.train}' has {len(sentences)} sentences: too few for data.val_size={hp.val_size} "
                f"held out plus one global batch of {hp.batch_size} x {world_size}; lower them or add sentences"
            )

    def setup(self, stage: str) -> None:
        world_size = self.trainer.world_size
        self.load_training_examples(world_size)
        if self.hparams.pack and not self.rows:
            self.rows = self.trainer.lightning_module.pack(self.sentences)
            if len(self.rows) < self.hparams.batch_size * world_size:
                raise ValueError(
                    f"data.train '{self.hparams.train}' packs into {len(self.rows)} rows: too few for one global batch of "
                    f"{self.hparams.batch_size} x {world_size}; lower data.batch_size, set data.pack false or add sentences"
                )

    def train_dataloader(self) -> DataLoader:
        hp = self.hparams
        module = self.trainer.lightning_module
        examples, collate = (self.rows, module.packed_collator) if hp.pack else (self.sentences, module.collator)
        sampler = resumable_sampler(self.trainer, len(examples), hp.batch_size)
        return DataLoader(
            examples, batch_size=hp.batch_size, sampler=sampler, drop_last=True, collate_fn=collate,
            num_workers=hp.num_workers, persistent_workers=hp.num_workers > 0,
        )  # fmt: skip

    def val_dataloader(self) -> DataLoader:
        """Every process scores the whole held-out set (it is small), so the metric needs no gathering."""
        collator = self.trainer.lightning_module.collator
        return DataLoader(self.held_out, batch_size=self.hparams.eval_batch_size, collate_fn=collator)
