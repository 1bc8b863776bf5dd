"""Benchmark: where the kurita2023 setup's time goes as sentences get longer.

The probe weighs sentences shortest first in batches of 8, so its cost per sentence climbs through
the run. For batches at four quantiles of STS-B dev's token lengths (both columns, the probe's
order), this times, once each, on all-MiniLM-L6-v2 with the setup's settings: IG as the setup runs
it, IG with the completeness check along the sketch's directions, IG with VJP chunks of 4 and of 16
directions, and the native PartitionSHAP. Seconds a batch; the first IG call carries the process's
warm-up. The peer is the setup itself: read the variants against its own column.

    PYTHONPATH=src .venv/bin/python benchmarks/studies/kurita_by_length.py [--threads 2]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ctrain.models.encoder import load_encoder
from ctrain.probes.sentences import sts_b_sentences
from ctrain.probes.weighting import KURITA2023_WEIGHTING as SETUP
from ctrain.probes.weighting import weigh_batch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, where the shared --toy option lives
from _toy import TOY_MODEL, parse_args

VARIANTS = {
    "IG (the setup)": {},
    "IG, completeness directions": {"completeness": "directions"},
    "IG, vjp_batch 4": {"vjp_batch": 4},
    "IG, vjp_batch 16": {"vjp_batch": 16},
}


def seconds(encoder, batch, config, method: str) -> tuple[float, int]:
    """Seconds to weigh the batch by one method alone (``weigh_batch``, theorem off), and its padded length."""
    started = time.perf_counter()
    weighed = weigh_batch(encoder, batch, dataclasses.replace(config, methods=(method,), theorem=False), 0)
    return time.perf_counter() - started, weighed.segmentation.input_ids.shape[1]


TOY = {"model": TOY_MODEL, "threads": 1, "quantiles": [0.5]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="all-MiniLM-L6-v2")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quantiles", type=float, nargs="*", default=[0.2, 0.6, 0.9, 0.99])
    args = parse_args(parser, TOY, argv)
    torch.set_num_threads(args.threads)
    encoder = load_encoder(args.model).eval()
    sentences = sts_b_sentences("dev", "both")
    lengths = [len(ids) for ids in encoder.tokenizer(sentences, truncation=True, max_length=SETUP.max_length)["input_ids"]]
    order = np.argsort(lengths, kind="stable")
    print(f"{args.model}, {args.threads} threads, seconds a batch of {SETUP.batch_size}:")
    print("  L  " + "  ".join(list(VARIANTS) + ["SHAP (native)"]))
    for quantile in args.quantiles:
        start = int(quantile * len(sentences)) // SETUP.batch_size * SETUP.batch_size
        batch = [sentences[i] for i in order[start : start + SETUP.batch_size]]
        timed = [seconds(encoder, batch, dataclasses.replace(SETUP, **changes), "ig") for changes in VARIANTS.values()]
        timed.append(seconds(encoder, batch, SETUP, "shap"))
        print("  ".join([f"{timed[0][1]:3d}"] + [f"{spent:.2f}" for spent, _ in timed]), flush=True)


if __name__ == "__main__":
    main()
