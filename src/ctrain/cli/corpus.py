"""`ctrain corpus`: build the offline English corpus (ctrain.data.corpus) from the command line."""

from __future__ import annotations

from jsonargparse import ArgumentParser

from ctrain.data.corpus import build_corpus
from ctrain.fileio import check_writable_directory


def corpus_main(args: list[str]) -> None:
    """Parse, check that --output can be written (building the corpus takes a while), then build it."""
    parser = ArgumentParser(prog="ctrain corpus", description=__doc__, exit_on_error=False)
    parser.add_function_arguments(build_corpus)
    values = parser.parse_args(args).as_dict()
    check_writable_directory(values["output"], "--output")
    build_corpus(**values)
