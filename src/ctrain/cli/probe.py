"""`ctrain probe MODEL`: the word-weighting and geometry measurements of any model, without training.

MODEL is a hub id, a local directory, a ctrain run directory (its model_best/, else
model_final/), an offline short name (all-MiniLM-L6-v2, all-mpnet-base-v2) or tiny-bert.
Results go to `--out` as JSON plus figures, and the headline numbers to the terminal.
`--setup NAME` starts from a paper's measurement (`SETUPS`); any flag given after it wins.
"""

from __future__ import annotations

import argparse

from jsonargparse import ActionConfigFile, ArgumentParser

from ctrain.reporting.model_probe import SETUPS, probe


def probe_parser() -> ArgumentParser:
    """`ctrain probe`'s parser: probe()'s arguments, MODEL positional, --config/--print_config for YAML."""
    parser = ArgumentParser(prog="ctrain probe", description=__doc__, exit_on_error=False)
    parser.add_argument("--config", action=ActionConfigFile, help="YAML with any of the arguments below")
    parser.add_function_arguments(probe, as_positional=True)
    return parser


def probe_main(args: list[str]) -> None:
    """Parse `ctrain probe` arguments with the chosen setup's values as defaults, then probe."""
    chosen = argparse.ArgumentParser(add_help=False)
    chosen.add_argument("--setup")
    setup = chosen.parse_known_args(args)[0].setup
    parser = probe_parser()
    if setup in SETUPS:  # an unknown name is reported by the full parser
        parser.set_defaults(SETUPS[setup])
    values = parser.instantiate_classes(parser.parse_args(args)).as_dict()
    values.pop("config", None)
    probe(**values)
