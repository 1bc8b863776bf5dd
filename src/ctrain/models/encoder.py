"""A sentence encoder: any Hugging Face encoder plus a pooling head.

`SentenceEncoder.forward` is the function `f(X)` of docs/metrics.md: the sentence
embedding the model returns at inference. It accepts `inputs_embeds` and explicit
`position_ids`, which the Integrated-Gradients probe needs (RoBERTa and MPNet
derive positions from the input ids, so a PAD baseline must not move them).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import KW_ONLY, dataclass, field
from itertools import chain
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import AutoConfig, AutoModel, AutoTokenizer, PreTrainedTokenizerBase

from ctrain import assets
from ctrain.models.bag import BagConfig, BagModel
from ctrain.models.pooling import Pooler, PoolingMode, pooling_of_st_config
from ctrain.models.st_modules import Dense
from ctrain.models.tokenizers import tiny_tokenizer, without_special_tokens
from ctrain.runtime import check_choice, seeded

HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")
TINY_ARCHITECTURES = ("bert", "roberta", "mpnet")


def word_special_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Ids that are never words: [CLS]/[SEP]/<s>/</s>/PAD/MASK. [UNK] stands for a real word, so it is not one."""
    return sorted(set(tokenizer.all_special_ids) - {tokenizer.unk_token_id})


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """Eval mode (dropout off) for the block, then the mode the module had before, even on error."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


@contextmanager
def attribution_mode(encoder: SentenceEncoder, dtype: torch.dtype = torch.float32) -> Iterator[torch.device]:
    """Eval mode, ``dtype`` (fp32 unless IG asks for fp64), autocast off, autograd available; everything restored on exit.

    What every attribution of the encoder (IG, SHAP, the Theorem-1 vectors) runs under, so that it leaves the model
    as it found it."""
    other_precision = [t for t in chain(encoder.parameters(), encoder.buffers()) if t.is_floating_point() and t.dtype != dtype]
    dtypes = [t.dtype for t in other_precision]
    device = next(encoder.parameters()).device
    try:
        for tensor in other_precision:  # bf16/fp16 -> fp32 -> fp64 -> back is lossless
            tensor.data = tensor.data.to(dtype)
        with eval_mode(encoder), torch.inference_mode(False), torch.autocast(device.type, enabled=False):
            yield device
    finally:
        for tensor, original in zip(other_precision, dtypes):
            tensor.data = tensor.data.to(original)


class SentenceEncoder(nn.Module):
    """Backbone + pooler (+ the Dense layers and L2 normalisation a sentence-transformers model declares).

    `dense` holds sentence-transformers `Dense` modules as they were saved (any activation, any
    output size, after any pooling), so inference matches `SentenceTransformer` on the same directory.
    """

    def __init__(
        self,
        backbone: nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        pooling: PoolingMode = "mean",
        mlp_only_train: bool = False,
        normalize: bool = False,
        dense: list[nn.Module] | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.pooler = Pooler(pooling, backbone.config.hidden_size, mlp_only_train)
        self.dense = nn.ModuleList(dense or [])
        self.normalize = normalize
        self.register_buffer("special_ids", torch.tensor(word_special_ids(tokenizer), dtype=torch.long), persistent=False)
        # `from_pretrained` hands back its model in eval mode; a new module is in train mode, and so is
        # this one, whatever the loader did (Lightning 2.x keeps the modes it finds: dropout would be off).
        self.train()

    @property
    def hidden_size(self) -> int:
        """Size of the token states."""
        return self.backbone.config.hidden_size

    @property
    def embedding_size(self) -> int:
        """Size of the sentence embedding f(X): the last Dense layer's output, else the token states'."""
        return self.dense[-1].out_features if len(self.dense) else self.hidden_size

    @property
    def num_layers(self) -> int:
        return self.backbone.config.num_hidden_layers

    @property
    def word_embeddings(self) -> nn.Embedding:
        return self.backbone.get_input_embeddings()

    def tokenize(self, sentences: list[str], max_length: int | None = 128) -> dict[str, Tensor]:
        """Pad to the longest sentence; truncate to `max_length` tokens."""
        batch = self.tokenizer(
            list(sentences),
            padding=True,
            truncation=max_length is not None,
            max_length=max_length,
            return_tensors="pt",
        )
        batch.pop("token_type_ids", None)  # single-segment input everywhere: all zeros
        return dict(batch)

    def special_mask(self, input_ids: Tensor) -> Tensor:
        """True at [CLS]/[SEP]/<s>/</s>/PAD/MASK positions (not [UNK], which stands for a word)."""
        return torch.isin(input_ids, self.special_ids.to(input_ids.device))

    def position_ids(self, input_ids: Tensor) -> Tensor:
        """The position ids the backbone would derive from `input_ids` itself."""
        config = self.backbone.config
        if config.model_type in ("roberta", "xlm-roberta", "camembert", "mpnet"):
            padding_idx = config.pad_token_id
            not_pad = input_ids.ne(padding_idx).long()
            return torch.cumsum(not_pad, dim=1) * not_pad + padding_idx
        return torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)

    def token_states(self, input_ids: Tensor | None = None, attention_mask: Tensor | None = None, **inputs):
        """The backbone's output (last_hidden_state, and every layer's with `output_hidden_states=True`) on `input_ids`
        or `inputs_embeds`; `position_ids` default to those the backbone would derive from `input_ids` itself."""
        if inputs.get("position_ids") is None and input_ids is not None:
            inputs["position_ids"] = self.position_ids(input_ids)
        if inputs.get("inputs_embeds") is not None:
            input_ids = None
        return self.backbone(input_ids=input_ids, attention_mask=attention_mask, **inputs)

    def forward(self, input_ids: Tensor | None = None, attention_mask: Tensor | None = None, **inputs) -> Tensor:
        """Sentence embeddings f(X), shape (batch, hidden), of `input_ids` or `inputs_embeds` (with `position_ids`, as
        `token_states`)."""
        if attention_mask is None:
            reference = input_ids if input_ids is not None else inputs["inputs_embeds"][..., 0]
            attention_mask = torch.ones(reference.shape[:2], dtype=torch.long, device=reference.device)
        states = self.token_states(input_ids, attention_mask, **inputs).last_hidden_state
        pooled = self.pooler(states, attention_mask)
        for layer in self.dense:
            pooled = layer({"sentence_embedding": pooled})["sentence_embedding"]
        return F.normalize(pooled, dim=-1) if self.normalize else pooled

    def set_dropout(self, probability: float) -> None:
        """The probability of every dropout layer of the backbone (hidden and attention)."""
        for module in self.backbone.modules():
            if isinstance(module, nn.Dropout):
                module.p = probability

    @torch.no_grad()
    def encode(self, sentences: list[str], batch_size: int = 64, max_length: int | None = 128) -> Tensor:
        """Inference embeddings of many sentences (eval mode, train mode restored).

        Batches are filled longest first (by characters, a cheap proxy for tokens), so that
        little compute goes to padding; rows come back in the input order.
        """
        order = sorted(range(len(sentences)), key=lambda i: -len(sentences[i]))
        device = next(self.parameters()).device
        chunks = []
        with eval_mode(self):
            for start in range(0, len(order), batch_size):
                batch = self.tokenize([sentences[i] for i in order[start : start + batch_size]], max_length)
                chunks.append(self(**{k: v.to(device) for k, v in batch.items()}).float().cpu())
        if not chunks:
            return torch.empty(0, self.embedding_size)
        embeddings = torch.cat(chunks)
        return embeddings[torch.tensor(order).argsort()]


def tiny_backbone(
    architecture: str, tokenizer: PreTrainedTokenizerBase, hidden_size: int = 64, num_layers: int = 2, seed: int = 0
) -> nn.Module:
    """A randomly initialised encoder of the given family, sized for CPU tests and demos."""
    check_choice(architecture, TINY_ARCHITECTURES, "tiny architecture")
    config = AutoConfig.for_model(
        architecture,
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        intermediate_size=4 * hidden_size,
        max_position_embeddings=130 if architecture == "bert" else 130 + tokenizer.pad_token_id + 1,
        pad_token_id=tokenizer.pad_token_id,
        type_vocab_size=1 if architecture == "roberta" else 2,
    )
    with seeded(seed):
        return AutoModel.from_config(config, add_pooling_layer=False)


def bag_backbone(
    tokenizer: PreTrainedTokenizerBase, hidden_size: int = 64, num_layers: int = 0, seed: int = 0
) -> nn.Module:
    """A random bag-of-embeddings backbone over the tokenizer's vocabulary (ctrain.models.bag)."""
    config = BagConfig(vocab_size=len(tokenizer), hidden_size=hidden_size, num_hidden_layers=num_layers, pad_token_id=tokenizer.pad_token_id)
    with seeded(seed):
        return BagModel(config)


