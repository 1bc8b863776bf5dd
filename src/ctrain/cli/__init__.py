"""The `ctrain` commands: fit/validate/test (fit.py), probe, pretrain, corpus, sweep and report; main.py dispatches."""

from ctrain.cli.main import main

__all__ = ["main"]
