"""`--toy`: a benchmark at toy size (a tiny random encoder, a few sentences or steps).

The test suite runs every benchmark this way end to end (tests/test_benchmarks.py), so that a change in src/ cannot
leave one broken until someone runs it. Toy figures mean nothing. Options given beside `--toy` override its sizes.
"""

from __future__ import annotations

import argparse
import sys

TOY_MODEL = "tiny-bert"


def add_toy_option(parser: argparse.ArgumentParser, toy: dict, argv: list[str] | None = None) -> None:
    """`--toy` on `parser` (a command's or a subcommand's), which makes `toy`'s values its defaults."""
    parser.add_argument("--toy", action="store_true", help="toy size: a tiny random model, a few sentences or steps")
    if "--toy" in (sys.argv[1:] if argv is None else argv):
        parser.set_defaults(**toy)


def parse_args(parser: argparse.ArgumentParser, toy: dict, argv: list[str] | None = None) -> argparse.Namespace:
    """The parsed options, with `toy`'s values as the defaults when `--toy` is given."""
    add_toy_option(parser, toy, argv)
    return parser.parse_args(argv)
