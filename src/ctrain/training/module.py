"""The one LightningModule: SimCSE-style contrastive fine-tuning of a sentence encoder."""

from __future__ import annotations

from typing import Literal

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor

from ctrain.keys import STS_DEV, STS_TEST, TRAIN_LOSS
from ctrain.models.encoder import EncoderConfig
from ctrain.models.similarity import SIMILARITIES, Similarity
from ctrain.probes.sts import StsEvaluator, StsRow
from ctrain.runtime import SeededSteps, check_choice, global_seed
from ctrain.training.objectives import (
    Objective,
    ObjectiveInputs,
    ObjectiveName,
    SimilarityObjective,
    make_objective,
)
from ctrain.training.optim import OptimizerName, ScheduleName, build_optimizer

Positives = Literal["dropout", "identical", "token_dropout", "halves"]


def _encoder_config(encoder: EncoderConfig | str | dict) -> EncoderConfig:
    """A name is the encoder of that name with every other setting at its default (`encoder="all-MiniLM-L6-v2"`);
    a dict is what a checkpoint's hyperparameters hold."""
    if isinstance(encoder, str):
        return EncoderConfig(name=encoder)
    return EncoderConfig(**encoder) if isinstance(encoder, dict) else encoder


class ContrastiveModule(SeededSteps, pl.LightningModule):
    """Fine-tunes an encoder with InfoNCE or another objective on dropout or given positives.

    Args:
        encoder: the encoder and its head (EncoderConfig: name, pooling, normalize, dropout, tiny sizes, ...), or
            its name alone for the rest at their defaults.
        objective: a ctrain.training.objectives class (`class_path` in YAML) or its short name
            (infonce, symmetric_infonce, logistic, nli_classifier, diffcse, sgns) for its defaults.
        similarity: cos, or dot (inner product, no normalisation: the theorem's setting); also the exported
            model's similarity function.
        temperature: logits are similarity / temperature.
            Both are handed once to an objective on similarity logits, which owns them from then on
            (InfoNCE, symmetric_infonce, logistic, diffcse); sgns and nli_classifier use neither.
        positives: how an unsupervised sentence's positive is made: dropout (the same sentence through a
            second dropout mask, SimCSE), identical (the very same embedding: the theorem's s' = s),
            token_dropout (each view drops each word with probability `token_dropout`), halves (a random
            split of the words into two disjoint halves, one per view). Views keep [CLS]/[SEP]; a view
            left without words keeps all of them (a one-word sentence is its own positive under halves).
        token_dropout: word drop probability of positives=token_dropout.
        optimizer: adamw, or sgd (plain gradient descent, no momentum).
        learning_rate, weight_decay: of the optimizer (decoupled for adamw, L2 added to the gradient for sgd).
        warmup: linear warm-up, in steps (>= 1) or as a fraction of all steps (< 1).
        schedule: after warm-up, linear decay to 0 (linear) or a constant learning rate (constant).
        sts_batch_size, sts_max_length: sentences a batch and tokens a sentence when STS-B dev and test are scored
            (`sts_evaluator`: validation, testing and the exported models' scores).
    """

    def __init__(
        self,
        encoder: EncoderConfig | str = EncoderConfig(),  # noqa: B008 (read by jsonargparse, never mutated)
        objective: Objective | ObjectiveName = "infonce",
        *,
        similarity: Similarity = "cos",
        temperature: float = 0.05,
        positives: Positives = "dropout",
        token_dropout: float = 0.1,
        optimizer: OptimizerName = "adamw",
        learning_rate: float = 3e-5,
        weight_decay: float = 0.0,
        warmup: float = 0.0,
        schedule: ScheduleName = "linear",
        sts_batch_size: int = 64,
        sts_max_length: int = 128,
    ) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"model.temperature must be positive, got {temperature}")
        settings = {
            "similarity": (similarity, Similarity), "positives": (positives, Positives),
            "optimizer": (optimizer, OptimizerName), "schedule": (schedule, ScheduleName),
        }  # fmt: skip
        for name, (value, choices) in settings.items():
            check_choice(value, choices, f"model.{name}")
        if not 0 <= token_dropout < 1:
            raise ValueError(f"model.token_dropout must be in [0, 1), got {token_dropout}")
        if sts_batch_size < 1 or sts_max_length < 3:
            raise ValueError(f"model.sts_batch_size must be >= 1 and model.sts_max_length >= 3, got {sts_batch_size} and {sts_max_length}")
        self.save_hyperparameters(ignore=["objective"])  # the objective's settings are in config.yaml; its weights in the state
        self.encoder_config = _encoder_config(encoder)
        self.encoder = self.encoder_config.load(seed=global_seed())
        # Training-only parts (heads, tables) live in the objective: checkpointed, never exported.
        self.objective = make_objective(objective)
        if isinstance(self.objective, SimilarityObjective):
            self.objective.score_by(similarity, temperature)
        self.objective.attach(self.encoder, global_seed())

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        return self.encoder(input_ids=input_ids, attention_mask=attention_mask)

    def on_train_batch_start(self, batch: dict, batch_idx: int) -> None:
        """Train mode and seeded dropout (SeededSteps) for every step: the encoder is put in train mode whatever
        a loader, probe or user left it in, as unsupervised positives exist only through dropout."""
        self.encoder.train()
        self.seed_training_batch(batch_idx)

    def setup(self, stage: str) -> None:
        """The objective reads the training corpus (sgns: its unigram distribution, the negatives' distribution)."""
        if stage == "fit":
            self.objective.prepare(self.encoder, self.trainer.datamodule)

    def _positive_views(self, input_ids: Tensor, attention_mask: Tensor, step: int | None = None) -> tuple[Tensor, Tensor]:
        """Anchor and positive views of single sentences, stacked (2B rows); see `positives`."""
        hp = self.hparams
        if hp.positives == "dropout":
            return input_ids.repeat(2, 1), attention_mask.repeat(2, 1)
        words = ~self.encoder.special_mask(input_ids) & attention_mask.bool()
        generator = torch.Generator().manual_seed(self._step_seed("positives", step))
        draws = torch.rand((2, *input_ids.shape), generator=generator).to(input_ids.device)
        if hp.positives == "token_dropout":
            keep = draws >= hp.token_dropout
        else:  # halves: the words ranked in a random order, the first ceil(n/2) to one view, the rest to the other
            rank = draws[0].masked_fill(~words, 2.0).argsort(1).argsort(1)
            first = rank < (words.sum(1, keepdim=True) + 1) // 2
            keep = torch.stack([first, ~first])
        keep = keep & words
        keep = keep | (~keep.any(-1, keepdim=True) & words)  # a view left without words keeps them all
        mask = attention_mask.bool() & (keep | ~words)
        return input_ids.repeat(2, 1), mask.flatten(0, 1).to(attention_mask.dtype)

    def objective_value(self, batch: dict[str, Tensor], step: int) -> Tensor:
        """The training objective on `batch` with the random draws (positives, negatives) of optimizer step `step`.

        A fixed batch and step make it a function of the weights alone: what `ObjectiveConvergence` tracks.
        Dropout, if the encoder is in train mode, draws from torch's global RNG: seed it first.
        """
        return self._objective(batch, step)[0]

    def _objective(self, batch: dict[str, Tensor], step: int | None = None) -> tuple[Tensor, dict[str, Tensor], int, tuple[Tensor, ...] | None]:
        """(loss, extra terms to log, examples in the batch, embeddings per view) of one batch."""
        views = int(batch["num_views"])
        input_ids, attention_mask = batch["input_ids"], batch["attention_mask"]
        size = input_ids.shape[0] // max(views, 1)
        embeddings = view_embeddings = None
        if self.objective.sentence_level:
            input_ids, attention_mask, embeddings, view_embeddings = self._embed_views(input_ids, attention_mask, views, step)
            size = view_embeddings[0].shape[0]
        seed = self._step_seed("objective", step)
        inputs = ObjectiveInputs(input_ids, attention_mask, embeddings, view_embeddings, seed, self.encoder, batch.get("labels"))
        loss, extras = self.objective(inputs)
        return loss, extras, size, view_embeddings

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        loss, extras, size, view_embeddings = self._objective(batch)
        for name, value in extras.items():
            self.log(f"train/{name}", value, batch_size=size, sync_dist=True)
        self._log_loss(loss, size)
        if view_embeddings is not None:
            # Exactly 1 for unsupervised positives means dropout never ran: the two views are one point.
            anchors, positives = (view.detach().float() for view in view_embeddings[:2])
            positive_cosine = F.cosine_similarity(anchors, positives, dim=-1)
            self.log("train/positive_cosine", positive_cosine.mean(), batch_size=size, sync_dist=True)
            self.log("data/truncated", batch["truncated"].float(), reduce_fx="sum", batch_size=size, sync_dist=True)
        return loss

    def _embed_views(
        self, input_ids: Tensor, attention_mask: Tensor, views: int, step: int | None = None
    ) -> tuple[Tensor, Tensor, Tensor, tuple[Tensor, ...]]:
        """(rows' input ids, attention mask, embeddings, embeddings per view) of a batch of `views` texts per example."""
        if views > 1 and self.hparams.positives != "dropout":
            raise ValueError(
                f"model.positives={self.hparams.positives} makes positives of single sentences; this data has {views} texts per example"
            )
        if views == 1 and self.hparams.positives == "identical":  # the positive is the anchor's own embedding
            embeddings = self(input_ids, attention_mask)
            return input_ids, attention_mask, embeddings, (embeddings, embeddings)
        if views == 1:
            input_ids, attention_mask = self._positive_views(input_ids, attention_mask, step)
        embeddings = self(input_ids, attention_mask)
        return input_ids, attention_mask, embeddings, embeddings.chunk(max(views, 2))

    def _log_loss(self, loss: Tensor, size: int) -> Tensor:
        if not torch.isfinite(loss):
            raise FloatingPointError(f"training loss is {loss.item()} at step {self.global_step}: {self._likely_cause()}")
        # Synced: the logged loss is the global batch's, as on one process.
        self.log(TRAIN_LOSS, loss, prog_bar=True, batch_size=size, sync_dist=True)
        return loss

    def _likely_cause(self) -> str:
        hp, objective = self.hparams, self.objective
        unbounded = isinstance(objective, SimilarityObjective) and not SIMILARITIES[objective.similarity].normalized
        if unbounded and objective.temperature < 0.5:
            return (
                f"{objective.similarity} similarity with temperature {objective.temperature} lets logits grow without bound; "
                "use model.similarity=cos or a larger model.temperature (e.g. 1.0)"
            )
        if self.trainer is not None and "16" in str(self.trainer.precision):
            return f"{self.trainer.precision} overflow; use trainer.precision=bf16-mixed or 32"
        return f"learning rate {hp.learning_rate} may be too high; lower model.learning_rate"

    def sts_evaluator(self, rows: list[StsRow]) -> StsEvaluator:
        """The STS evaluator of `rows` under this run's settings (sts_batch_size, sts_max_length)."""
        return StsEvaluator(rows, batch_size=self.hparams.sts_batch_size, max_length=self.hparams.sts_max_length)

    def _log_sts(self, name: str, rows: list[StsRow]) -> None:
        spearman, pairs = self.sts_evaluator(rows)(self.encoder)
        self.log(name, spearman, prog_bar=True, batch_size=pairs, sync_dist=True)  # equal on every rank: the mean is the value

    def validation_step(self, batch: list[StsRow], batch_idx: int) -> None:
        """The batch is all of STS-B dev (ContrastiveDataModule.val_dataloader): one evaluator call scores it."""
        self._log_sts(STS_DEV, batch)

    def test_step(self, batch: list[StsRow], batch_idx: int) -> None:
        self._log_sts(STS_TEST, batch)

    def configure_optimizers(self) -> dict:
        """AdamW (or SGD) with warm-up then linear decay (or constant), over the encoder and the objective's parts."""
        hp = self.hparams
        return build_optimizer(self, self.trainer.estimated_stepping_batches, hp.learning_rate, weight_decay=hp.weight_decay, warmup=hp.warmup, optimizer=hp.optimizer, schedule=hp.schedule)