def _random_backbone(source: str, trust_remote_code: bool, seed: int) -> nn.Module:
    """The architecture of `source` with every weight drawn afresh (`init_weights` after `from_pretrained`
    keeps the loaded weights: transformers marks them initialised), in float32."""
    config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
    options = {"trust_remote_code": trust_remote_code, "dtype": torch.float32}
    with seeded(seed):
        try:
            return AutoModel.from_config(config, add_pooling_layer=False, **options)
        except TypeError:  # architectures without that argument have no such pooler
            return AutoModel.from_config(config, **options)


def _pretrained_backbone(source: str, trust_remote_code: bool) -> nn.Module:
    """The bare encoder in float32, without the unused next-sentence pooler, whose parameters DDP would flag.

    float32 whatever the checkpoint's dtype: transformers loads a bf16/fp16 checkpoint in that dtype,
    and the optimizer must keep full-precision weights (mixed precision is the trainer's `precision`).
    """
    options = {"trust_remote_code": trust_remote_code, "dtype": torch.float32}
    try:
        return AutoModel.from_pretrained(source, add_pooling_layer=False, **options)
    except TypeError:  # architectures without that argument have no such pooler
        return AutoModel.from_pretrained(source, **options)


@dataclass
class _DeclaredHead:
    """What a sentence-transformers directory declares after its transformer."""

    pooling: PoolingMode | None = None
    normalize: bool = False
    dense: list[nn.Module] = field(default_factory=list)


