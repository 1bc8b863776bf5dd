"""`ctrain fit | validate | test | probe | pretrain | corpus`: one LightningCLI over ContrastiveModule and
ContrastiveDataModule; `ctrain pretrain` is the same CLI over the masked-LM pair (ctrain.training.pretrain).

Every run writes one directory (the CSV logger's): config.yaml, checkpoints/{last,best}.ckpt,
metrics.csv, model_final/ and model_best/ (sentence-transformers format).
`ctrain fit --resume RUN_DIR` continues a run from its last checkpoint in the same directory.
"""

from __future__ import annotations

import csv
import math
from dataclasses import asdict
from pathlib import Path

import torch
import yaml
from jsonargparse import Namespace
from pytorch_lightning.callbacks import Callback, ModelCheckpoint
from pytorch_lightning.cli import (
    LightningArgumentParser,
    LightningCLI,
    SaveConfigCallback,
)
from pytorch_lightning.loggers import CSVLogger, WandbLogger

from ctrain.callbacks.outputs import RunOutputs, WandbProbeFigures, checkpoint_step
from ctrain.callbacks.probes import WordWeightingProbe
from ctrain.data.datamodule import ContrastiveDataModule
from ctrain.keys import IG_KL_R2, STS_DEV
from ctrain.models.encoder import EncoderConfig
from ctrain.runtime import global_batch_size
from ctrain.training.loggers import (
    WandbOptions,
    git_revision,
    offline_sync_command,
    wandb_logger,
    write_csv_atomic,
)
from ctrain.training.module import ContrastiveModule

AFTER_CHECKPOINT_PREFIXES = ("train/", "data/", "test/")  # rows logged at a checkpoint's step, after it was written



class CtrainCLI(LightningCLI):
    """LightningCLI with ctrain's always-on callbacks, a validation at step 0 and a closing summary.

    Subclasses train another objective by changing the class attributes (see ctrain.training.pretrain)."""

    model_class: type = ContrastiveModule
    datamodule_class: type = ContrastiveDataModule
    outputs_class: type = RunOutputs
    monitor, monitor_mode, monitor_label = STS_DEV, "max", "STS-B dev Spearman x100"
    default_run_name = "ctrain"

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        """fit, validate and test: the model has no predict step, so `predict` is not offered."""
        return {name: keys for name, keys in LightningCLI.subcommands().items() if name in ("fit", "validate", "test")}

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": self.monitor,
                "checkpoint.mode": self.monitor_mode,
                "checkpoint.filename": "best",
                "checkpoint.save_last": True,
                "checkpoint.auto_insert_metric_name": False,
            }
        )
        parser.add_lightning_class_args(self.outputs_class, "outputs")
        parser.add_class_arguments(WandbOptions, "wandb")

    def before_instantiate_classes(self) -> None:
        """`--trainer.default_root_dir DIR` puts the run under DIR, as Lightning users expect; an encoder given by
        its name alone is written out in full, so config.yaml holds `model.encoder.name` however it was given."""
        model = self.config[self.subcommand].model
        if isinstance(model.get("encoder"), str):
            model.encoder = Namespace(**asdict(EncoderConfig(name=model.encoder)))
        trainer = self.config[self.subcommand].trainer
        if trainer.default_root_dir is not None:
            for logger in _logger_entries(trainer.logger):
                if "save_dir" in logger.init_args:
                    logger.init_args.save_dir = trainer.default_root_dir

    def _instantiate_trainer(self, config: dict, callbacks: list[Callback]):
        """Adds the W&B logger (files inside the run directory, the run's path as its name) when
        `wandb.mode` is not off, and gives every logger the examples seen per optimizer step."""
        options = self.config_init[self.subcommand]["wandb"]
        loggers = _logger_entries(config.get("logger"))
        if options.mode != "off":
            run_csv = next((logger for logger in loggers if isinstance(logger, CSVLogger)), None)
            if run_csv is None:
                raise ValueError("W&B needs the run's CSV logger for its directory; keep trainer.logger's RunCSVLogger")
            run_dir = Path(run_csv.log_dir)
            loggers.append(wandb_logger(options, run_dir, str(run_dir.relative_to(run_csv.save_dir))))
            config["logger"] = loggers
            callbacks = [*callbacks, WandbProbeFigures()]
        trainer = super()._instantiate_trainer(config, callbacks)
        examples_per_step = global_batch_size(self.datamodule.hparams.batch_size, trainer)
        for logger in trainer.loggers:
            if hasattr(logger, "examples_per_step"):
                logger.examples_per_step = examples_per_step
        return trainer

    def before_fit(self) -> None:
        self.datamodule.load_training_examples(self.trainer.world_size)  # bad data fails before any work
        self.monitored_at_start = None
        if self.config_init[self.subcommand].get("ckpt_path") is None:
            results = self.trainer.validate(self.model, datamodule=self.datamodule, verbose=False)
            self.monitored_at_start = results[0].get(self.monitor) if results else None  # none with limit_val_batches=0

    def after_fit(self) -> None:
        run_dir = self.trainer.log_dir  # a collective under DDP: every rank reads it
        if self.trainer.state.status != "finished" or not self.trainer.is_global_zero:
            return
        end = self.trainer.callback_metrics.get(self.monitor)
        end_step = next((c.validated_step for c in self.trainer.callbacks if isinstance(c, RunOutputs)), None)
        best, best_path = self.trainer.checkpoint_callback.best_model_score, self.trainer.checkpoint_callback.best_model_path
        print(f"\nctrain: run directory {run_dir}")
        print(f"  config.yaml, metrics.csv, checkpoints/{{last,best}}.ckpt, {self.outputs_class.written}")
        label = self.monitor_label
        if self.monitored_at_start is not None:
            print(f"  {label} at start: {self.monitored_at_start:.2f} (step 0)")
        if end is not None and end_step is not None:
            print(f"  {label} at end:   {float(end):.2f} (step {end_step})")
        if best is not None and best_path:
            print(f"  {label} best:     {float(best):.2f} (step {checkpoint_step(best_path)})")
        for probe in (c for c in self.trainer.callbacks if isinstance(c, WordWeightingProbe) and c.measured):
            print(f"  IG-on-KL R^2 [{probe.config.confidence:.0%} interval] ({IG_KL_R2}, docs/metrics.md):")
            for step, metrics in sorted(probe.measured.items()):
                low, high = metrics.get(f"{IG_KL_R2}_ci_low", math.nan), metrics.get(f"{IG_KL_R2}_ci_high", math.nan)
                print(f"    step {step:>6}: {metrics.get(IG_KL_R2, math.nan):.4f} [{low:.4f}, {high:.4f}]")
        for logger in self.trainer.loggers:
            if isinstance(logger, WandbLogger) and logger._experiment is not None:
                print(f"  W&B run {logger.experiment.id}: files in {logger.experiment.dir}")
                upload = offline_sync_command(Path(run_dir)) if logger._offline else None
                if upload:
                    print(f"  upload: {upload}")
                logger.experiment.finish()  # a second run in this process starts a new W&B run


