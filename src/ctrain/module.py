"""The one LightningModule: SimCSE-style contrastive fine-tuning of a sentence encoder."""

from __future__ import annotations

import os
from typing import Literal, get_args

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor

from ctrain.data import NLI_LABELS
from ctrain.diffcse import ConditionedDiscriminator, FrozenGenerator
from ctrain.encoder import Pooling, load_encoder
from ctrain.losses import (
    Similarity,
    info_nce,
    logistic_loss,
    pair_classifier_loss,
    replaced_token_detection_loss,
    sgns_loss,
    symmetric_info_nce,
)
from ctrain.probes.sts import sts_spearman

Objective = Literal["infonce", "symmetric_infonce", "logistic", "nli_classifier", "diffcse", "sgns"]
Positives = Literal["dropout", "identical", "token_dropout", "halves"]
Optimizer = Literal["adamw", "sgd"]
Schedule = Literal["linear", "constant"]

# Distinct seeds per (step, rank) for the dropout RNG; any odd constant larger than a world size works.
_STEP_STRIDE = 1_000_003


class ContrastiveModule(pl.LightningModule):
    """Fine-tunes `encoder` with InfoNCE or another objective (below) on dropout or given positives.

    Args:
        encoder: hub id, local path, run's saved model, `all-MiniLM-L6-v2` / `all-mpnet-base-v2`
            (offline), or `tiny-bert` / `tiny-roberta` / `tiny-mpnet` (random init, for tests and demos).
        pooling: mean | cls | cls_mlp (SimCSE's CLS + MLP head) | max; None keeps what a
            sentence-transformers directory declares (mean elsewhere).
        mlp_only_train: with cls_mlp, use the MLP in training only (unsupervised SimCSE).
        normalize: L2-normalise the inference embedding; None keeps what the model declares.
        similarity: cos, or dot (inner product, no normalisation: the theorem's setting).
        temperature: logits are similarity / temperature.
        objective: infonce (in-batch negatives, plus hard negatives when the data has them);
            symmetric_infonce (infonce averaged with its positives -> anchors direction: the all-* models' loss);
            logistic (sigma(<s, s'>) with the sentence itself positive, random others negative);
            nli_classifier (SBERT: softmax classifier over (u, v, |u - v|) on NLI-labelled pairs);
            diffcse (infonce plus DiffCSE's replaced-token detection conditioned on the sentence embedding);
            sgns (skip-gram with negative sampling over pairs of tokens of one sentence, the token itself
            included as KL(w) counts it: the word-level objective the theorem's proof reduces to; input
            vectors are the encoder's word embeddings, output vectors a training-only table).
        hard_negative_weight: added to the logit of each anchor's own hard negative (SimCSE's z3 weight).
        logistic_negatives: random negatives per anchor (logistic) or per word pair (sgns).
        sgns_alpha: sgns draws negatives from the training corpus's unigram distribution to this power
            (1: the distribution the proof uses; 0.75: word2vec's).
        positives: how an unsupervised sentence's positive is made: dropout (the same sentence through a
            second dropout mask, SimCSE), identical (the very same embedding: the theorem's s' = s),
            token_dropout (each view drops each word with probability `token_dropout`), halves (a random
            split of the words into two disjoint halves, one per view). Views keep [CLS]/[SEP]; a view
            left without words keeps all of them (a one-word sentence is its own positive under halves).
        token_dropout: word drop probability of positives=token_dropout.
        diffcse_generator: the frozen masked LM that edits sentences for diffcse (a path or hub id with
            the encoder's tokenizer, e.g. distilbert-base-uncased for BERT; tiny-bert: random, for CPU runs).
        diffcse_weight: weight of the replaced-token-detection loss (DiffCSE's lambda).
        diffcse_mask_ratio: share of words the generator may edit.
        optimizer: adamw, or sgd (plain gradient descent, no momentum).
        learning_rate, weight_decay: of the optimizer (decoupled for adamw, L2 added to the gradient for sgd).
        warmup: linear warm-up, in steps (>= 1) or as a fraction of all steps (< 1).
        schedule: after warm-up, linear decay to 0 (linear) or a constant learning rate (constant).
        dropout: override the encoder's hidden and attention dropout (the positives' only noise when unsupervised).
        trust_remote_code: allow a hub model's own code to run.
        tiny_hidden_size, tiny_num_layers: size of a `tiny-*` encoder (tiny_hidden_size: width of a `bag-*` one).
        bag_layers: transformer layers on top of a `bag-*` encoder's embeddings (0: a pure bag of embeddings).
        reinitialize: keep a loaded model's architecture and tokenizer, redraw every weight (a random start).
        embedding_init_std: redraw the input word embeddings from N(0, std^2) (the initial embedding scale).
    """

    def __init__(
        self,
        encoder: str = "tiny-bert",
        pooling: Pooling | None = None,
        mlp_only_train: bool = False,
        normalize: bool | None = None,
        similarity: Similarity = "cos",
        temperature: float = 0.05,
        objective: Objective = "infonce",
        hard_negative_weight: float = 0.0,
        logistic_negatives: int = 1,
        sgns_alpha: float = 1.0,
        positives: Positives = "dropout",
        token_dropout: float = 0.1,
        diffcse_generator: str | None = None,
        diffcse_weight: float = 0.005,
        diffcse_mask_ratio: float = 0.3,
        optimizer: Optimizer = "adamw",
        learning_rate: float = 3e-5,
        weight_decay: float = 0.0,
        warmup: float = 0.0,
        schedule: Schedule = "linear",
        dropout: float | None = None,
        trust_remote_code: bool = False,
        tiny_hidden_size: int = 64,
        tiny_num_layers: int = 2,
        bag_layers: int = 0,
        reinitialize: bool = False,
        embedding_init_std: float | None = None,
    ) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"model.temperature must be positive, got {temperature}")
        if objective not in get_args(Objective):
            raise ValueError(f"unknown model.objective '{objective}': choose one of {', '.join(get_args(Objective))}")
        if objective == "diffcse" and diffcse_generator is None:
            raise ValueError(
                "model.objective=diffcse needs model.diffcse_generator: a masked-LM path with the encoder's tokenizer "
                "(distilbert-base-uncased for bert-base-uncased), or tiny-bert on CPU"
            )
        for name, value, choices in (("positives", positives, Positives), ("optimizer", optimizer, Optimizer), ("schedule", schedule, Schedule)):
            if value not in get_args(choices):
                raise ValueError(f"unknown model.{name} '{value}': choose one of {', '.join(get_args(choices))}")
        if not 0 <= token_dropout < 1:
            raise ValueError(f"model.token_dropout must be in [0, 1), got {token_dropout}")
        if not 0 < diffcse_mask_ratio < 1:
            raise ValueError(f"model.diffcse_mask_ratio must be between 0 and 1, got {diffcse_mask_ratio}")
        self.save_hyperparameters()
        self.encoder = load_encoder(
            encoder,
            pooling=pooling,
            normalize=normalize,
            mlp_only_train=mlp_only_train,
            trust_remote_code=trust_remote_code,
            tiny_hidden_size=tiny_hidden_size,
            tiny_num_layers=tiny_num_layers,
            seed=int(os.environ.get("PL_GLOBAL_SEED", 0)),
            bag_layers=bag_layers,
            reinitialize=reinitialize,
            embedding_init_std=embedding_init_std,
        )
        if dropout is not None:
            self._set_dropout(dropout)
        seed = int(os.environ.get("PL_GLOBAL_SEED", 0))
        # Training-only heads: not part of `encoder`, so never exported (checkpoints keep them for resuming).
        self.pair_classifier = (
            torch.nn.Linear(3 * self.encoder.hidden_size, len(NLI_LABELS)) if objective == "nli_classifier" else None
        )
        self.discriminator = ConditionedDiscriminator(self.encoder.backbone.config, seed) if objective == "diffcse" else None
        self.generator = FrozenGenerator(diffcse_generator, self.encoder.tokenizer, seed) if objective == "diffcse" else None
        # word2vec's output vectors start at zero; the noise distribution is counted on the training corpus in setup().
        self.context_embeddings = (
            torch.nn.Embedding.from_pretrained(torch.zeros_like(self.encoder.word_embeddings.weight), freeze=False)
            if objective == "sgns"
            else None
        )
        self.register_buffer("sgns_noise", torch.empty(0), persistent=False)
        self._sts_outputs: list[tuple[Tensor, Tensor]] = []

    def _set_dropout(self, probability: float) -> None:
        for module in self.encoder.backbone.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = probability

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        return self.encoder(input_ids=input_ids, attention_mask=attention_mask)

    def _step_seed(self) -> int:
        return int(os.environ.get("PL_GLOBAL_SEED", 0)) + _STEP_STRIDE * self.global_step + self.global_rank

    def on_train_batch_start(self, batch: dict, batch_idx: int) -> None:
        """Train mode and seeded dropout for every step.

        The encoder is put in train mode whatever a loader, probe or user left it in: unsupervised
        positives exist only through dropout. Dropout is seeded from (seed, step, rank): a resumed
        run and an interrupted one draw the same masks, whatever else used the RNG between steps
        (validation, probes, dataloader start-up)."""
        self.encoder.train()
        torch.manual_seed(self._step_seed())

    def setup(self, stage: str) -> None:
        """sgns: the unigram distribution^alpha of the training corpus's words, the negatives' distribution."""
        if self.hparams.objective == "sgns" and stage == "fit" and self.sgns_noise.numel() == 0:
            data = self.trainer.datamodule
            texts = [text for example in data.examples for text in example]
            encoded = self.encoder.tokenizer(texts, truncation=True, max_length=data.hparams.max_length)  # as the batches are
            ids = torch.tensor([token for sentence in encoded["input_ids"] for token in sentence])
            ids = ids[~self.encoder.special_mask(ids)]
            counts = torch.bincount(ids, minlength=self.encoder.word_embeddings.num_embeddings).double()
            self.sgns_noise = (counts**self.hparams.sgns_alpha * (counts > 0)).float().to(self.device)

    def _positive_views(self, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor]:
        """Anchor and positive views of single sentences, stacked (2B rows); see `positives`."""
        hp = self.hparams
        if hp.positives == "dropout":
            return input_ids.repeat(2, 1), attention_mask.repeat(2, 1)
        words = ~self.encoder.special_mask(input_ids) & attention_mask.bool()
        generator = torch.Generator().manual_seed(self._step_seed())
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

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        views = int(batch["num_views"])
        input_ids, attention_mask = batch["input_ids"], batch["attention_mask"]
        if self.hparams.objective == "sgns":
            return self._log_loss(self._sgns_loss(input_ids, attention_mask), input_ids.shape[0])
        if views > 1 and self.hparams.positives != "dropout":
            raise ValueError(
                f"model.positives={self.hparams.positives} makes positives of single sentences; this data has {views} texts per example"
            )
        if views == 1 and self.hparams.positives == "identical":  # the positive is the anchor's own embedding
            embeddings = self(input_ids, attention_mask)
            views_embeddings = (embeddings, embeddings)
        else:
            if views == 1:
                input_ids, attention_mask = self._positive_views(input_ids, attention_mask)
            embeddings = self(input_ids, attention_mask)
            views_embeddings = embeddings.chunk(max(views, 2))
        size = views_embeddings[0].shape[0]
        if self.hparams.objective == "nli_classifier":
            loss = self._classifier_loss(*views_embeddings, labels=batch.get("labels"))
        else:
            loss = self._loss(*views_embeddings)
        if self.hparams.objective == "diffcse":
            detection = self._replaced_token_detection_loss(input_ids, attention_mask, embeddings)
            self.log("train/rtd_loss", detection, batch_size=size, sync_dist=True)
            loss = loss + self.hparams.diffcse_weight * detection
        self._log_loss(loss, size)
        # Exactly 1 for unsupervised positives means dropout never ran: the two views are one point.
        anchors, positives = (view.detach().float() for view in views_embeddings[:2])
        positive_cosine = F.cosine_similarity(anchors, positives, dim=-1)
        self.log("train/positive_cosine", positive_cosine.mean(), batch_size=size, sync_dist=True)
        self.log("data/truncated", batch["truncated"].float(), reduce_fx="sum", batch_size=size, sync_dist=True)
        return loss

    def _log_loss(self, loss: Tensor, size: int) -> Tensor:
        if not torch.isfinite(loss):
            raise FloatingPointError(f"training loss is {loss.item()} at step {self.global_step}: {self._likely_cause()}")
        # Synced: the logged loss is the global batch's, as on one process.
        self.log("train/loss", loss, prog_bar=True, batch_size=size, sync_dist=True)
        return loss

    def _sgns_loss(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Every ordered pair of word positions of a sentence (a position with itself too) is a (word, context) pair."""
        words = ~self.encoder.special_mask(input_ids) & attention_mask.bool()
        sentence, centre, context = torch.nonzero(words.unsqueeze(2) & words.unsqueeze(1), as_tuple=True)
        generator = torch.Generator().manual_seed(self._step_seed())
        noise = self.sgns_noise.cpu()
        negatives = torch.multinomial(noise, len(sentence) * self.hparams.logistic_negatives, replacement=True, generator=generator)
        return sgns_loss(
            self.encoder.word_embeddings(input_ids[sentence, centre]),
            self.context_embeddings(input_ids[sentence, context]),
            self.context_embeddings(negatives.to(input_ids.device).view(len(sentence), -1)),
        )

    def _loss(self, anchors: Tensor, positives: Tensor, hard_negatives: Tensor | None = None) -> Tensor:
        hp = self.hparams
        if hp.objective == "logistic":
            generator = torch.Generator().manual_seed(self._step_seed())
            return logistic_loss(anchors, positives, hp.temperature, hp.similarity, hp.logistic_negatives, generator)
        if hp.objective == "symmetric_infonce":
            return symmetric_info_nce(anchors, positives, hp.temperature, hp.similarity, hard_negatives, hp.hard_negative_weight)
        return info_nce(anchors, positives, hp.temperature, hp.similarity, hard_negatives, hp.hard_negative_weight)

    def _classifier_loss(self, first: Tensor, second: Tensor, labels: Tensor | None) -> Tensor:
        if labels is None:
            raise ValueError(
                "model.objective=nli_classifier needs NLI-labelled pairs: set data.label_column and data.columns "
                "to the two sentence columns (e.g. [premise, hypothesis])"
            )
        return pair_classifier_loss(first, second, labels, self.pair_classifier)

    def _replaced_token_detection_loss(self, input_ids: Tensor, attention_mask: Tensor, embeddings: Tensor) -> Tensor:
        """DiffCSE: the generator edits words of each sentence, the discriminator finds the edits given its embedding."""
        words = ~self.encoder.special_mask(input_ids) & attention_mask.bool()
        rng = torch.Generator().manual_seed(self._step_seed())
        edited = self.generator.corrupt(input_ids, attention_mask, words, self.hparams.diffcse_mask_ratio, rng)
        logits = self.discriminator(edited, attention_mask, embeddings)
        return replaced_token_detection_loss(logits, edited != input_ids, words)

    def _likely_cause(self) -> str:
        hp = self.hparams
        if hp.similarity == "dot" and hp.temperature < 0.5:
            return (
                f"dot similarity with temperature {hp.temperature} lets logits grow without bound; "
                "use model.similarity=cos or a larger model.temperature (e.g. 1.0)"
            )
        if self.trainer is not None and "16" in str(self.trainer.precision):
            return f"{self.trainer.precision} overflow; use trainer.precision=bf16-mixed or 32"
        return f"learning rate {hp.learning_rate} may be too high; lower model.learning_rate"

    def _sts_step(self, batch: dict[str, Tensor]) -> None:
        embeddings = self(batch["input_ids"], batch["attention_mask"]).float()
        first, second = embeddings.chunk(2)
        self._sts_outputs.append((torch.stack([first, second]).cpu(), batch["scores"].cpu()))

    def _sts_log(self, name: str) -> None:
        pairs = torch.cat([pair for pair, _ in self._sts_outputs], dim=1)
        scores = torch.cat([score for _, score in self._sts_outputs])
        self._sts_outputs.clear()
        spearman, _ = sts_spearman(pairs[0], pairs[1], scores)
        self.log(name, spearman, prog_bar=True, sync_dist=True)  # equal on every rank: the mean is the value

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._sts_step(batch)

    def on_validation_epoch_end(self) -> None:
        self._sts_log("val/stsb_spearman")

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._sts_step(batch)

    def on_test_epoch_end(self) -> None:
        self._sts_log("test/stsb_spearman")

    def configure_optimizers(self):
        """AdamW (or SGD) with warm-up then linear decay (or constant); MaskedLMModule shares it, with AdamW and decay."""
        hp = self.hparams
        optimizer_name, schedule_name = hp.get("optimizer", "adamw"), hp.get("schedule", "linear")
        no_decay = ("bias", "LayerNorm.weight", "layer_norm.weight", "LayerNorm.bias")
        decay, plain = [], []
        for name, parameter in self.named_parameters():
            if parameter.requires_grad:
                (plain if name.endswith(no_decay) else decay).append(parameter)
        groups = [{"params": decay, "weight_decay": hp.weight_decay}, {"params": plain, "weight_decay": 0.0}]
        optimizer = (torch.optim.SGD if optimizer_name == "sgd" else torch.optim.AdamW)(groups, lr=hp.learning_rate)
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        warmup = int(hp.warmup * total) if hp.warmup < 1 else int(hp.warmup)

        def schedule(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            if schedule_name == "constant":
                return 1.0
            return max(0.0, (total - step) / max(total - warmup, 1))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
