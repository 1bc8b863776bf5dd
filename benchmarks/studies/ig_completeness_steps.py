"""IG's completeness error against the number of Gauss-Legendre steps, on any encoder.

The completeness error of a sentence is ||sum of its IG attributions - (f(x) - f(baseline))|| / ||f(x) - f(baseline)||
(docs/metrics.md). Both sides are the same model's function, so what is left is the quadrature's error: how well
`--steps` nodes resolve the integrand along the PAD-baseline path. A model whose error stays large at the setup's
16 steps needs more steps (or another check) before its IG weights are trusted. The kurita2023 setup's sketch
(16 orthogonal directions) and the probe's "path" check, on `--sentences` random STS-B dev sentences in one batch.

    python benchmarks/studies/ig_completeness_steps.py --model all-mpnet-base-v2 --steps 16 64
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import torch

from ctrain.data.sources import read_sts_b
from ctrain.models.encoder import load_encoder
from ctrain.probes.weighting.ig import integrated_gradients

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, where the shared --toy option lives
from _toy import TOY_MODEL, parse_args


TOY = {"model": TOY_MODEL, "sentences": 2, "steps": [2, 4]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="all-MiniLM-L6-v2")
    parser.add_argument("--sentences", type=int, default=8)
    parser.add_argument("--steps", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--seed", type=int, default=0)
    args = parse_args(parser, TOY, argv)
    sentences = [sentence for row in read_sts_b("dev") for sentence in row[:2]]
    chosen = random.Random(args.seed).sample(sentences, args.sentences)
    encoder = load_encoder(args.model)
    batch = encoder.tokenize(chosen)
    print(f"{args.model}: {args.sentences} random STS-B dev sentences (seed {args.seed}), "
          f"{int(batch['attention_mask'].sum()) / args.sentences:.1f} tokens on average; torch threads {torch.get_num_threads()}")
    for steps in args.steps:
        started = time.perf_counter()
        errors = integrated_gradients(
            encoder, batch["input_ids"], batch["attention_mask"], steps=steps, mode="sketch", sketch_size=16,
            sketch_kind="orthogonal", seed=args.seed,
        ).completeness_error  # fmt: skip
        print(f"  {steps:4d} steps: completeness error mean {errors.mean():.3f}, median {errors.median():.3f}, "
              f"max {errors.max():.3f} ({time.perf_counter() - started:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
