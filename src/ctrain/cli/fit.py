"""`ctrain fit | validate | test`: one LightningCLI over ContrastiveModule and ContrastiveDataModule;
`ctrain pretrain` is the same CLI over the masked-LM pair (ctrain.training.pretrain, ctrain.data.mlm).
`ctrain probe`, `corpus`, `sweep` and `report` are plain commands of their own (ctrain.cli.main).

Every run writes one directory (the CSV logger's): config.yaml, checkpoints/{last,best}.ckpt,
metrics.csv, model_final/ and model_best/ (sentence-transformers format).
`ctrain fit --resume RUN_DIR` continues a run from its last checkpoint in the same directory.
"""

from __future__ import annotations

import csv
import io
import math
import sys
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
from pytorch_lightning.plugins.io import CheckpointIO, TorchCheckpointIO

from ctrain.callbacks.outputs import RunOutputs, checkpoint_step
from ctrain.callbacks.probes import WordWeightingProbe
from ctrain.callbacks.wandb_run import WandbOptions, WandbProbeFigures, git_revision, offline_sync_command, wandb_logger
from ctrain.data.datamodule import ContrastiveDataModule
from ctrain.fileio import atomic_path, complete_lines, remove_temporaries, write_csv_atomic
from ctrain.keys import STS_DEV, STS_TEST
from ctrain.models.encoder import EncoderConfig
from ctrain.probes.weighting.keys import FIT_KEYS
from ctrain.runtime import global_batch_size
from ctrain.training.module import ContrastiveModule

AFTER_CHECKPOINT_PREFIXES = ("train/", "data/", "test/")  # rows logged at a checkpoint's step, after it was written
MOVED_KEYS = {"data.eval_batch_size": "model.sts_batch_size", "data.eval_max_length": "model.sts_max_length"}  # old: new
REMOVED_KEYS = {"outputs.max_seq_length": 128}  # an option since removed: the value ctrain now always uses



class CtrainCLI(LightningCLI):
    """LightningCLI with ctrain's always-on callbacks, a validation at step 0 and a closing summary.

    Subclasses train another objective by changing the class attributes (see ctrain.cli.pretrain)."""

    model_class: type = ContrastiveModule
    datamodule_class: type = ContrastiveDataModule
    outputs_class: type = RunOutputs
    monitor, monitor_mode, monitor_label = STS_DEV, "max", "STS-B dev Spearman x100"
    default_run_name = "ctrain"
    command = "fit"  # the ctrain command that runs this CLI's fit

    def __init__(self, *args, **kwargs) -> None:
        given = kwargs.get("args")
        self.requested_subcommand = given[0] if isinstance(given, list) and given else None
        super().__init__(*args, **kwargs)

    def subcommands(self) -> dict[str, set[str]]:
        """fit, validate and test (the model has no predict step, so `predict` is not offered); only the one the
        command line names, when it names one: each subcommand's parser takes about 0.2 s to build and a run uses one."""
        offered = {name: keys for name, keys in LightningCLI.subcommands().items() if name in ("fit", "validate", "test")}
        return {self.requested_subcommand: offered[self.requested_subcommand]} if self.requested_subcommand in offered else offered

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

    def _add_subcommands(self, parser: LightningArgumentParser, **kwargs) -> None:
        super()._add_subcommands(parser, **kwargs)
        if self.command != "fit":  # `ctrain pretrain` runs this CLI's fit: its --help says so
            self._subcommand_parsers["fit"].prog = f"ctrain {self.command}"

    def before_instantiate_classes(self) -> None:
        """Settings that cannot work fail here, before a model is built or a file written;
        `--trainer.default_root_dir DIR` puts the run under DIR, as Lightning users expect; and an encoder given by
        its name alone is written out in full, so config.yaml holds `model.encoder.name` however it was given."""
        _check_settings(self.config[self.subcommand], self.subcommand)
        _move_keys(self.config[self.subcommand])
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
        plugins = config.get("plugins") or []
        plugins = list(plugins) if isinstance(plugins, list) else [plugins]
        if not any(isinstance(plugin, CheckpointIO) for plugin in plugins):
            config["plugins"] = [*plugins, RunDirectoryCheckpointIO()]
        trainer = super()._instantiate_trainer(config, [*callbacks, CheckpointPathsOfThisRun()])
        examples_per_step = global_batch_size(self.datamodule.hparams.batch_size, trainer)
        for logger in trainer.loggers:
            if hasattr(logger, "examples_per_step"):
                logger.examples_per_step = examples_per_step
        return trainer

    def before_fit(self) -> None:
        self.datamodule.load_training_examples(self.trainer.world_size)  # bad data fails before any work
        objective = getattr(self.model, "objective", None)
        if objective is not None:
            _check_global_batch(objective, self.datamodule, self.trainer.world_size)
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
            keys = FIT_KEYS["ig", "kl"]  # beta beside R^2: a negative relation weakening is not weighting fading
            print(f"  IG-on-KL R^2 and beta [{probe.config.confidence:.0%} interval] ({keys.r2}, {keys.slope}, docs/metrics.md):")
            for step, metrics in sorted(probe.measured.items()):
                r2, beta = ([metrics.get(k, math.nan) for k in (name, f"{name}_ci_low", f"{name}_ci_high")] for name in (keys.r2, keys.slope))
                print(f"    step {step:>6}: R^2 {r2[0]:.4f} [{r2[1]:.4f}, {r2[2]:.4f}]  beta {beta[0]:+.4f} [{beta[1]:+.4f}, {beta[2]:+.4f}]")
        for logger in self.trainer.loggers:
            if isinstance(logger, WandbLogger) and logger._experiment is not None:
                print(f"  W&B run {logger.experiment.id}: files in {logger.experiment.dir}")
                upload = offline_sync_command(Path(run_dir)) if logger._offline else None
                if upload:
                    print(f"  upload: {upload}")
                logger.experiment.finish()  # a second run in this process starts a new W&B run


class RunDirectoryCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint through a temporary file beside it (ctrain.fileio), not Lightning's temporary file in
    /tmp: a run killed mid-save leaves the partial file in its run directory, where the resume removes it."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        if storage_options is not None or "://" in str(path):  # remote storage: Lightning's own way
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        with atomic_path(path) as temporary:
            torch.save(checkpoint, temporary)


class CheckpointPathsOfThisRun(Callback):
    """A resumed run keeps its one last.ckpt and its best-model state however its directory is spelled.

    ModelCheckpoint stores its directory and file paths as spelled when they were written (an absolute
    `--trainer.default_root_dir`, say); named another way at resume (relative, or the run moved), it drops
    the best score and writes last-v1.ckpt / best-v1.ckpt beside the old files. The stored paths are
    re-based onto this run's checkpoint directory before ModelCheckpoint reads them."""

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        states = checkpoint.get("callbacks", {})
        for callback in trainer.checkpoint_callbacks:
            state = states.get(callback.state_key)
            if not state or not state.get("dirpath") or callback.dirpath is None or state["dirpath"] == callback.dirpath:
                continue
            stored, current = Path(state["dirpath"]), Path(callback.dirpath)
            state["dirpath"] = callback.dirpath
            for key in ("best_model_path", "kth_best_model_path", "last_model_path"):
                if key in state:
                    state[key] = _rebased(state[key], stored, current)
            state["best_k_models"] = {_rebased(path, stored, current): score for path, score in state.get("best_k_models", {}).items()}


def _rebased(path: str, stored: Path, current: Path) -> str:
    """`path` under the directory `stored` as the same name under `current` (other paths, and "", unchanged)."""
    return str(current / Path(path).relative_to(stored)) if path and Path(path).is_relative_to(stored) else path


class RunConfigCallback(SaveConfigCallback):
    """Writes config.yaml, and gives W&B the whole resolved config and the ctrain git revision."""

    def save_config(self, trainer, pl_module, stage: str) -> None:
        resolved = yaml.safe_load(self.parser.dump(self.config, skip_none=False))
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.experiment.config.update({**resolved, "git_revision": git_revision()}, allow_val_change=True)


