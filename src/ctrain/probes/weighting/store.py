"""The resumable store of a long probe's weighed batches, and the progress each batch reports."""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ctrain.fileio import atomic_path, atomic_write_text
from ctrain.models.encoder import SentenceEncoder
from ctrain.probes.weighting.config import WeightingConfig

FIT_ONLY_FIELDS = frozenset({"min_count", "include_self", "dkl_repeats", "points", "bootstrap_resamples", "confidence"})
"""Settings the fits read and the weighing does not: a probe rerun with another of them reuses the kept batches."""


@dataclass(frozen=True)
class BatchProgress:
    """What the weighting probe tells its progress callback after each batch.

    Batches go in order of token length, so later ones cost more: ``lengths`` (every batch's padded
    length, in the order they are weighed) lets a callback project the time left from the cost so far.
    """

    done: int  # sentences weighed (or reused) so far
    total: int
    batch: int  # index of the batch just finished
    lengths: tuple[int, ...]
    reused: bool  # kept on disk by an interrupted run: no model time was spent on it


class BatchStore:
    """Each weighed batch of a long probe, kept on disk so that an interrupted probe resumes where it stopped.

    A batch is one file, written atomically. ``key.json`` fingerprints what the batches depend on (the
    sentences, the config but its ``FIT_ONLY_FIELDS``, the encoder's pooling, normalisation and PAD and MASK tokens,
    the model's weights, byte for byte: a float sum would change
    with the number of threads and clear the batches of the same probe resumed with another); a directory left by a
    probe that weighed differently is cleared.
    """

    def __init__(self, directory: Path, encoder: SentenceEncoder, sentences: list[str], config: WeightingConfig) -> None:
        self.directory = Path(directory)
        weighing = {name: value for name, value in asdict(config).items() if name not in FIT_ONLY_FIELDS}
        tokenizer = encoder.tokenizer
        # What the encoder computes beyond its weights: the pooling, the L2 normalisation (no parameter of its own),
        # and the tokens IG's baseline and SHAP's absent value are made of.
        function = [encoder.pooler.mode, encoder.pooler.mlp_only_train, encoder.normalize, tokenizer.pad_token, tokenizer.mask_token]
        digest = hashlib.sha256(json.dumps([sentences, weighing, function], sort_keys=True, default=str).encode())
        with torch.no_grad():
            for name, tensor in encoder.state_dict().items():
                digest.update(name.encode())
                digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        key = digest.hexdigest()
        key_file = self.directory / "key.json"
        if key_file.exists() and json.loads(key_file.read_text()).get("key") != key:
            shutil.rmtree(self.directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        atomic_write_text(key_file, json.dumps({"key": key}))

    def _file(self, start: int) -> Path:
        return self.directory / f"batch_{start:07d}.pt"

    def load(self, start: int) -> dict | None:
        return torch.load(self._file(start), weights_only=True) if self._file(start).exists() else None

    def save(self, start: int, batch: dict) -> None:
        with atomic_path(self._file(start)) as temporary:
            torch.save(batch, temporary)
