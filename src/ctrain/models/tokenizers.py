"""Tokenizers that need no hub: BERT uncased and MPNet's (shipped with the offline encoders), and byte-level BPEs
trained here on STS-B train or on a corpus file (cached by content)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerBase

from ctrain import assets
from ctrain.data.sources import read_sts_b
from ctrain.fileio import atomic_directory


def tiny_tokenizer(architecture: str) -> PreTrainedTokenizerBase:
    """A real tokenizer for a tiny model: BERT uncased (offline MiniLM), MPNet's, or a byte-level BPE."""
    if architecture == "bert":
        return AutoTokenizer.from_pretrained(assets.minilm_path())
    if architecture == "mpnet":
        return AutoTokenizer.from_pretrained(assets.mpnet_path())
    return byte_level_bpe_tokenizer()


def byte_level_bpe_tokenizer(vocab_size: int = 4000, corpus: Path | None = None) -> PreTrainedTokenizerBase:
    """A RoBERTa-style tokenizer trained once on STS-B train sentences, or on the lines of `corpus`, cached on disk
    (a corpus's cache is named by its content's hash, so an edited corpus trains a new one)."""
    if corpus is None:
        target = assets.CACHE_DIR / f"tiny-roberta-bpe-{vocab_size}"
    else:
        target = assets.CACHE_DIR / f"bpe-{vocab_size}-{hashlib.sha256(corpus.read_bytes()).hexdigest()[:16]}"
    if not (target / "tokenizer_config.json").exists():
        from tokenizers import ByteLevelBPETokenizer, processors
        from transformers import RobertaTokenizerFast

        specials = {"bos_token": "<s>", "pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>"}
        bpe = ByteLevelBPETokenizer()
        bpe.train_from_iterator(
            corpus.read_text().splitlines() if corpus else [s for pair in read_sts_b("train") for s in pair[:2]],
            vocab_size=vocab_size,
            special_tokens=[*specials.values(), "<mask>"],
        )
        bpe.post_processor = processors.RobertaProcessing(("</s>", bpe.token_to_id("</s>")), ("<s>", bpe.token_to_id("<s>")))
        tokenizer = RobertaTokenizerFast(
            tokenizer_object=bpe._tokenizer, cls_token="<s>", sep_token="</s>", mask_token="<mask>", model_max_length=512, **specials
        )
        with atomic_directory(target, keep_existing=True) as staged:  # another process may finish first
            tokenizer.save_pretrained(staged)
    return AutoTokenizer.from_pretrained(target)


def without_special_tokens(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """The tokenizer, adding no [CLS]/[SEP]: a bag's mean is over the sentence's own tokens (saved with it)."""
    from tokenizers.processors import TemplateProcessing

    tokenizer.backend_tokenizer.post_processor = TemplateProcessing(single="$A", pair="$A $B", special_tokens=[])
    return tokenizer


def load_tokenizer(name: str) -> PreTrainedTokenizerBase:
    """`bert-uncased` (shipped with the offline all-MiniLM-L6-v2), `byte-level-bpe` (tiny-roberta's, trained on STS-B
    train), `bpe:FILE` (a byte-level BPE of 4,000 tokens trained on FILE's lines, e.g. the corpus), or a directory."""
    if name == "bert-uncased":
        return AutoTokenizer.from_pretrained(assets.minilm_path())
    if name == "byte-level-bpe":
        return byte_level_bpe_tokenizer()
    prefix, file = assets.split_prefix(name)
    if prefix == assets.BPE:
        corpus = Path(file)
        if not corpus.is_file():
            raise FileNotFoundError(f"tokenizer '{name}': no file '{corpus}' to train a BPE on; build it with ctrain corpus")
        return byte_level_bpe_tokenizer(corpus=corpus)
    if not Path(name).is_dir():
        raise FileNotFoundError(f"tokenizer '{name}' is not bert-uncased, byte-level-bpe, bpe:FILE or an existing directory")
    return AutoTokenizer.from_pretrained(name)
