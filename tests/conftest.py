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


# The longest test files (pytest --durations, on 2 cores), longest first. `make test` runs pytest-xdist a file per
# worker in collection order (--dist loadfile --no-loadscopereorder): started first, a long file cannot be the one a
# worker is still running alone at the end (longest-first scheduling). Files not listed follow in pytest's order.
LONGEST_FIRST = (
    "test_sweep.py",
    "test_pretrain.py",
    "test_partition_shap.py",
    "test_training.py",
    "test_loading.py",
    "test_benchmarks.py",
    "test_sweep_files.py",
    "test_run_record.py",
    "test_bad_input.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: index for index, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: pytest's order within a file and after
