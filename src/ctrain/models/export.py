"""Save a SentenceEncoder in sentence-transformers format, atomically.

`SentenceTransformer(path)` then returns the same embeddings as `SentenceEncoder` at
inference: same pooling, the SimCSE MLP when it is used at inference (as a Tanh `Dense`),
the Dense layers the model was loaded with, the model's own normalisation, and the training
similarity as `similarity_fn_name`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
from transformers import PreTrainedTokenizerBase

from ctrain.fileio import atomic_directory, atomic_write_text
from ctrain.models.encoder import SentenceEncoder
from ctrain.models.pooling import ST_POOLING_MODES
from ctrain.models.similarity import SIMILARITIES, Similarity
from ctrain.models.st_modules import Dense, Normalize, Pooling, Transformer


def save_sentence_transformer(
    encoder: SentenceEncoder, path: str | Path, similarity: Similarity = "cos", max_seq_length: int = 128
) -> Path:
    """Write `encoder` to `path` (replacing it only once the new copy is complete)."""
    from sentence_transformers import SentenceTransformer

    with atomic_directory(path) as staged:
        source = staged.parent / "backbone"  # the staging's own scratch space, beside the target
        backbone = copy.deepcopy(encoder.backbone).float().cpu()
        backbone.save_pretrained(source)
        encoder.tokenizer.save_pretrained(source)
        modules: list[torch.nn.Module] = [Transformer(str(source), max_seq_length=max_seq_length)]
        pooler = encoder.pooler
        modules.append(Pooling(encoder.hidden_size, pooling_mode=ST_POOLING_MODES[pooler.mode]))
        if pooler.mlp is not None and not pooler.mlp_only_train:
            linear = pooler.mlp[0]
            modules.append(
                Dense(
                    encoder.hidden_size,
                    encoder.hidden_size,
                    activation_function=torch.nn.Tanh(),
                    init_weight=linear.weight.detach().float().cpu().clone(),
                    init_bias=linear.bias.detach().float().cpu().clone(),
                )
            )
        modules.extend(copy.deepcopy(layer).float().cpu() for layer in encoder.dense)
        if encoder.normalize:
            modules.append(Normalize())
        model = SentenceTransformer(modules=modules, device="cpu", similarity_fn_name=SIMILARITIES[similarity].st_name)
        model.save(str(staged))
    return Path(path)


def save_hf_model(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, path: str | Path) -> Path:
    """`save_pretrained` of model and tokenizer into `path` (a Hugging Face directory), replacing it only once complete."""
    with atomic_directory(path) as staged:
        model.save_pretrained(staged)
        tokenizer.save_pretrained(staged)
    return Path(path)


@dataclass(frozen=True)
class RunFacts:
    """What a run was, for its exported models' cards."""

    base_model: str
    data: str
    objective: str
    similarity: str
    pooling: str
    temperature: float
    global_batch_size: int
    steps: int
    run_dir: str


class Score(NamedTuple):
    """A score and the optimizer step of the model it was measured on: a run's last validation can be older than its model."""

    value: float
    step: int


def _score(score: Score | None) -> str:
    return "not measured" if score is None else f"{score.value:.2f} (model at step {score.step})"


def write_model_card(path: str | Path, facts: RunFacts, which: str, sts_dev: Score | None, sts_test: Score | None) -> Path:
    """Replace sentence-transformers' placeholder README.md in `path` with the run's settings and scores."""
    rows = [
        ("Base model", facts.base_model),
        ("Training data", facts.data),
        ("Objective", facts.objective),
        ("Similarity", facts.similarity),
        ("Pooling", facts.pooling),
        ("Temperature", f"{facts.temperature:g}"),
        ("Global batch size", str(facts.global_batch_size)),
        ("Optimizer steps", str(facts.steps)),
        ("STS-B dev Spearman x100", _score(sts_dev)),
        ("STS-B test Spearman x100", _score(sts_test)),
    ]
    table = "\n".join(f"| {name} | {value} |" for name, value in rows)
    text = (
        "---\nlibrary_name: sentence-transformers\npipeline_tag: sentence-similarity\ntags:\n- sentence-transformers\n"
        f"- ctrain\n- contrastive\nbase_model: {facts.base_model}\n---\n\n"
        f"# {Path(facts.run_dir).name}: {which} model of a ctrain run\n\n"
        f"Contrastive fine-tuning (SimCSE-style) of `{facts.base_model}` with ctrain; run directory `{facts.run_dir}`.\n"
        f"This is the {'model at the end of training' if which == 'final' else 'checkpoint with the best STS-B dev score'}.\n\n"
        f"| Setting | Value |\n|---|---|\n{table}\n\n"
        "```python\nfrom sentence_transformers import SentenceTransformer\n\n"
        f'model = SentenceTransformer("{Path(path).resolve()}")\nembeddings = model.encode(["A sentence.", "Another one."])\n```\n'
    )
    return atomic_write_text(Path(path) / "README.md", text)