class RunConfigCallback(SaveConfigCallback):
    """Writes config.yaml, and gives W&B the whole resolved config and the ctrain git revision."""

    def save_config(self, trainer, pl_module, stage: str) -> None:
        resolved = yaml.safe_load(self.parser.dump(self.config, skip_none=False))
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.experiment.config.update({**resolved, "git_revision": git_revision()}, allow_val_change=True)


def _logger_entries(logger) -> list:
    """The configured loggers as a list (trainer.logger is one logger, a list, a bool or None)."""
    return list(logger) if isinstance(logger, list) else [] if logger in (None, True, False) else [logger]


def _resume_arguments(run_dir: Path) -> list[str]:
    """Arguments that continue `run_dir` from its last checkpoint, writing into the same directory."""
    config, checkpoint = run_dir / "config.yaml", run_dir / "checkpoints" / "last.ckpt"
    for path in (config, checkpoint):
        if not path.exists():
            raise FileNotFoundError(f"cannot resume: '{path}' does not exist; give the run directory printed by ctrain fit")
    # mmap: read the step without loading a base model's weights and optimizer state into memory
    step = torch.load(checkpoint, map_location="cpu", weights_only=False, mmap=True)["global_step"]
    _drop_metrics_after(run_dir / "metrics.csv", step)
    settings = yaml.safe_load(config.read_text())
    trainer = settings.setdefault("trainer", {})
    run_csv = [entry for entry in _logger_entries(trainer.get("logger")) if str(entry.get("class_path", "")).endswith("CSVLogger")]
    if not run_csv:
        raise ValueError(f"cannot resume: '{config}' has no CSV logger, so the run's directory is unknown")
    # Set on the CSV logger itself: `--trainer.logger.init_args...` would land on the last logger.
    run_csv[0].setdefault("init_args", {}).update(save_dir=str(run_dir.parent.parent), name=run_dir.parent.name, version=run_dir.name)
    trainer["default_root_dir"] = None  # the CSV logger above names the directory
    return ["--config", yaml.safe_dump(settings), "--ckpt_path", str(checkpoint)]


def _drop_metrics_after(metrics_file: Path, step: int) -> None:
    """Remove rows logged after the checkpoint: the resumed run logs those steps again.

    Lightning logs the batch that makes optimizer step k + 1 under step k, so a checkpoint taken
    after `step` optimizer steps covers the rows logged under steps below `step`, and that step's
    validation and probe rows (measured before the checkpoint was written; the resumed run does
    not measure them again), but not that step's training row or the end-of-fit test scores."""
    if not metrics_file.exists():
        return
    with metrics_file.open(newline="") as handle:
        reader = csv.DictReader(handle)
        fields, rows = reader.fieldnames or [], [row for row in reader if _logged_before_checkpoint(row, step)]
    write_csv_atomic(str(metrics_file), fields, rows)


def _logged_before_checkpoint(row: dict[str, str], step: int) -> bool:
    if int(row["step"]) != step:
        return int(row["step"]) < step
    return not any(value for key, value in row.items() if key.startswith(AFTER_CHECKPOINT_PREFIXES))


def run_cli(args: list[str], cli_class: type[CtrainCLI] = CtrainCLI) -> CtrainCLI:
    if "--resume" in args:
        index = args.index("--resume")
        if index + 1 >= len(args):
            raise ValueError("--resume needs the run directory, e.g. --resume runs/demo/version_0")
        args = args[:index] + _resume_arguments(Path(args[index + 1])) + args[index + 2 :]
    return cli_class(
        cli_class.model_class,
        cli_class.datamodule_class,
        args=args,
        trainer_defaults={"use_distributed_sampler": False, "logger": {"class_path": "ctrain.training.loggers.RunCSVLogger", "init_args": {"save_dir": "runs", "name": cli_class.default_run_name}}},
        save_config_callback=RunConfigCallback,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"exit_on_error": False, "prog": "ctrain"},
    )
