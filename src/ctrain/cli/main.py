"""The `ctrain` console command: dispatches to fit/validate/test, probe, pretrain, corpus, sweep and report.

Each command's module is imported only when it runs, so `ctrain probe` never starts Lightning's CLI
and `ctrain --help` answers at once. Errors in user input end in one line, not a traceback.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import warnings

HELP = """usage: ctrain COMMAND [options]

Contrastive fine-tuning of sentence encoders, with probes of word weighting and geometry.

commands:
  fit        train a model: ctrain fit --config configs/demo.yaml [--config callbacks/probes.yaml]
  validate   STS-B dev Spearman of a model or checkpoint
  test       STS-B test Spearman of a model or checkpoint
  probe      measure any model without training: ctrain probe all-MiniLM-L6-v2 [--setup kurita2023]
  corpus     build the offline English corpus: ctrain corpus --output data/corpus
  pretrain   masked-LM pre-training from scratch (a vanilla start): ctrain pretrain --config configs/pretrain_bert_cpu.yaml
  sweep      run a W&B sweep file locally, resumable: ctrain sweep sweeps/temperature_cpu.yaml [--parallel 2]
  report     figures and one HTML page of a run or a sweep: ctrain report runs/demo/version_0

  ctrain fit --resume RUN_DIR   continue a run from its last checkpoint, in the same directory

`ctrain COMMAND --help` lists a command's options; docs/metrics.md defines every logged key.
"""


def _quiet_libraries() -> None:
    """Keep the terminal for ctrain's own output: no weight-loading reports or per-file progress bars."""
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", message=".*LightningCLI's args parameter is intended.*")
    # Lightning cannot see that ctrain's EpochSampler skips the batches a resumed run already trained on
    # (data/datamodule.py), so it warns that a mid-epoch resume is unreliable; for ctrain's loaders it is exact.
    warnings.filterwarnings("ignore", message=".*dataloader is not resumable.*")


def _interruptible() -> None:
    """Ctrl-C stops ctrain at any stage. A process started with SIGINT ignored (a background job of a shell script,
    some launchers) inherits that, and then one Ctrl-C during start-up was ignored and the run trained to its end."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.default_int_handler)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: errors in user input end in one line, not a traceback."""
    args = list(sys.argv[1:] if argv is None else argv)
    _interruptible()
    _quiet_libraries()
    if args[:1] in ([], ["-h"], ["--help"]):
        print(HELP, end="")
        return
    try:
        if args[:1] == ["probe"]:
            from ctrain.cli.probe import probe_main

            probe_main(args[1:])
        elif args[:1] == ["corpus"]:
            from ctrain.cli.corpus import corpus_main

            corpus_main(args[1:])
        elif args[:1] == ["pretrain"]:
            from ctrain.cli.fit import run_cli
            from ctrain.cli.pretrain import PretrainCLI

            run_cli(["fit", *args[1:]], PretrainCLI)
        elif args[:1] == ["sweep"]:
            from ctrain.cli.sweep import sweep_main

            sweep_main(args[1:])
        elif args[:1] == ["report"]:
            from ctrain.cli.report import report_main

            report_main(args[1:])
        else:
            from ctrain.cli.fit import run_cli

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
