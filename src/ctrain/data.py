"""Sentence and pair sources for training and STS-B evaluation."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Literal

from ctrain import assets

StsSplit = Literal["train", "dev", "test"]


def read_sts_b(split: StsSplit, directory: Path | None = None) -> list[tuple[str, str, float]]:
    """(sentence1, sentence2, score in [0, 5]) rows of an official STS-Benchmark CSV.

    The files are tab-separated with the score in column 5 and the sentences in 6 and 7
    (1-based); some rows carry extra source fields after them, which are ignored.
    """
    if split not in ("train", "dev", "test"):
        raise ValueError(f"unknown STS-B split '{split}': choose train, dev or test")
    path = (directory or assets.sts_b_dir()) / f"sts-{split}.csv"
    rows = []
    with path.open(encoding="utf-8") as handle:
        for line_number, fields in enumerate(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE), 1):
            if len(fields) < 7:
                raise ValueError(f"{path}:{line_number}: expected at least 7 tab-separated fields, got {len(fields)}")
            rows.append((fields[5], fields[6], float(fields[4])))
    return rows
