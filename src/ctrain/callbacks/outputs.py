"""Run outputs: logs flushed with every checkpoint, validation logged at the probes' step, final and
best models in sentence-transformers format with a model card that says what the run was."""

from __future__ import annotations

import copy
from pathlib import Path

import pytorch_lightning as pl
import torch

from ctrain.data.sources import read_sts_b
from ctrain.keys import STS_DEV, STS_TEST, STS_TEST_BEST
from ctrain.models.export import (
    RunFacts,
    Score,
    save_hf_model,
    save_sentence_transformer,
    write_model_card,
)
from ctrain.probes.sts import StsEvaluator
from ctrain.runtime import global_batch_size


def checkpoint_step(path: str | Path) -> int:
    """The optimizer step a checkpoint was taken at (mmap: without reading its weights into memory)."""
    return int(torch.load(path, map_location="cpu", weights_only=False, mmap=True)["global_step"])


def run_facts(trainer: pl.Trainer, pl_module: pl.LightningModule, run_dir: Path) -> RunFacts:
    """What the run was, read off its trainer, module and data, for the exported models' cards."""
    model, data = pl_module.hparams, trainer.datamodule.hparams
    supervised = " (supervised pairs)" if data.supervised else " (unsupervised: dropout positives)"
    pooler = pl_module.encoder.pooler
    return RunFacts(
        base_model=pl_module.encoder_config.name,
        data=f"{data.train}{supervised}",
        objective=pl_module.objective.name,
        similarity=str(model.similarity),
        pooling=str(pooler.mode) + (" (MLP in training only)" if pooler.mlp_only_train else ""),
        temperature=float(model.temperature),
        global_batch_size=global_batch_size(int(data.batch_size), trainer),
        steps=int(trainer.global_step),
        run_dir=str(run_dir),
    )


class RunOutputs(pl.Callback):
    """Writes `model_final/` and `model_best/` into the run directory when training ends.

    Loggers are flushed whenever a checkpoint is written, so a run killed after a checkpoint
    has every metric up to that checkpoint on disk and resumes without a gap.

    Validation during fit is logged at the global step (the number of optimizer steps the
    measured model has taken), the step the probes use: Lightning's own counter is one behind
    there, which put STS-B dev at steps 99, 199, ... beside probes at 100, 200, ...
    A run also validates at its last step (max_steps) where val_check_interval does not divide it,
    so that the final model's STS-B dev is the final model's.
    At the end, both exported models are scored on STS-B test (logged as `test/stsb_spearman`
    and `test/stsb_spearman_best`) and their README.md cards state the run's settings and scores,
    each with the step of the model it was measured on.
    """

    written = "model_final/, model_best/"  # what on_fit_end adds to the run directory, for the closing summary

    def __init__(self) -> None:
        self.run_dir: Path | None = None
        self._lightning_step: int | None = None
        self.validated_step: int | None = None  # the optimizer step of the last validation during fit

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # trainer.log_dir is a collective under DDP: read it on every rank, not on rank 0 alone.
        self.run_dir = Path(trainer.log_dir or trainer.default_root_dir)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn != "fit" or trainer.sanity_checking:
            return
        # `self.log` in validation writes at Lightning's private logging counter, and no public setting moves it
        # (global_step is read-only); tests/test_step_clock.py pins what the counter means and that it is restored.
        loop = trainer.fit_loop.epoch_loop
        self._lightning_step, loop._batches_that_stepped = loop._batches_that_stepped, trainer.global_step

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Runs before ModelCheckpoint's hook (Lightning calls it last), so checkpoints keep Lightning's count.
        if self._lightning_step is not None:
            trainer.fit_loop.epoch_loop._batches_that_stepped, self._lightning_step = self._lightning_step, None
            self.validated_step = trainer.global_step

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx: int) -> None:
        # Lightning validates after a batch that asks the run to stop (as early stopping does); at max_steps the
        # run stops anyway, so the request only adds the last step's validation where the interval skips it.
        if 0 < trainer.max_steps <= trainer.global_step:
            trainer.should_stop = True

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        for logger in trainer.loggers:
            logger.save()

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        run_dir, similarity = self.run_dir, pl_module.hparams.similarity
        sts_test = pl_module.sts_evaluator(trainer.datamodule.test)
        facts = run_facts(trainer, pl_module, run_dir)
        final_test, _ = sts_test(pl_module.encoder)
        scores = {STS_TEST: final_test}
        save_sentence_transformer(pl_module.encoder, run_dir / "model_final", similarity)
        dev = trainer.callback_metrics.get(STS_DEV)
        final_dev = None if dev is None or self.validated_step is None else Score(float(dev), self.validated_step)
        write_model_card(run_dir / "model_final", facts, "final", final_dev, Score(final_test, trainer.global_step))
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        if best:
            checkpoint = torch.load(best, map_location="cpu", weights_only=False)
            state, best_step = checkpoint["state_dict"], int(checkpoint["global_step"])
            encoder = copy.deepcopy(pl_module.encoder)
            encoder.load_state_dict({k.removeprefix("encoder."): v for k, v in state.items() if k.startswith("encoder.")})
            scores[STS_TEST_BEST], _ = sts_test(encoder)
            save_sentence_transformer(encoder, run_dir / "model_best", similarity)
            best_dev = trainer.checkpoint_callback.best_model_score
            write_model_card(
                run_dir / "model_best", facts, "best",
                None if best_dev is None else Score(float(best_dev), best_step), Score(scores[STS_TEST_BEST], best_step),
            )  # fmt: skip
        for logger in trainer.loggers:
            logger.log_metrics(scores, step=trainer.global_step)


class PretrainOutputs(RunOutputs):
    """Flushes logs with every checkpoint (as RunOutputs) and saves the final model as a Hugging Face directory.

    Args:
        export_dir: where the model goes (default: model_final/ in the run directory); a fixed path
            lets a contrastive config name it as model.encoder.name.
    """

    written = "model_final/ (Hugging Face: model with MLM head + tokenizer)"
    # Like a fit run, it ends by scoring its final encoder (the backbone pooled by model.sentence_pooling) on STS-B
    # test: the control arm's end point, and what `ctrain sweep` reads as "finished".

    def __init__(self, export_dir: str | None = None) -> None:
        super().__init__()
        self.export_dir = export_dir

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        target = Path(self.export_dir) if self.export_dir else self.run_dir / "model_final"
        save_hf_model(pl_module.model, pl_module.tokenizer, target)
        print(f"ctrain pretrain: model saved to {target} (use it as model.encoder.name of ctrain fit)")
        final_test, _ = StsEvaluator(read_sts_b("test"))(pl_module.encoder)
        for logger in trainer.loggers:
            logger.log_metrics({STS_TEST: final_test}, step=trainer.global_step)
