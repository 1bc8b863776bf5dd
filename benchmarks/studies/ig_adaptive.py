"""Adaptive IG quadrature against fixed Gauss-Legendre: completeness error, path points and time per sentence.

On the kurita2023 setup's IG (16 orthogonal sketch directions, the exact "path" completeness check), each sentence
is weighed twice: with `--steps` fixed Gauss-Legendre nodes, and with `quadrature: adaptive` (tolerance `--tol`,
budget `--max-evaluations`, model and path in `--precision`; it starts from `--steps` // 2 Simpson sub-intervals). The sentences are the three that
benchmarks/studies/ig_path_profile.py profiles (its `--seed`) followed by `--sentences` more random STS-B dev sentences,
weighed in batches of `--batch-size` in order of length, as the probe does. Prints per sentence and in all: the
completeness error (median, max), the adaptive rule's path points (mean, max), the CPU seconds of each rule
(one thread), and the
largest relative difference of the sentence's weights c' between the two rules.

    python benchmarks/studies/ig_adaptive.py --model all-mpnet-base-v2 --sentences 0
    python benchmarks/studies/ig_adaptive.py --model all-mpnet-base-v2 --profiled 0 --sentences 30
    python benchmarks/studies/ig_adaptive.py --toy     # a tiny random encoder, 4 sentences: seconds (the test suite runs it)
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

TOY = {"model": TOY_MODEL, "profiled": 1, "sentences": 3}


def chosen_sentences(profiled: int, more: int, seed: int) -> list[str]:
    """ig_path_profile.py's sentences (the first `profiled` of its draw) and `more` other random STS-B dev ones."""
    corpus = [sentence for row in read_sts_b("dev") for sentence in row[:2]]
    profile = random.Random(seed).sample(corpus, 3)[:profiled]
    others = [s for s in random.Random(seed + 1).sample(corpus, more + 3) if s not in profile][:more]
    return profile + others


def weigh(encoder, batch: dict, **settings) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor], float]:
    """One rule on one batch: completeness errors, path points, each sentence's normalised weights c', CPU seconds.

    CPU seconds of this one-threaded process, not wall: on a shared machine they are what the rule costs."""
    started = time.process_time()
    attribution = integrated_gradients(encoder, batch["input_ids"], batch["attention_mask"], **settings)
    seconds = time.process_time() - started
    kept = batch["attention_mask"].bool() & ~encoder.special_mask(batch["input_ids"])
    weights = [w[k] / w[k].mean() for w, k in zip(attribution.weights, kept)]
    return attribution.completeness_error, attribution.evaluations, weights, seconds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="all-mpnet-base-v2")
    parser.add_argument("--profiled", type=int, default=3, help="how many of ig_path_profile.py's 3 sentences")
    parser.add_argument("--sentences", type=int, default=30, help="random STS-B dev sentences beyond those")
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--tol", type=float, default=0.01)
    parser.add_argument("--max-evaluations", type=int, default=256)
    parser.add_argument("--precision", choices=("float32", "float64"), default="float32", help="the adaptive rule's model and path")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sketch-size", type=int, default=16, help="errors and points do not depend on it; the time does")
    parser.add_argument("--part", default="0/1", help="i/n: weigh only every n-th sentence from the i-th (parallel processes)")
    args = parse_args(parser, TOY, argv)
    torch.set_num_threads(1)
    part, parts = map(int, args.part.split("/"))
    sentences = chosen_sentences(args.profiled, args.sentences, args.seed)[part::parts]
    encoder = load_encoder(args.model)
    common = dict(steps=args.steps, mode="sketch", sketch_size=args.sketch_size, sketch_kind="orthogonal", seed=args.seed, completeness="path")
    print(f"{args.model}: {len(sentences)} STS-B dev sentences (part {args.part} of {args.profiled} of ig_path_profile.py's and {args.sentences} more), "
          f"sketch {args.sketch_size} orthogonal, "
          f"torch threads {torch.get_num_threads()}", flush=True)  # fmt: skip
    rules = {
        f"GL-{args.steps}": dict(quadrature="gauss_legendre", **common),
        f"adaptive tol {args.tol:g}": dict(
            quadrature="adaptive", completeness_tol=args.tol, max_evaluations=args.max_evaluations, precision=args.precision, **common
        ),
    }
    totals = {name: ([], [], 0.0) for name in rules}
    order = sorted(sentences, key=lambda sentence: len(encoder.tokenizer(sentence)["input_ids"]))  # as the probe goes
    for start in range(0, len(order), args.batch_size):  # results print batch by batch: a run cut short keeps them
        batch_sentences = order[start : start + args.batch_size]
        batch = encoder.tokenize(batch_sentences)
        results = {name: weigh(encoder, batch, **settings) for name, settings in rules.items()}
        for name, (errors, evaluations, _, seconds) in results.items():
            done_errors, done_evaluations, done_seconds = totals[name]
            totals[name] = (done_errors + errors.tolist(), done_evaluations + evaluations.tolist(), done_seconds + seconds)
        (fixed_errors, _, fixed_weights, fixed_seconds), (errors, evaluations, weights, seconds) = results.values()
        print(f"batch of {len(batch_sentences)} ({batch['input_ids'].shape[1]} tokens): GL-{args.steps} {fixed_seconds:.1f} CPU s, adaptive {seconds:.1f} CPU s")
        for i, sentence in enumerate(batch_sentences):
            change = float(((fixed_weights[i] - weights[i]).abs() / weights[i]).max()) if len(weights[i]) else 0.0
            print(f"  {sentence[:60]!r:64s} error GL-{args.steps} {float(fixed_errors[i]):8.2%}  adaptive {float(errors[i]):7.2%} "
                  f"({int(evaluations[i]):3d} points)  c' differs by up to {change:.1%}", flush=True)  # fmt: skip
    for name, (errors, evaluations, seconds) in totals.items():
        errors, evaluations = torch.tensor(errors), torch.tensor(evaluations, dtype=torch.float64)
        print(f"{name:18s} completeness error median {errors.median():.2%}, max {errors.max():.2%}, over tol "
              f"{int((errors > args.tol).sum())} of {len(errors)}; path points mean {evaluations.mean():.1f}, "
              f"max {int(evaluations.max())}; {seconds:.1f} CPU s ({seconds / len(errors):.2f} a sentence)")  # fmt: skip


if __name__ == "__main__":
    main()
