"""Shared fixtures: tiny encoders (random init, real tokenizers) and a quiet, single-threaded torch."""

import os

import pytest
import torch

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)  # the tests' tensors are tiny: threads only add contention on 2 cores


@pytest.fixture(scope="session")
def tiny_bert():
    from ctrain.models.encoder import load_encoder

    return load_encoder("tiny-bert")
