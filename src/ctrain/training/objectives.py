"""Training objectives as modules: one class per objective, chosen in YAML by `class_path` or by short name.

    model:
      objective: infonce                     # short name: the class with its defaults
    model:
      objective:
        class_path: ctrain.training.objectives.SGNS
        init_args: {num_negatives: 5, alpha: 0.75}

Each objective gets an `ObjectiveInputs` from ContrastiveModule's training step and returns the loss and
any extra values to log (as `train/<name>`). An objective owns its settings: those on similarity logits
(`SimilarityObjective`) hold the similarity and temperature, which ContrastiveModule hands them once, from
`model.similarity` and `model.temperature`, as it builds them; SGNS and the NLI classifier have neither.
Heads and tables that belong to an objective (SBERT's classifier, DiffCSE's discriminator, word2vec's output
vectors) are its submodules: trained, checkpointed, never exported. The formulas are computed by the functions of ctrain.training.losses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import Tensor, nn

from ctrain.data.datamodule import ContrastiveDataModule
from ctrain.data.sources import NLI_LABELS
from ctrain.models.encoder import SentenceEncoder
from ctrain.models.similarity import Similarity
from ctrain.runtime import check_choice
from ctrain.training.diffcse import ConditionedDiscriminator, FrozenGenerator
from ctrain.training.losses import (
    info_nce,
    logistic_loss,
    pair_classifier_loss,
    replaced_token_detection_loss,
    sgns_loss,
)

ObjectiveName = Literal["infonce", "symmetric_infonce", "logistic", "nli_classifier", "diffcse", "sgns"]


@dataclass
class ObjectiveInputs:
    """What a training step hands its objective.

    `input_ids` / `attention_mask` are the encoded rows, view after view (anchors, then positives, ...);
    `embeddings` are those rows' sentence embeddings and `views` the same split per view (anchors,
    positives[, hard negatives]); both are None for a token-level objective (`sentence_level = False`).
    `seed` is the step's objective stream (ctrain.runtime.step_seed), for the objective's own random draws; `encoder`
    the model being trained.
    """

    input_ids: Tensor
    attention_mask: Tensor
    embeddings: Tensor | None
    views: tuple[Tensor, ...] | None
    seed: int
    encoder: SentenceEncoder
    labels: Tensor | None = None

    def words(self) -> Tensor:
        """True at word positions: not [CLS]/[SEP]/PAD, not masked out of the view."""
        return ~self.encoder.special_mask(self.input_ids) & self.attention_mask.bool()


class Objective(nn.Module):
    """A training loss of ContrastiveModule.

    Subclasses set `name` (the short name in configs), `sentence_level` (False: the objective reads tokens
    and the step skips the sentence embeddings) and `reads_labels` (the data must give NLI labels), and may
    build encoder-dependent parts in `attach` and read the training corpus in `prepare`.
    """

    name: ClassVar[str]
    sentence_level: ClassVar[bool] = True
    reads_labels: ClassVar[bool] = False

    def attach(self, encoder: SentenceEncoder, seed: int) -> None:
        """Build the parts that depend on the encoder (called once, from ContrastiveModule's constructor)."""

    def prepare(self, encoder: SentenceEncoder, data: ContrastiveDataModule) -> None:
        """Read what the objective needs of the training data (called at the start of fit)."""

    def smallest_global_batch(self, hard_negatives: bool) -> int:
        """The fewest examples a global batch needs for the loss to see a negative (the CLI checks it before
        training); objectives that draw negatives from the batch's other sentences need more than one."""
        return 1

    def forward(self, inputs: ObjectiveInputs) -> tuple[Tensor, dict[str, Tensor]]:  # pragma: no cover - abstract
        raise NotImplementedError


class SimilarityObjective(Objective):
    """An objective on logits similarity(u, v) / temperature, which owns both settings (as sentence-transformers'
    `MultipleNegativesRankingLoss(model, scale, similarity_fct)` does); ContrastiveModule sets them once from
    model.similarity and model.temperature, so that a config's overlay can swap the objective and keep them."""

    similarity: Similarity = "cos"
    temperature: float = 0.05

    def score_by(self, similarity: Similarity, temperature: float) -> None:
        """Use logits `similarity` / `temperature` (model.similarity, model.temperature, which ContrastiveModule checks)."""
        self.similarity, self.temperature = similarity, temperature


class InfoNCE(SimilarityObjective):
    """SimCSE's InfoNCE (Gao et al., 2021): -log softmax_j(sim(a_i, p_j) / T)[j = i] over the (global) batch.

    Anchor i's positive is positives[i]; every other positive, and every hard negative when the data has
    them, is a negative. `hard_negative_weight` is added to the logit of each anchor's own hard negative
    (SimCSE's z3 weight). Example: `objective: infonce` with `temperature: 0.05`, `similarity: cos`.
    """

    name = "infonce"
    symmetric = False

    def __init__(self, hard_negative_weight: float = 0.0) -> None:
        super().__init__()
        self.hard_negative_weight = hard_negative_weight

    def smallest_global_batch(self, hard_negatives: bool) -> int:
        return 1 if hard_negatives else 2  # a lone anchor's only candidate is its positive: loss exactly 0

    def forward(self, inputs: ObjectiveInputs) -> tuple[Tensor, dict[str, Tensor]]:
        anchors, positives, *hard = inputs.views
        hard_negatives = hard[0] if hard else None
        loss = info_nce(anchors, positives, self.temperature, self.similarity, hard_negatives, self.hard_negative_weight, symmetric=self.symmetric)
        return loss, {}


class SymmetricInfoNCE(InfoNCE):
    """InfoNCE in both directions, averaged: anchors retrieve positives and positives retrieve anchors.

    The all-* sentence-transformers models' loss (MultipleNegativesSymmetricRankingLoss, scale = 1 / T);
    hard negatives count in the anchor -> positive direction only. Example: `objective: symmetric_infonce`.
    """

    name = "symmetric_infonce"
    symmetric = True


class Logistic(SimilarityObjective):
    """The word-weighting theorem's binary logistic objective (Kurita et al., 2023, Theorem 1).

    -log sigma(sim(s, s+) / T) - sum over `num_negatives` random other sentences s- of log sigma(-sim(s, s-) / T),
    averaged over anchors. Example: `objective: logistic` with `similarity: dot` and `temperature: 1.0`.
    """

    name = "logistic"

    def __init__(self, num_negatives: int = 1) -> None:
        super().__init__()
        self.num_negatives = num_negatives

    def smallest_global_batch(self, hard_negatives: bool) -> int:
        return self.num_negatives + 1  # each negative is another sentence of the batch

    def forward(self, inputs: ObjectiveInputs) -> tuple[Tensor, dict[str, Tensor]]:
        anchors, positives = inputs.views[:2]
        generator = torch.Generator().manual_seed(inputs.seed)
        loss = logistic_loss(anchors, positives, self.temperature, self.similarity, self.num_negatives, generator)
        return loss, {}


class NLIClassifier(Objective):
    """SBERT's softmax classifier (Reimers & Gurevych, 2019): cross-entropy of a linear layer over (u, v, |u - v|).

    Needs NLI-labelled pairs (data.label_column, data.columns: [premise, hypothesis]). Example:
    `objective: nli_classifier` with configs/sbert_nli_cpu.yaml's data.
    """

    name = "nli_classifier"
    reads_labels = True

    def attach(self, encoder: SentenceEncoder, seed: int) -> None:
        self.classifier = nn.Linear(3 * encoder.embedding_size, len(NLI_LABELS))

    def forward(self, inputs: ObjectiveInputs) -> tuple[Tensor, dict[str, Tensor]]:
        if inputs.labels is None:
            raise ValueError(
                "model.objective=nli_classifier needs NLI-labelled pairs: set data.label_column and data.columns "
                "to the two sentence columns (e.g. [premise, hypothesis])"
            )
        first, second = inputs.views[:2]
        return pair_classifier_loss(first, second, inputs.labels, self.classifier), {}


class DiffCSE(InfoNCE):
    """DiffCSE (Chuang et al., NAACL 2022): InfoNCE + `weight` x replaced-token detection.

    A frozen masked LM (`generator`) refills `mask_ratio` of the words; a discriminator whose [CLS] input is
    the sentence embedding predicts which tokens were replaced (ctrain.training.diffcse). Example:
        objective: {class_path: ctrain.training.objectives.DiffCSE, init_args: {generator: distilbert-base-uncased}}
    `generator: tiny-bert` is a random one, for CPU runs. The discriminator starts as a copy of the encoder's
    backbone (as DiffCSE's code does). Different from the paper by design: every chosen word becomes [MASK] (no
    80/10/10 split), the generator refills the masked positions only (greedy), and the detection loss is averaged
    over word positions only, so the same `weight` (0.005) weighs it more than the paper's lambda.
    """

    name = "diffcse"

    def __init__(self, generator: str | None = None, weight: float = 0.005, mask_ratio: float = 0.3, hard_negative_weight: float = 0.0) -> None:
        super().__init__(hard_negative_weight)
        if generator is None:
            raise ValueError(
                "the diffcse objective needs its generator: a masked-LM path with the encoder's tokenizer "
                "(distilbert-base-uncased for bert-base-uncased), or tiny-bert on CPU "
                "(objective: {class_path: ctrain.training.objectives.DiffCSE, init_args: {generator: tiny-bert}})"
            )
        if not 0 < mask_ratio < 1:
            raise ValueError(f"DiffCSE mask_ratio must be between 0 and 1, got {mask_ratio}")
        self.generator_source, self.weight, self.mask_ratio = generator, weight, mask_ratio

    def attach(self, encoder: SentenceEncoder, seed: int) -> None:
        self.discriminator = ConditionedDiscriminator(encoder.backbone, seed)
        self.generator = FrozenGenerator(self.generator_source, encoder.tokenizer, seed)

    def forward(self, inputs: ObjectiveInputs) -> tuple[Tensor, dict[str, Tensor]]:
        contrastive, _ = super().forward(inputs)
        detection = self.detection_loss(inputs)
        return contrastive + self.weight * detection, {"rtd_loss": detection}

    def detection_loss(self, inputs: ObjectiveInputs) -> Tensor:
        """The generator edits words of each row, the discriminator finds the edits given the row's embedding."""
        words = inputs.words()
        rng = torch.Generator().manual_seed(inputs.seed)
        edited = self.generator.corrupt(inputs.input_ids, inputs.attention_mask, words, self.mask_ratio, rng)
        logits = self.discriminator(edited, inputs.attention_mask, inputs.embeddings)
        return replaced_token_detection_loss(logits, edited != inputs.input_ids, words)


class SGNS(Objective):
    """word2vec's skip-gram with negative sampling over the token pairs of each sentence (Mikolov et al., 2013).

    Every ordered pair of word positions of a sentence (a position with itself too, as KL(w) counts it) is a
    (word, context) pair: -log sigma(<u_w, v_c>) - sum over `num_negatives` noise words n of log sigma(-<u_w, v_n>),
    noise drawn from the training corpus's unigram distribution to the power `alpha` (1: the distribution
    Theorem 1's proof uses; 0.75: word2vec's). Input vectors u are the encoder's word embeddings, output
    vectors v a training-only table starting at zero. Example: `objective: sgns` on a `bag-bert` encoder.
    """

    name = "sgns"
    sentence_level = False

    def __init__(self, num_negatives: int = 1, alpha: float = 1.0) -> None:
        super().__init__()
        self.num_negatives, self.alpha = num_negatives, alpha
        self.register_buffer("noise", torch.empty(0), persistent=False)

    def attach(self, encoder: SentenceEncoder, seed: int) -> None:
        self.context_embeddings = nn.Embedding.from_pretrained(torch.zeros_like(encoder.word_embeddings.weight), freeze=False)

    def prepare(self, encoder: SentenceEncoder, data: ContrastiveDataModule) -> None:
        """The noise distribution of the training corpus (`unigram_noise`)."""
        if self.noise.numel():
            return
        sentences = [text for example in data.examples for text in example]
        noise = unigram_noise(encoder, sentences, data.hparams.max_length, self.alpha)
        self.noise = noise.to(self.context_embeddings.weight.device)

    def forward(self, inputs: ObjectiveInputs) -> tuple[Tensor, dict[str, Tensor]]:
        return self.pair_loss(inputs.encoder, inputs.input_ids, sgns_pairs(inputs.words()), inputs.seed), {}

    def pair_loss(self, encoder: SentenceEncoder, input_ids: Tensor, pairs: tuple[Tensor, Tensor, Tensor], seed: int) -> Tensor:
        """The loss of the (sentence, centre, context) position pairs of `input_ids`, with `num_negatives` noise words
        a pair drawn from the generator seeded with `seed` (the step's objective stream)."""
        sentence, centre, context = pairs
        generator = torch.Generator().manual_seed(seed)
        negatives = torch.multinomial(self.noise.cpu(), len(sentence) * self.num_negatives, replacement=True, generator=generator)
        return sgns_loss(
            encoder.word_embeddings(input_ids[sentence, centre]),
            self.context_embeddings(input_ids[sentence, context]),
            self.context_embeddings(negatives.to(input_ids.device).view(len(sentence), -1)),
        )


def sgns_pairs(words: Tensor, self_pairs: bool = True) -> tuple[Tensor, Tensor, Tensor]:
    """(sentence, centre, context) indices of every ordered pair of word positions (`words`: (batch, length) bool)
    within a sentence; `self_pairs`: a position is its own context too, as KL(w) counts it (word2vec's window leaves it out)."""
    pairs = words.unsqueeze(2) & words.unsqueeze(1)
    if not self_pairs:
        pairs &= ~torch.eye(pairs.shape[1], dtype=torch.bool, device=pairs.device)
    return torch.nonzero(pairs, as_tuple=True)


def unigram_noise(encoder: SentenceEncoder, sentences: list[str], max_length: int, alpha: float) -> Tensor:
    """SGNS's noise distribution: unigram counts of the sentences' words (tokenised as the batches are)^alpha, over
    the encoder's vocabulary (unnormalised; zero for types the sentences never use)."""
    encoded = encoder.tokenizer(sentences, truncation=True, max_length=max_length)
    ids = torch.tensor([token for sentence in encoded["input_ids"] for token in sentence])
    ids = ids[~encoder.special_mask(ids)]
    counts = torch.bincount(ids, minlength=encoder.word_embeddings.num_embeddings).double()
    return (counts**alpha * (counts > 0)).float()


OBJECTIVES: dict[str, type[Objective]] = {cls.name: cls for cls in (InfoNCE, SymmetricInfoNCE, Logistic, NLIClassifier, DiffCSE, SGNS)}


def make_objective(objective: Objective | str) -> Objective:
    """The objective itself, or a short name's class with its defaults."""
    if isinstance(objective, Objective):
        return objective
    check_choice(objective, OBJECTIVES, "model.objective")
    return OBJECTIVES[objective]()
