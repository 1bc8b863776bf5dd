"""Run outputs: logs flushed with every checkpoint, final and best models in sentence-transformers format."""

from __future__ import annotations

import copy
from pathlib import Path

import pytorch_lightning as pl
import torch

from ctrain.export import save_sentence_transformer


class RunOutputs(pl.Callback):
    """Writes `model_final/` and `model_best/` into the run directory when training ends.

    Loggers are flushed whenever a checkpoint is written, so a run killed after a checkpoint
    has every metric up to that checkpoint on disk and resumes without a gap.
    """

    written = "model_final/, model_best/"  # what on_fit_end adds to the run directory, for the closing summary

    def __init__(self, max_seq_length: int = 128) -> None:
        self.max_seq_length = max_seq_length
        self.run_dir: Path | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # trainer.log_dir is a collective under DDP: read it on every rank, not on rank 0 alone.
        self.run_dir = Path(trainer.log_dir or trainer.default_root_dir)

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        for logger in trainer.loggers:
            logger.save()

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        run_dir = self.run_dir
        similarity = pl_module.hparams.similarity
        save_sentence_transformer(pl_module.encoder, run_dir / "model_final", similarity, self.max_seq_length)
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        if best:
            state = torch.load(best, map_location="cpu", weights_only=False)["state_dict"]
            encoder = copy.deepcopy(pl_module.encoder).cpu()
            encoder.load_state_dict({k.removeprefix("encoder."): v for k, v in state.items() if k.startswith("encoder.")})
            save_sentence_transformer(encoder, run_dir / "model_best", similarity, self.max_seq_length)
