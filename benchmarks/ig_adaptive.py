"""Adaptive IG quadrature against fixed Gauss-Legendre: completeness error, path points and time per sentence.

On the kurita2023 setup's IG (16 orthogonal sketch directions, the exact "path" completeness check), each sentence
is weighed twice: with `--steps` fixed Gauss-Legendre nodes, and with `quadrature: adaptive` (tolerance `--tol`,
budget `--max-evaluations`; it starts from `--steps` // 2 Simpson sub-intervals). The sentences are the three that
benchmarks/ig_path_profile.py profiles (its `--seed`) followed by `--sentences` more random STS-B dev sentences,
weighed in batches of `--batch-size` in order of length, as the probe does. Prints per sentence and in all: the
completeness error (median, max), the adaptive rule's path points (mean, max), the seconds of each rule, and the
largest relative difference of the sentence's weights c' between the two rules.

    python benchmarks/ig_adaptive.py --model all-mpnet-base-v2 --sentences 0
    python benchmarks/ig_adaptive.py --model all-mpnet-base-v2 --profiled 0 --sentences 30
    python benchmarks/ig_adaptive.py --toy     # tiny-mpnet, 4 sentences: seconds (the test suite runs it)
"""

from __future__ import annotations

import argparse
import random
import time

import torch

from ctrain.data.sources import read_sts_b
from ctrain.models.encoder import load_encoder
from ctrain.probes.attribution import integrated_gradients


def chosen_sentences(profiled: int, more: int, seed: int) -> list[str]:
    """ig_path_profile.py's sentences (the first `profiled` of its draw) and `more` other random STS-B dev ones."""
    corpus = [sentence for row in read_sts_b("dev") for sentence in row[:2]]
    profile = random.Random(seed).sample(corpus, 3)[:profiled]
    others = [s for s in random.Random(seed + 1).sample(corpus, more + 3) if s not in profile][:more]
    return profile + others


def weigh(encoder, sentences: list[str], batch_size: int, **settings) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor], float]:
    """Completeness errors, path points, per-sentence weights (in the given order) and seconds of one rule."""
    errors, evaluations, weights = [None] * len(sentences), [None] * len(sentences), [None] * len(sentences)
    order = sorted(range(len(sentences)), key=lambda i: len(encoder.tokenizer(sentences[i])["input_ids"]))
    started = time.perf_counter()
    for start in range(0, len(order), batch_size):
        indices = order[start : start + batch_size]
        batch = encoder.tokenize([sentences[i] for i in indices])
        attribution = integrated_gradients(encoder, batch["input_ids"], batch["attention_mask"], **settings)
        for row, i in enumerate(indices):
            errors[i], evaluations[i] = float(attribution.completeness_error[row]), int(attribution.evaluations[row])
            kept = batch["attention_mask"][row].bool() & ~encoder.special_mask(batch["input_ids"][row])
            weights[i] = attribution.weights[row][kept]
    return torch.tensor(errors), torch.tensor(evaluations), weights, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="all-mpnet-base-v2")
    parser.add_argument("--profiled", type=int, default=3, help="how many of ig_path_profile.py's 3 sentences")
    parser.add_argument("--sentences", type=int, default=30, help="random STS-B dev sentences beyond those")
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--tol", type=float, default=0.01)
    parser.add_argument("--max-evaluations", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--toy", action="store_true", help="tiny-mpnet on 4 sentences, for the test suite")
    args = parser.parse_args()
    if args.toy:
        args.model, args.profiled, args.sentences = "tiny-mpnet", 1, 3
    torch.set_num_threads(1)
    sentences = chosen_sentences(args.profiled, args.sentences, args.seed)
    encoder = load_encoder(args.model)
    common = dict(steps=args.steps, mode="sketch", sketch_size=16, sketch_kind="orthogonal", seed=args.seed, completeness="path")
    print(f"{args.model}: {len(sentences)} STS-B dev sentences ({args.profiled} of ig_path_profile.py's), sketch 16 orthogonal, "
          f"torch threads {torch.get_num_threads()}", flush=True)  # fmt: skip
    fixed = weigh(encoder, sentences, args.batch_size, quadrature="gauss_legendre", **common)
    adaptive = weigh(
        encoder, sentences, args.batch_size, quadrature="adaptive", completeness_tol=args.tol, max_evaluations=args.max_evaluations, **common
    )
    for i, sentence in enumerate(sentences):
        c_fixed, c_adaptive = (w[i] / w[i].mean() for w in (fixed[2], adaptive[2]))
        change = float(((c_fixed - c_adaptive).abs() / c_adaptive).max()) if len(c_adaptive) else 0.0
        print(f"  {sentence[:60]!r:64s} error GL-{args.steps} {fixed[0][i]:8.2%}  adaptive {adaptive[0][i]:7.2%} "
              f"({int(adaptive[1][i]):3d} points)  c' differs by up to {change:.1%}")  # fmt: skip
    for name, (errors, evaluations, _, seconds) in ((f"GL-{args.steps}", fixed), (f"adaptive tol {args.tol:g}", adaptive)):
        print(f"{name:18s} completeness error median {errors.median():.2%}, max {errors.max():.2%}, over tol "
              f"{int((errors > args.tol).sum())} of {len(errors)}; path points mean {evaluations.double().mean():.1f}, "
              f"max {int(evaluations.max())}; {seconds:.1f} s ({seconds / len(sentences):.2f} s a sentence)")  # fmt: skip


if __name__ == "__main__":
    main()