def _check_settings(config, subcommand: str) -> None:
    """One line for a setting that cannot work, before anything is built: Lightning and torch would report it
    later, after the model is loaded and step 0 validated, without naming the key."""
    for key in ("data.batch_size", "data.eval_batch_size"):
        value = config.get(key)
        if value is not None and value < 1:
            raise ValueError(f"{key} {value}: give at least 1 (examples per process and step)")
    rate = config.get("model.learning_rate")
    if rate is not None and rate < 0:
        raise ValueError(f"model.learning_rate {rate} is negative: give a positive rate, e.g. 3e-5")
    if subcommand == "fit" and 0 in (config.get("trainer.max_steps"), config.get("trainer.max_epochs")):
        raise ValueError(
            "trainer.max_steps / max_epochs 0 trains nothing and writes no checkpoint: give a positive number "
            "(to score a model without training: ctrain validate / ctrain test, or ctrain probe)"
        )


def _move_keys(config) -> None:
    """Old keys keep working, with a one-line deprecation warning, where the config has their new key (`ctrain pretrain`'s
    data.eval_batch_size is its held-out MLM batch, no old key)."""
    for old, new in MOVED_KEYS.items():
        if config.get(old) is not None and new in config:
            print(f"ctrain: {old} is deprecated and will be removed: use {new} (set to {config[old]} for this run)", file=sys.stderr)
            config[new], config[old] = config[old], None


def _check_global_batch(objective, datamodule: ContrastiveDataModule, world_size: int) -> None:
    """An objective whose negatives are the batch's other sentences has no negative in a batch of one: its loss is
    exactly 0 and the model never changes."""
    hard_negatives = bool(datamodule.examples) and len(datamodule.examples[0]) == 3
    needed, size = objective.smallest_global_batch(hard_negatives), datamodule.hparams.batch_size * world_size
    if size < needed:
        raise ValueError(
            f"model.objective {objective.name} draws its negatives from the other sentences of the batch: it needs a "
            f"global batch of at least {needed}, and data.batch_size {datamodule.hparams.batch_size} x {world_size} "
            f"process(es) gives {size}; raise data.batch_size"
        )


def _logger_entries(logger) -> list:
    """The configured loggers as a list (trainer.logger is one logger, a list, a bool or None)."""
    return list(logger) if isinstance(logger, list) else [] if logger in (None, True, False) else [logger]


def _resume_arguments(run_dir: Path) -> list[str]:
    """Arguments that continue `run_dir` from its last checkpoint, writing into the same directory.

    What a killed run left half-written (atomic writes' temporaries) is removed first; the rows it
    logged after the checkpoint are dropped, as the resumed run logs those steps again."""
    config, checkpoint = run_dir / "config.yaml", run_dir / "checkpoints" / "last.ckpt"
    for path in (config, checkpoint):
        if not path.exists():
            raise FileNotFoundError(f"cannot resume: '{path}' does not exist; give the run directory printed by ctrain fit")
    step = _checkpoint_step(checkpoint)
    remove_temporaries(run_dir)
    _drop_metrics_after(run_dir / "metrics.csv", step)
    settings = yaml.safe_load(config.read_text())
    _drop_removed_keys(settings, config)
    trainer = settings.setdefault("trainer", {})
    run_csv = [entry for entry in _logger_entries(trainer.get("logger")) if str(entry.get("class_path", "")).endswith("CSVLogger")]
    if not run_csv:
        raise ValueError(f"cannot resume: '{config}' has no CSV logger, so the run's directory is unknown")
    # Set on the CSV logger itself: `--trainer.logger.init_args...` would land on the last logger.
    run_csv[0].setdefault("init_args", {}).update(save_dir=str(run_dir.parent.parent), name=run_dir.parent.name, version=run_dir.name)
    trainer["default_root_dir"] = None  # the CSV logger above names the directory
    return ["--config", yaml.safe_dump(settings), "--ckpt_path", str(checkpoint)]


def _drop_removed_keys(settings: dict, config: Path) -> None:
    """A run saved by an older ctrain resumes with this one: an option since removed leaves its saved config when it
    holds the value ctrain now always uses (LightningCLI writes every option, defaults included)."""
    for dotted, kept in REMOVED_KEYS.items():
        section, key = dotted.split(".")
        values = settings.get(section) or {}
        if key in values and values.pop(key) != kept:
            raise ValueError(
                f"cannot resume: '{config}' sets {dotted}, an option this ctrain no longer has (it always uses {kept}); "
                "resume with the ctrain version that started the run"
            )