_SUPPORTED_MODULES = ("Transformer", "Pooling", "Dense", "Normalize")


def _sentence_transformers_head(path: Path, trust_remote_code: bool) -> _DeclaredHead:
    """Pooling, Dense layers (loaded by sentence-transformers itself) and Normalize, from modules.json."""
    modules_file = path / "modules.json"
    head = _DeclaredHead()
    if not modules_file.exists():
        return head
    for module in json.loads(modules_file.read_text()):
        kind = module["type"].rsplit(".", 1)[-1]
        if kind not in _SUPPORTED_MODULES:
            raise ValueError(
                f"'{path}' declares a sentence-transformers module '{kind}' that ctrain cannot train: "
                f"ctrain supports {', '.join(_SUPPORTED_MODULES)}; remove it from modules.json or use another model"
            )
        if kind == "Normalize":
            head.normalize = True
        elif kind == "Dense":
            head.dense.append(Dense.load(str(path / module["path"]), trust_remote_code=trust_remote_code))
        elif kind == "Pooling":
            head.pooling = pooling_of_st_config(json.loads((path / module["path"] / "config.json").read_text()))
    return head


def _backbone_dir(path: Path) -> Path:
    """sentence-transformers keeps the transformer at the root or in 0_Transformer/."""
    return path / "0_Transformer" if (path / "0_Transformer" / "config.json").exists() else path


@dataclass
class EncoderConfig:
    """The encoder a run trains (`model.encoder.*` in a config).

    Args:
        name: hub id, local path, a run's saved model, `all-MiniLM-L6-v2` / `all-mpnet-base-v2` (offline),
            `tiny-<bert|roberta|mpnet>` (random init, for tests and demos) or `bag-<bert|roberta|mpnet>`.
        pooling: mean | cls | cls_mlp (SimCSE's CLS + MLP head) | max; None keeps what a
            sentence-transformers directory declares (mean elsewhere).
        mlp_only_train: with cls_mlp, use the MLP in training only (unsupervised SimCSE).
        normalize: L2-normalise the inference embedding; None keeps what the model declares.
        dropout: override the encoder's hidden and attention dropout (the positives' only noise when unsupervised).
        trust_remote_code: allow a hub model's own code to run.
        tiny_hidden_size, tiny_num_layers: size of a `tiny-*` encoder (tiny_hidden_size: width of a `bag-*` one).
        bag_layers: transformer layers on top of a `bag-*` encoder's embeddings (0: a pure bag of embeddings).
        reinitialize: keep a loaded model's architecture and tokenizer, redraw every weight (a random start).
        embedding_init_std: redraw the input word embeddings from N(0, std^2) (the initial embedding scale).
    """

    name: str = "tiny-bert"
    _: KW_ONLY  # the name may be given alone; every other setting by its name
    pooling: PoolingMode | None = None
    mlp_only_train: bool = False
    normalize: bool | None = None
    dropout: float | None = None
    trust_remote_code: bool = False
    tiny_hidden_size: int = 64
    tiny_num_layers: int = 2
    bag_layers: int = 0
    reinitialize: bool = False
    embedding_init_std: float | None = None

    def load(self, seed: int = 0) -> SentenceEncoder:
        """The encoder these settings describe; random parts drawn from `seed`."""
        settings = {key: value for key, value in vars(self).items() if key not in ("name", "dropout")}
        encoder = load_encoder(self.name, seed=seed, **settings)
        if self.dropout is not None:
            encoder.set_dropout(self.dropout)
        return encoder


