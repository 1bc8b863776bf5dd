"""Masked-language-model pre-training (`ctrain pretrain`): a vanilla start for contrastive training, and its control.

Run by the same LightningCLI as `ctrain fit` (ctrain.cli.pretrain) (config files, checkpoints/{last,best}.ckpt, metrics.csv,
`--resume RUN_DIR`), over MaskedLMModule and PretrainDataModule (its data, masking and packing: ctrain.data.mlm). The run ends by saving a Hugging Face
directory (model with its MLM head, and tokenizer) that `model.encoder.name` of `ctrain fit` loads; the
loader keeps the encoder and drops the head. `model.init_from` continues such a model under the same
objective: the control arm beside contrastive training from the same start (configs/pretrain_continued_cpu.yaml).
Validation logs STS-B dev of the backbone as a sentence encoder (`val/stsb_spearman`, as `ctrain fit` does), and
the probe callbacks measure that encoder, so the three arms' curves share their keys.

Masking happens in the training step, not in the data loader, from a generator seeded by
(seed, step, micro-batch, rank): a resumed run draws the same masks as an uninterrupted one. `data.pack` packs the
training sentences end to end into full rows (no padding, nothing truncated); the held-out loss is always
measured on single sentences, so packed and unpacked runs share the measurement.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Literal

import pytorch_lightning as pl
import torch
from torch import Tensor
from transformers import AutoModelForMaskedLM, PreTrainedTokenizerBase

from ctrain.data import sources
from ctrain.data.mlm import IGNORE_INDEX, MaskedLMCollator, PackedRowsCollator, mask_tokens, pack_sentences
from ctrain.keys import MLM_HELD_OUT_LOSS, STS_DEV
from ctrain.models.encoder import SentenceEncoder, tiny_backbone, word_special_ids
from ctrain.models.tokenizers import load_tokenizer
from ctrain.probes.sts import StsEvaluator
from ctrain.runtime import SeededSteps, global_seed, seeded
from ctrain.training.optim import ScheduleName, build_optimizer

VALIDATION_SEED = 12345  # held-out masks are the same at every evaluation, so the curve compares like with like
MAX_POSITIONS = 128  # tiny_backbone's position table holds 128 tokens plus the specials' margin
WALL_SECONDS = "time/wall_seconds"  # wall-clock seconds since the run began (across resumes), at each validation


class MaskedLMModule(SeededSteps, pl.LightningModule):
    """A BERT- or RoBERTa-shaped encoder with its MLM head, trained from random initialisation or from a saved masked LM.

    The shape is `tiny_backbone`'s (4 heads, feed-forward 4 x hidden), so `tiny-bert` with the
    same hidden size and layers is the random-initialisation twin of the pre-trained model.

    Args:
        architecture: bert or roberta.
        tokenizer: bert-uncased (offline), byte-level-bpe (trained on STS-B train, tiny-roberta's), bpe:FILE (trained on
            FILE, e.g. bpe:data/corpus/all.txt) or a tokenizer directory.
        hidden_size, num_layers: model size.
        mlm_probability: share of (whole-word or token) units chosen for prediction.
        whole_word_masking: choose whole words (all their word pieces) instead of single tokens.
        learning_rate, weight_decay, warmup: AdamW with linear warm-up, as in contrastive training.
        schedule: after warm-up, linear decay to 0 at `trainer.max_steps` (linear), or a constant rate (constant: for
            training until the held-out loss converges, `callbacks/pretrain_convergence.yaml`, where max_steps is only
            a budget and a decay to it would make the plateau an artefact of the schedule).
        max_length: tokens per sentence, [CLS]/[SEP] included (at most 128).
        init_from: a saved masked LM (a `ctrain pretrain` export: model with its MLM head, and tokenizer) to go on
            training; its architecture, size and tokenizer replace `architecture`, `tokenizer`, `hidden_size`, `num_layers`.
        sentence_pooling: how the backbone's token states become the sentence embedding that STS-B dev and the probes
            measure (`encoder`); the contrastive arm's inference pooling (`cls` for SimCSE's `cls_mlp` with
            `mlp_only_train`), so that the arms' step 0 is the same measurement.
    """

    def __init__(
        self,
        architecture: Literal["bert", "roberta"] = "bert",
        tokenizer: str = "bert-uncased",
        *,
        hidden_size: int = 128,
        num_layers: int = 4,
        mlm_probability: float = 0.15,
        whole_word_masking: bool = False,
        learning_rate: float = 5e-4,
        weight_decay: float = 0.01,
        warmup: float = 0.05,
        max_length: int = 64,
        init_from: str | None = None,
        sentence_pooling: Literal["mean", "cls", "max"] = "mean",
        schedule: ScheduleName = "linear",
    ) -> None:
        super().__init__()
        if not 0 < mlm_probability < 1:
            raise ValueError(f"model.mlm_probability must be in (0, 1), got {mlm_probability}")
        if not 3 <= max_length <= MAX_POSITIONS:
            raise ValueError(f"model.max_length must be between 3 and {MAX_POSITIONS}, got {max_length}")
        self.save_hyperparameters()
        if init_from is None:
            self.tokenizer = load_tokenizer(tokenizer)
            seed = global_seed()
            config = tiny_backbone(architecture, self.tokenizer, hidden_size, num_layers, seed).config
            with seeded(seed):
                self.model = AutoModelForMaskedLM.from_config(config)
        else:
            self.tokenizer, self.model = _saved_masked_lm(init_from)
        self._held_out = torch.zeros(3, dtype=torch.float64)  # loss sum, correct, masked tokens
        self._sts_dev: StsEvaluator | None = None
        self._wall_seconds_before = 0.0  # wall time of the run before this process resumed it
        self._started: float | None = None

    @property
    def encoder(self) -> SentenceEncoder:
        """The backbone (no head) pooled by `sentence_pooling`, in the backbone's current mode: the encoder that
        `ctrain fit` would load from this model's export, measured by STS-B dev and the probe callbacks."""
        backbone = self.model.base_model
        training = backbone.training
        return SentenceEncoder(backbone, self.tokenizer, self.hparams.sentence_pooling).to(self.device).train(training)

    @property
    def collator(self) -> MaskedLMCollator:
        return MaskedLMCollator(self.tokenizer, self.hparams.max_length, self.hparams.whole_word_masking, word_special_ids(self.tokenizer))

    @property
    def packed_collator(self) -> PackedRowsCollator:
        return PackedRowsCollator(self.tokenizer, self.hparams.whole_word_masking, word_special_ids(self.tokenizer))

    def pack(self, sentences: list[str]) -> list[tuple[list[int], list[int]]]:
        return pack_sentences(self.tokenizer, sentences, self.hparams.max_length)

    def wall_seconds(self) -> float:
        """Wall-clock seconds since the run began, the time before a resume included: the x-axis on which
        pre-training variants of different cost per step compare."""
        now = 0.0 if self._started is None else time.perf_counter() - self._started
        return self._wall_seconds_before + now

    def on_fit_start(self) -> None:
        self._started = time.perf_counter()

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint[WALL_SECONDS] = self.wall_seconds()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._wall_seconds_before = checkpoint.get(WALL_SECONDS, 0.0)

    def _mlm_head(self) -> torch.nn.Module:
        return self.model.cls if hasattr(self.model, "cls") else self.model.lm_head

    def masked_lm(self, batch: dict[str, Tensor], generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        """(summed loss, correct predictions, masked tokens) of one batch under the masks `generator` draws.

        The vocabulary projection runs at the masked positions only: on a CPU it would otherwise
        cost more than the encoder."""
        masked, labels = mask_tokens(
            batch["input_ids"].cpu(), batch["maskable"].cpu(), batch["word_start"].cpu(),
            mask_token_id=self.tokenizer.mask_token_id, vocab_size=len(self.tokenizer), generator=generator, probability=self.hparams.mlm_probability,
        )  # fmt: skip
        masked, labels = masked.to(self.device), labels.to(self.device)
        states = self.model.base_model(input_ids=masked, attention_mask=batch["attention_mask"]).last_hidden_state
        selected = labels != IGNORE_INDEX
        logits = self._mlm_head()(states[selected]).float()
        targets = labels[selected]
        loss_sum = torch.nn.functional.cross_entropy(logits, targets, reduction="sum")
        return loss_sum, (logits.argmax(-1) == targets).sum(), selected.sum()

    def on_train_batch_start(self, batch: dict, batch_idx: int) -> None:
        """Train mode (dropout on) and dropout seeded per step and micro-batch (SeededSteps)."""
        self.model.train()
        self.seed_training_batch(batch_idx)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        generator = torch.Generator().manual_seed(self._step_seed("mlm_masks"))
        loss_sum, correct, count = self.masked_lm(batch, generator)
        count = count.clamp_min(1)
        loss = loss_sum / count
        if not torch.isfinite(loss):
            raise FloatingPointError(f"MLM loss is {loss.item()} at step {self.global_step}: lower model.learning_rate")
        size = batch["input_ids"].shape[0]
        self.log("train/mlm_loss", loss, prog_bar=True, batch_size=size, sync_dist=True)
        self.log("train/mlm_accuracy", correct / count, batch_size=size, sync_dist=True)
        return loss

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        generator = torch.Generator().manual_seed(VALIDATION_SEED + batch_idx)
        loss_sum, correct, count = self.masked_lm(batch, generator)
        self._held_out += torch.stack([loss_sum.detach().double().cpu(), correct.double().cpu(), count.double().cpu()])

    def on_validation_epoch_end(self) -> None:
        """Held-out loss and accuracy per masked token over the whole held-out set."""
        loss_sum, correct, count = self._held_out.tolist()
        self._held_out.zero_()
        self.log(MLM_HELD_OUT_LOSS, loss_sum / max(count, 1), prog_bar=True, sync_dist=True)
        self.log("val/mlm_accuracy", correct / max(count, 1), sync_dist=True)
        self._sts_dev = self._sts_dev or StsEvaluator(sources.read_sts_b("dev"))
        spearman, _ = self._sts_dev(self.encoder)
        self.log(STS_DEV, spearman, sync_dist=True)  # every process scores all pairs: the mean is the value
        self.log(WALL_SECONDS, self.wall_seconds(), sync_dist=True)

    def configure_optimizers(self) -> dict:
        """AdamW without decay on biases and LayerNorm, linear warm-up then `schedule` (as contrastive training)."""
        hp = self.hparams
        return build_optimizer(
            self, self.trainer.estimated_stepping_batches, hp.learning_rate, weight_decay=hp.weight_decay, warmup=hp.warmup, schedule=hp.schedule
        )


def _saved_masked_lm(path: str) -> tuple[PreTrainedTokenizerBase, torch.nn.Module]:
    """Tokenizer and masked LM (with its head) of a saved directory, with an error that says what is missing."""
    directory = Path(path)
    if not (directory / "config.json").is_file():
        raise FileNotFoundError(f"model.init_from '{path}' has no config.json: give a `ctrain pretrain` export (its outputs.export_dir)")
    model = AutoModelForMaskedLM.from_pretrained(directory)
    if model.config.model_type not in ("bert", "roberta"):
        raise ValueError(f"model.init_from '{path}' is a {model.config.model_type} model: ctrain pretrain continues bert or roberta")
    return load_tokenizer(str(directory)), model.train()  # from_pretrained hands it back in eval mode
