"""Sentence and pair sources for training and STS-B evaluation."""

from __future__ import annotations

import csv
import re
import unicodedata
from pathlib import Path
from typing import Literal

from ctrain import assets
from ctrain.runtime import check_choice

StsSplit = Literal["train", "dev", "test"]

# Class ids of SNLI, MultiNLI and sentence-transformers/all-nli: the index in this tuple.
NLI_LABELS = ("entailment", "neutral", "contradiction")
# Accepted spellings of the labels: names or class ids. SNLI's pairs whose annotators did not agree
# (-1 on the hub, "-" in the original files) map to None and are skipped.
_NLI_LABEL_IDS = {**{name: i for i, name in enumerate(NLI_LABELS)}, **{str(i): i for i in range(3)}, "-1": None, "-": None}


def read_sts_b(split: StsSplit, directory: Path | None = None) -> list[tuple[str, str, float]]:
    """(sentence1, sentence2, score in [0, 5]) rows of an official STS-Benchmark CSV.

    The files are tab-separated with the score in column 5 and the sentences in 6 and 7
    (1-based); some rows carry extra source fields after them, which are ignored.
    """
    check_choice(split, StsSplit, "STS-B split")
    path = (directory or assets.sts_b_dir()) / f"sts-{split}.csv"
    rows = []
    with path.open(encoding="utf-8") as handle:
        for line_number, fields in enumerate(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE), 1):
            if len(fields) < 7:
                raise ValueError(f"{path}:{line_number}: expected at least 7 tab-separated fields, got {len(fields)}")
            rows.append((fields[5], fields[6], float(fields[4])))
    return rows


def normalise(sentence: str) -> str:
    """Case-, accent-width- and punctuation-blind form: two sentences that differ only there are the same."""
    return " ".join(re.findall(r"\w+", unicodedata.normalize("NFKC", sentence).casefold()))


def held_out_sentences() -> set[str]:
    """Normalised STS-B dev and test sentences: what no training sentence may be, so that STS-B dev picks
    the checkpoint and STS-B test scores it on sentences the model never trained on."""
    return {normalise(sentence) for split in ("dev", "test") for row in read_sts_b(split) for sentence in row[:2]}


def _check_text_file(path: Path) -> None:
    """Fail early, in one line, on a missing, empty or non-UTF-8 data file."""
    if not path.exists():
        raise FileNotFoundError(f"data file '{path}' does not exist: fix the path in data.train")
    if path.stat().st_size == 0:
        raise ValueError(f"data file '{path}' is empty: give a file with one example per line")
    with path.open("rb") as handle:
        for line_number, line in enumerate(handle, 1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as error:
                raise ValueError(
                    f"data file '{path}' line {line_number} is not valid UTF-8 ({error.reason} at byte "
                    f"{error.start}): re-encode the file as UTF-8"
                ) from None


def _read_table(source: str, split: str):
    """A .csv / .tsv / .jsonl / .json file or `hub:<dataset>[:<config>]` split as a `datasets.Dataset`."""
    import datasets

    prefix, dataset = assets.split_prefix(source)
    if prefix == assets.HUB:
        name, _, config = dataset.partition(":")
        return datasets.load_dataset(name, config or None, split=split)
    path = Path(source).expanduser()
    _check_text_file(path)
    suffix = path.suffix.lower()
    builders = {".csv": ("csv", {}), ".tsv": ("csv", {"delimiter": "\t"}), ".jsonl": ("json", {}), ".json": ("json", {})}
    if suffix not in builders:
        raise ValueError(f"unsupported data file type '{suffix}' for '{path}': use .csv, .tsv or .jsonl (or .txt for single sentences)")
    builder, options = builders[suffix]
    return datasets.load_dataset(builder, data_files=str(path), split="train", **options)


def _columns(table, source: str, columns: list[str], key: str) -> list[list]:
    missing = [column for column in columns if column not in table.column_names]
    if missing:
        raise ValueError(f"columns {missing} not in '{source}' (it has {table.column_names}): set {key} to the right columns")
    return [table[column] for column in columns]


def _texts(columns: list[list]) -> list[tuple[str, ...]]:
    return [tuple("" if text is None else str(text) for text in row) for row in zip(*columns)]


def load_examples(source: str, columns: list[str] | None, split: str = "train") -> list[tuple[str, ...]]:
    """Training examples as tuples of texts: (sentence,), (anchor, positive) or (anchor, positive, negative).

    `source` is a .txt file (one sentence a line), a .csv / .tsv / .jsonl / .json file whose
    `columns` hold the texts, or `hub:<dataset>[:<config>]` for a Hugging Face dataset.
    """
    path = Path(source).expanduser()
    if assets.split_prefix(source)[0] != assets.HUB and path.suffix.lower() == ".txt":
        _check_text_file(path)
        lines = path.read_text(encoding="utf-8").splitlines()
        return [(line.strip(),) for line in lines if line.strip()]
    table = _read_table(source, split)
    return _texts(_columns(table, source, columns or table.column_names[:1], "data.columns"))


def load_nli_pairs(
    source: str, columns: list[str], label_column: str, split: str = "train"
) -> tuple[list[tuple[str, str]], list[int]]:
    """(premise, hypothesis) pairs and their NLI class ids (see NLI_LABELS) from a csv/jsonl file or the hub.

    Pairs without a gold label (SNLI's -1 / "-") are skipped; any other unknown label is an error.
    """
    if len(columns) != 2:
        raise ValueError(f"data.label_column needs data.columns to name the two sentence columns (e.g. [premise, hypothesis]), got {columns}")
    table = _read_table(source, split)
    first, second, labels = _columns(table, source, [*columns, label_column], "data.columns / data.label_column")
    pairs, ids = [], []
    for row, (pair, label) in enumerate(zip(_texts([first, second]), labels), 1):
        key = str(label).strip().lower()
        if key not in _NLI_LABEL_IDS:
            raise ValueError(
                f"'{source}' row {row} has label '{label}' in column '{label_column}': use entailment / neutral / "
                "contradiction or 0 / 1 / 2 (fix or remove the row)"
            )
        label_id = _NLI_LABEL_IDS[key]
        if label_id is not None:
            pairs.append(pair)
            ids.append(label_id)
    return pairs, ids


def sts_b_examples(supervised: bool, min_positive_score: float = 4.0, keep_eval_overlap: bool = False) -> list[tuple[str, ...]]:
    """Offline default training data from STS-B train: unique sentences, or pairs scored >= a threshold.

    STS-B train repeats some dev and test sentences (after `normalise`): they are left out (a pair if
    either of its sentences is one) unless `keep_eval_overlap`.
    """
    rows = read_sts_b("train")
    if supervised:
        examples = [(first, second) for first, second, score in rows if score >= min_positive_score]
    else:
        examples = [(sentence,) for sentence in dict.fromkeys(s for row in rows for s in row[:2])]
    if keep_eval_overlap:
        return examples
    held_out = held_out_sentences()
    return [example for example in examples if not any(normalise(text) in held_out for text in example)]


def sts_b_hub(split: StsSplit) -> list[tuple[str, str, float]]:
    """STS-B from the Hugging Face hub (the online source of the evaluation pairs)."""
    import datasets

    table = datasets.load_dataset("sentence-transformers/stsb", split={"dev": "validation"}.get(split, split))
    return list(zip(table["sentence1"], table["sentence2"], map(float, table["score"])))