def load_encoder(
    name: str,
    *,
    pooling: PoolingMode | None = None,
    normalize: bool | None = None,
    mlp_only_train: bool = False,
    trust_remote_code: bool = False,
    tiny_hidden_size: int = 64,
    tiny_num_layers: int = 2,
    seed: int = 0,
    bag_layers: int = 0,
    reinitialize: bool = False,
    embedding_init_std: float | None = None,
) -> SentenceEncoder:
    """Load an encoder by hub id, local path, offline short name, `tiny-<bert|roberta|mpnet>` or `bag-<...>`.

    For a sentence-transformers directory (the offline encoders, ctrain's saved models)
    pooling and normalisation default to what the directory declares and its Dense layers
    are kept; elsewhere the defaults are mean pooling without normalisation. `bag-<arch>` is
    a bag of `tiny_hidden_size`-wide token embeddings over that family's tokenizer, without
    [CLS]/[SEP] (so `cls` pooling takes the first token), with `bag_layers` transformer layers on top.
    `reinitialize` keeps a loaded model's architecture and tokenizer and redraws every weight
    (seeded by `seed`); `embedding_init_std` redraws the input word embeddings from N(0, std^2).
    """
    if embedding_init_std is not None and embedding_init_std <= 0:
        raise ValueError(f"embedding_init_std must be positive, got {embedding_init_std}")
    encoder = _load_encoder(name, pooling=pooling, normalize=normalize, mlp_only_train=mlp_only_train, trust_remote_code=trust_remote_code, tiny_hidden_size=tiny_hidden_size, tiny_num_layers=tiny_num_layers, seed=seed, bag_layers=bag_layers, reinitialize=reinitialize)
    if embedding_init_std is not None:
        with seeded(seed), torch.no_grad():
            nn.init.normal_(encoder.word_embeddings.weight, 0.0, embedding_init_std)
    return encoder


def _load_encoder(
    name: str,
    *,
    pooling: PoolingMode | None,
    normalize: bool | None,
    mlp_only_train: bool,
    trust_remote_code: bool,
    tiny_hidden_size: int,
    tiny_num_layers: int,
    seed: int,
    bag_layers: int,
    reinitialize: bool,
) -> SentenceEncoder:
    prefix, architecture = assets.split_prefix(name)
    if prefix in (assets.TINY, assets.BAG):  # random already: `reinitialize` has nothing to redraw
        if architecture not in TINY_ARCHITECTURES:
            raise ValueError(f"unknown architecture '{name}': choose {prefix}{f', {prefix}'.join(TINY_ARCHITECTURES)}")
        tokenizer = tiny_tokenizer(architecture)
        if prefix == assets.BAG:
            tokenizer = without_special_tokens(tokenizer)
            backbone = bag_backbone(tokenizer, tiny_hidden_size, bag_layers, seed)
        else:
            backbone = tiny_backbone(architecture, tokenizer, tiny_hidden_size, tiny_num_layers, seed)
        return SentenceEncoder(backbone, tokenizer, pooling or "mean", mlp_only_train, bool(normalize))

    path = assets.offline_encoder_path(name) or Path(name).expanduser()
    if path.exists():
        declared = _sentence_transformers_head(path, trust_remote_code)
        source = str(_backbone_dir(path))
    elif HUB_ID.fullmatch(name):
        declared, source = _DeclaredHead(), name
    else:
        raise FileNotFoundError(f"model path '{name}' does not exist: give an existing directory or a hub id")
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
        backbone = _random_backbone(source, trust_remote_code, seed) if reinitialize else _pretrained_backbone(source, trust_remote_code)
        if isinstance(backbone, BagModel):  # the saved tokenizer gets its [CLS]/[SEP] back on loading
            tokenizer = without_special_tokens(tokenizer)
    except OSError as error:
        if path.exists():
            raise
        raise OSError(
            f"cannot load '{name}' from the Hugging Face hub ({type(error).__name__}): offline, download it on a "
            f"connected machine and pass its local directory as model.encoder.name, or use all-MiniLM-L6-v2, "
            f"all-mpnet-base-v2 or tiny-bert"
        ) from None
    if reinitialize:
        with seeded(seed + 1):
            for layer in declared.dense:
                for module in layer.modules():
                    if isinstance(module, nn.Linear):
                        module.reset_parameters()
    return SentenceEncoder(
        backbone,
        tokenizer,
        pooling or declared.pooling or "mean",
        mlp_only_train,
        declared.normalize if normalize is None else normalize,
        declared.dense,
    )