def _checkpoint_step(checkpoint: Path) -> int:
    """The optimizer step a checkpoint was taken at; an unreadable file is one line with the way out."""
    try:
        # mmap: read the step without loading a base model's weights and optimizer state into memory
        return int(torch.load(checkpoint, map_location="cpu", weights_only=False, mmap=True)["global_step"])
    except Exception as error:  # noqa: BLE001 (torch reports a cut or corrupt file as RuntimeError, EOFError, pickle or zip errors)
        best = checkpoint.with_name("best.ckpt")
        instead = f"copy '{best}' over it to resume from the best model's step, or " if best.exists() else ""
        raise ValueError(
            f"cannot resume: '{checkpoint}' is not a readable checkpoint (cut short or corrupt: {type(error).__name__}); "
            f"{instead}start the run again"
        ) from None


def finished_step(run_dir: Path) -> int | None:
    """The step a run finished at (its end-of-fit STS-B test score, logged after both models were exported is in
    metrics.csv), or None for a run that has not finished."""
    metrics_file = run_dir / "metrics.csv"
    if not metrics_file.exists():
        return None
    rows = csv.DictReader(io.StringIO(complete_lines(metrics_file), newline=""))
    return next((int(row["step"]) for row in rows if row.get(STS_TEST)), None)


def _trains_past(step: int, overrides: list[str]) -> bool:
    """Whether the arguments given after `--resume RUN` ask for training beyond `step` (a finished run extended)."""
    for index, part in enumerate(overrides):
        key, _, value = part.partition("=")
        if key in ("--trainer.max_steps", "--trainer.max_epochs"):
            value = value or (overrides[index + 1] if index + 1 < len(overrides) else "")
            if key == "--trainer.max_epochs" or (value.lstrip("-").isdigit() and (int(value) == -1 or int(value) > step)):
                return True
    return False


def _drop_metrics_after(metrics_file: Path, step: int) -> None:
    """Remove rows logged after the checkpoint: the resumed run logs those steps again.

    Lightning logs the batch that makes optimizer step k + 1 under step k, so a checkpoint taken
    after `step` optimizer steps covers the rows logged under steps below `step`, and that step's
    validation and probe rows (measured before the checkpoint was written; the resumed run does
    not measure them again), but not that step's training row or the end-of-fit test scores."""
    if not metrics_file.exists():
        return
    with io.StringIO(complete_lines(metrics_file), newline="") as handle:
        reader = csv.DictReader(handle)
        fields, rows = reader.fieldnames or [], [row for row in reader if _logged_before_checkpoint(row, step)]
    write_csv_atomic(metrics_file, rows, fields)


def _logged_before_checkpoint(row: dict[str, str], step: int) -> bool:
    if int(row["step"]) != step:
        return int(row["step"]) < step
    return not any(value for key, value in row.items() if key.startswith(AFTER_CHECKPOINT_PREFIXES))


def run_cli(args: list[str], cli_class: type[CtrainCLI] = CtrainCLI) -> CtrainCLI | None:
    """Run the CLI on `args`; None when `--resume` names a run that has finished (nothing is run or written)."""
    if "--resume" in args:
        index = args.index("--resume")
        if index + 1 >= len(args):
            raise ValueError("--resume needs the run directory, e.g. --resume runs/demo/version_0")
        run_dir = Path(args[index + 1])
        if (step := finished_step(run_dir)) is not None and not _trains_past(step, args[index + 2 :]):
            print(
                f"ctrain: '{run_dir}' finished at step {step}; nothing to resume (its scores are in metrics.csv; "
                "to train it further, give a larger --trainer.max_steps)"
            )
            return None
        args = args[:index] + _resume_arguments(run_dir) + args[index + 2 :]
    return cli_class(
        cli_class.model_class,
        cli_class.datamodule_class,
        args=args,
        trainer_defaults={"use_distributed_sampler": False, "logger": {"class_path": "ctrain.training.loggers.RunCSVLogger", "init_args": {"save_dir": "runs", "name": cli_class.default_run_name}}},
        save_config_callback=RunConfigCallback,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"exit_on_error": False, "prog": "ctrain"},
    )
