"""`ctrain fit | validate | test | probe | pretrain | corpus`: one LightningCLI over ContrastiveModule and
ContrastiveDataModule; `ctrain pretrain` is the same CLI over the masked-LM pair (ctrain.pretrain).

Every run writes one directory (the CSV logger's): config.yaml, checkpoints/{last,best}.ckpt,
metrics.csv, model_final/ and model_best/ (sentence-transformers format).
`ctrain fit --resume RUN_DIR` continues a run from its last checkpoint in the same directory.
"""

from __future__ import annotations

import argparse
import csv
import sys
import warnings
from pathlib import Path

import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI

from ctrain.callbacks.outputs import RunOutputs
from ctrain.datamodule import ContrastiveDataModule
from ctrain.loggers import write_csv_atomic
from ctrain.module import ContrastiveModule

STS_METRIC = "val/stsb_spearman"

HELP = """usage: ctrain COMMAND [options]

Contrastive fine-tuning of sentence encoders, with probes of word weighting and geometry.

commands:
  fit        train a model: ctrain fit --config configs/demo.yaml [--config callbacks/probes.yaml]
  validate   STS-B dev Spearman of a model or checkpoint
  test       STS-B test Spearman of a model or checkpoint
  probe      measure any model without training: ctrain probe all-MiniLM-L6-v2 [--setup kurita2023]
  corpus     build the offline English corpus: ctrain corpus --output data/corpus
  pretrain   masked-LM pre-training from scratch (a vanilla start): ctrain pretrain --config configs/pretrain_bert_cpu.yaml

  ctrain fit --resume RUN_DIR   continue a run from its last checkpoint, in the same directory

`ctrain COMMAND --help` lists a command's options; docs/metrics.md defines every logged key.
"""


class CtrainCLI(LightningCLI):
    """LightningCLI with ctrain's always-on callbacks, a validation at step 0 and a closing summary.

    Subclasses train another objective by changing the class attributes (see ctrain.pretrain)."""

    model_class: type = ContrastiveModule
    datamodule_class: type = ContrastiveDataModule
    outputs_class: type = RunOutputs
    monitor, monitor_mode, monitor_label = STS_METRIC, "max", "STS-B dev Spearman x100"
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
        best = self.trainer.checkpoint_callback.best_model_score
        print(f"\nctrain: run directory {run_dir}")
        print(f"  config.yaml, metrics.csv, checkpoints/{{last,best}}.ckpt, {self.outputs_class.written}")
        label = self.monitor_label
        if self.monitored_at_start is not None:
            print(f"  {label} at start: {self.monitored_at_start:.2f}")
        if end is not None:
            print(f"  {label} at end:   {float(end):.2f}")
        if best is not None:
            print(f"  {label} best:     {float(best):.2f}")


def _resume_arguments(run_dir: Path) -> list[str]:
    """Arguments that continue `run_dir` from its last checkpoint, writing into the same directory."""
    config, checkpoint = run_dir / "config.yaml", run_dir / "checkpoints" / "last.ckpt"
    for path in (config, checkpoint):
        if not path.exists():
            raise FileNotFoundError(f"cannot resume: '{path}' does not exist; give the run directory printed by ctrain fit")
    # mmap: read the step without loading a base model's weights and optimizer state into memory
    step = torch.load(checkpoint, map_location="cpu", weights_only=False, mmap=True)["global_step"]
    _drop_metrics_after(run_dir / "metrics.csv", step)
    return [
        "--config", str(config),
        "--ckpt_path", str(checkpoint),
        "--trainer.logger.init_args.save_dir", str(run_dir.parent.parent),
        "--trainer.logger.init_args.name", run_dir.parent.name,
        "--trainer.logger.init_args.version", run_dir.name,
    ]  # fmt: skip


def _drop_metrics_after(metrics_file: Path, step: int) -> None:
    """Remove rows logged after the checkpoint: the resumed run logs those steps again.

    Lightning logs the batch that makes optimizer step k + 1 under step k, so a checkpoint taken
    after `step` optimizer steps covers the rows logged under steps below `step`."""
    if not metrics_file.exists():
        return
    with metrics_file.open(newline="") as handle:
        reader = csv.DictReader(handle)
        fields, rows = reader.fieldnames or [], [row for row in reader if int(row["step"]) < step]
    write_csv_atomic(str(metrics_file), fields, rows)


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
        trainer_defaults={"use_distributed_sampler": False, "logger": {"class_path": "ctrain.loggers.RunCSVLogger", "init_args": {"save_dir": "runs", "name": cli_class.default_run_name}}},
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"exit_on_error": False, "prog": "ctrain"},
    )


def _quiet_libraries() -> None:
    """Keep the terminal for ctrain's own output: no weight-loading reports or per-file progress bars."""
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", message=".*LightningCLI's args parameter is intended.*")


def main(argv: list[str] | None = None) -> None:
    """Console entry point: errors in user input end in one line, not a traceback."""
    args = list(sys.argv[1:] if argv is None else argv)
    _quiet_libraries()
    if args[:1] in ([], ["-h"], ["--help"]):
        print(HELP, end="")
        return
    try:
        if args[:1] == ["probe"]:
            from ctrain.probe_cli import probe_main

            probe_main(args[1:])
        elif args[:1] == ["corpus"]:
            from ctrain.corpus import corpus_main

            corpus_main(args[1:])
        elif args[:1] == ["pretrain"]:
            from ctrain.pretrain import PretrainCLI

            run_cli(["fit", *args[1:]], PretrainCLI)
        else:
            run_cli(args)
    except (argparse.ArgumentError, ValueError, FileNotFoundError, OSError, FloatingPointError) as error:
        hint = ""
        if isinstance(error, argparse.ArgumentError):
            command = args[0] if args and not args[0].startswith("-") else "fit"
            hint = " (ctrain --help lists the commands)" if "invalid choice" in str(error) else f" (ctrain {command} --help lists the keys)"
        print(f"ctrain: error: {' '.join(str(error).split())}{hint}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
