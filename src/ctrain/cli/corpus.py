"""`ctrain corpus`: build the offline English corpus (ctrain.data.corpus) from the command line."""

from __future__ import annotations

from jsonargparse import CLI

from ctrain.data.corpus import build_corpus


def corpus_main(args: list[str]) -> None:
    CLI(build_corpus, args=args)
