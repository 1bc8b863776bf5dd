"""`ctrain sweep FILE`: the command line of the sweep engine, ctrain.sweeps, whose docstring is its help text."""

from __future__ import annotations

import sys

from jsonargparse import ActionConfigFile, ActionYesNo, ArgumentParser

from ctrain import sweeps
from ctrain.sweeps import sweep


def sweep_parser() -> ArgumentParser:
    """`ctrain sweep`'s parser: sweep()'s arguments, FILE positional, --dry_run a flag."""
    parser = ArgumentParser(prog="ctrain sweep", description=sweeps.__doc__)
    parser.add_argument("--config", action=ActionConfigFile, help="YAML with any of the arguments below")
    parser.add_function_arguments(sweep, as_positional=True, skip={"dry_run"})
    parser.add_argument("--dry_run", action=ActionYesNo, default=False, help="print each run's directory and command, run nothing")
    return parser


def _older_dry_run_form(args: list[str]) -> list[str]:
    """`--dry_run true|false` or `--dry_run=true|false` (the forms older docs and scripts use) as the flag
    `--dry_run` / `--no_dry_run`."""
    words = {"true": "--dry_run", "yes": "--dry_run", "false": "--no_dry_run", "no": "--no_dry_run"}
    merged: list[str] = []
    for index, part in enumerate(args):
        if index > 0 and args[index - 1] == "--dry_run" and part.lower() in words:
            merged[-1] = words[part.lower()]
        elif part.startswith("--dry_run=") and part.removeprefix("--dry_run=").lower() in words:
            merged.append(words[part.removeprefix("--dry_run=").lower()])
        else:
            merged.append(part)
    return merged


def sweep_main(args: list[str]) -> None:
    try:
        values = sweep_parser().parse_args(_older_dry_run_form(args)).as_dict()
        values.pop("config", None)
        sweep(**values)
    except RuntimeError as error:
        print(f"ctrain sweep: {error}", file=sys.stderr)
        sys.exit(1)
