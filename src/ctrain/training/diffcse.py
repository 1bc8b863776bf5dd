"""DiffCSE's replaced-token detection (Chuang et al., NAACL 2022): a frozen generator and a conditioned discriminator.

The generator, a masked language model, fills masked words of the training sentence with its
most likely token; the discriminator reads the edited sentence with its [CLS] input replaced by
the sentence embedding and predicts, per token, whether the generator changed it. The loss
reaches the encoder only through that embedding: it must encode what an edit would change.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn
from transformers import AutoModelForMaskedLM, PreTrainedTokenizerBase

from ctrain import assets
from ctrain.models.encoder import tiny_backbone
from ctrain.runtime import seeded


class FrozenGenerator:
    """A masked language model that edits sentences; frozen and always in eval mode.

    Deliberately not an `nn.Module` (so not a child of the LightningModule): Lightning's
    train/eval switching, `encoder.train()`, the optimizer, DDP and checkpoints never see it.
    `source` is any masked-LM path or hub id sharing the encoder's tokenizer, or `tiny-bert`
    (random init, for CPU runs).
    """

    def __init__(self, source: str, tokenizer: PreTrainedTokenizerBase, seed: int = 0) -> None:
        if tokenizer.mask_token_id is None:
            raise ValueError("model.objective=diffcse needs an encoder tokenizer with a mask token: use a BERT/RoBERTa/MPNet encoder")
        self.model = _load_masked_lm(source, tokenizer, seed).eval().requires_grad_(False)
        vocabulary = self.model.get_output_embeddings().weight.shape[0]
        if vocabulary < len(tokenizer):
            raise ValueError(
                f"model.objective.init_args.generator '{source}' predicts {vocabulary} tokens but the encoder's tokenizer has "
                f"{len(tokenizer)}: use a generator with the encoder's tokenizer (distilbert-base-uncased for bert-base-uncased)"
            )
        self.mask_token_id = tokenizer.mask_token_id
        # Refills the encoder could not read as words: special tokens and ids beyond its vocabulary.
        self.never_refill = torch.zeros(vocabulary, dtype=torch.bool)
        self.never_refill[tokenizer.all_special_ids] = True
        self.never_refill[len(tokenizer) :] = True

    @torch.no_grad()
    def corrupt(self, input_ids: Tensor, attention_mask: Tensor, editable: Tensor, mask_ratio: float, rng: torch.Generator) -> Tensor:
        """`input_ids` with each editable token masked with probability `mask_ratio` and refilled by the generator.

        The refill is the generator's most likely token (DiffCSE's greedy choice), never a special token
        of the encoder's vocabulary; it may restore the original word, which then counts as not replaced.
        """
        self.model.to(input_ids.device)
        masked = (torch.rand(input_ids.shape, generator=rng) < mask_ratio).to(input_ids.device) & editable
        logits = self.model(input_ids=input_ids.masked_fill(masked, self.mask_token_id), attention_mask=attention_mask).logits
        logits = logits.masked_fill(self.never_refill.to(logits.device), torch.finfo(logits.dtype).min)
        return torch.where(masked, logits.argmax(-1), input_ids)


def _load_masked_lm(source: str, tokenizer: PreTrainedTokenizerBase, seed: int) -> nn.Module:
    prefix, architecture = assets.split_prefix(source)
    if prefix == assets.TINY:
        config = tiny_backbone(architecture, tokenizer, hidden_size=64, num_layers=1, seed=seed).config
        with seeded(seed):
            return AutoModelForMaskedLM.from_config(config)
    try:
        return AutoModelForMaskedLM.from_pretrained(source)
    except OSError:
        raise OSError(
            f"cannot load the masked language model '{source}' (model.objective.init_args.generator): give a local directory "
            f"with its config and weights (download it on a connected machine), or tiny-bert for a CPU run"
        ) from None


class ConditionedDiscriminator(nn.Module):
    """A copy of the encoder's backbone as loaded, plus a per-token binary head.

    As in DiffCSE's code (`aux_bert.load_state_dict(pretrained_model.bert.state_dict(), strict=False)`), the
    discriminator starts from the encoder's weights, then trains on its own. The sentence embedding replaces
    the output of the embedding layer at position 0 ([CLS]/<s>): the discriminator's only view of the
    sentence before the edit.
    """

    def __init__(self, backbone: nn.Module, seed: int = 0) -> None:
        super().__init__()
        if not hasattr(backbone, "embeddings"):
            raise ValueError(f"model.objective=diffcse needs an encoder with an embedding layer; {type(backbone).__name__} has none")
        self.backbone = copy.deepcopy(backbone)
        with seeded(seed):
            self.head = nn.Linear(backbone.config.hidden_size, 1)

    def forward(self, input_ids: Tensor, attention_mask: Tensor, sentence_embeddings: Tensor) -> Tensor:
        """Replaced-token logits, shape (batch, tokens)."""

        def condition_on_sentence(module: nn.Module, inputs: tuple, output: Tensor) -> Tensor:
            return torch.cat([sentence_embeddings.unsqueeze(1).to(output.dtype), output[:, 1:]], dim=1)

        hook = self.backbone.embeddings.register_forward_hook(condition_on_sentence)
        try:
            states = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        finally:
            hook.remove()
        return self.head(states).squeeze(-1)
