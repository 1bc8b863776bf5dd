"""A bag-of-embeddings backbone: static token embeddings, optionally followed by transformer layers.

With no layers it is the encoder of the word-weighting theorem: a sentence is the pooled
embedding rows of its tokens and nothing else. It is a Hugging Face `PreTrainedModel`
(registered with `AutoModel` as `ctrain_bag`), so `SentenceEncoder` wraps it like any other
backbone, the probes call it through the same methods, and runs save and reload it in
sentence-transformers format. The layers (the contextualisation switch) have no position
embeddings: the input stays a bag, only the words' states now depend on each other.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutput


class BagConfig(PretrainedConfig):
    """Vocabulary, width, number of transformer layers on top (0: a pure bag), dropout and init scale."""

    model_type = "ctrain_bag"

    def __init__(
        self,
        vocab_size: int = 30522,
        hidden_size: int = 64,
        num_hidden_layers: int = 0,
        num_attention_heads: int = 4,
        hidden_dropout_prob: float = 0.0,
        initializer_range: float = 0.02,
        pad_token_id: int = 0,
        **kwargs,
    ) -> None:
        super().__init__(pad_token_id=pad_token_id, **kwargs)
        self.vocab_size, self.hidden_size, self.num_hidden_layers = (
            vocab_size,
            hidden_size,
            num_hidden_layers,
        )
        self.num_attention_heads, self.hidden_dropout_prob, self.initializer_range = (
            num_attention_heads,
            hidden_dropout_prob,
            initializer_range,
        )


class BagLayer(nn.Module):
    """A post-norm transformer layer (BERT's order) in plain ops: forward-mode AD (sketch IG) runs through it,
    which torch's fused `TransformerEncoderLayer` fast path does not allow in eval mode."""

    def __init__(self, hidden_size: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"the bag's width {hidden_size} must be a multiple of its {num_heads} attention heads")
        self.num_heads = num_heads
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size)
        self.out = nn.Linear(hidden_size, hidden_size)
        self.feed_forward = nn.Sequential(
            nn.Linear(hidden_size, 4 * hidden_size),
            nn.GELU(),
            nn.Linear(4 * hidden_size, hidden_size),
        )
        self.norm1, self.norm2 = nn.LayerNorm(hidden_size), nn.LayerNorm(hidden_size)
        self.dropout = nn.Dropout(dropout)

    def forward(self, states: Tensor, padding: Tensor) -> Tensor:
        batch, length, width = states.shape
        query, key, value = self.qkv(states).view(batch, length, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        scores = query @ key.transpose(-1, -2) / math.sqrt(width // self.num_heads)
        scores = scores.masked_fill(padding[:, None, None, :], torch.finfo(scores.dtype).min)
        mixed = (self.dropout(scores.softmax(-1)) @ value).transpose(1, 2).reshape(batch, length, width)
        states = self.norm1(states + self.dropout(self.out(mixed)))
        return self.norm2(states + self.dropout(self.feed_forward(states)))


class BagModel(PreTrainedModel):
    """Token embeddings -> dropout -> `num_hidden_layers` post-norm transformer layers (none by default)."""

    config_class = BagConfig
    base_model_prefix = "bag"

    def __init__(self, config: BagConfig) -> None:
        super().__init__(config)
        self.embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.layers = nn.ModuleList(
            BagLayer(
                config.hidden_size,
                config.num_attention_heads,
                config.hidden_dropout_prob,
            )
            for _ in range(config.num_hidden_layers)
        )
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        """N(0, initializer_range) for embeddings and linear maps, as BERT."""
        if isinstance(module, (nn.Embedding, nn.Linear)):
            nn.init.normal_(module.weight, 0.0, self.config.initializer_range)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embeddings = value

    def forward(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        inputs_embeds: Tensor | None = None,
        position_ids: Tensor | None = None,
        output_hidden_states: bool = False,
        **kwargs,  # token_type_ids, return_dict from callers of Hugging Face models
    ) -> BaseModelOutput:
        """Token states (and every layer's with `output_hidden_states`); `position_ids` is ignored: a bag has no positions."""
        states = self.embeddings(input_ids) if inputs_embeds is None else inputs_embeds
        if attention_mask is None:
            attention_mask = torch.ones(states.shape[:2], dtype=torch.long, device=states.device)
        padding = ~attention_mask.bool()
        hidden = [self.dropout(states)]
        for layer in self.layers:
            hidden.append(layer(hidden[-1], padding))
        return BaseModelOutput(
            last_hidden_state=hidden[-1],
            hidden_states=tuple(hidden) if output_hidden_states else None,
        )


AutoConfig.register(BagConfig.model_type, BagConfig)
AutoModel.register(BagConfig, BagModel)
