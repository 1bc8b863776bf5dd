"""Benchmark: ctrain's IG word-weighting probe vs the straightforward captum loop.

The straightforward way runs captum's ``IntegratedGradients`` once per output dim
``k`` of all-MiniLM-L6-v2 (d = 384), with captum's default 50 Gauss-Legendre steps,
the same PAD baseline and the same explicit position ids, one sentence at a time, and
takes ``c_i = sqrt(sum_k sum_j IG_ijk^2)``. ctrain's exact mode computes the same
weights from one forward pass and batched VJPs; sketch mode estimates them from ``r``
random output directions.

The loop costs ``d`` forward + backward passes of 50 interpolations per sentence, so it
is timed on a few short STS-B dev sentences only; ctrain's modes are timed on the same
sentences in the same process, interleaved with the loop. Other processes on a shared
machine slow the wall clock unevenly, so both wall-clock and process CPU seconds are
reported; only ratios are meant to be read.

Then, on more sentences (first sentences of STS-B dev pairs, statistics from all
dev first sentences): the completeness error per number of quadrature steps (exact
for any mode, via a JVP in sketch mode), and the regression R^2 of sketch vs exact.

    .venv/bin/python benchmarks/speed/ig_probe.py [--loop-sentences 2] [--r2-sentences 12] [--r2-steps 32]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from ctrain.data.sources import read_sts_b
from ctrain.models.encoder import load_encoder
from ctrain.probes.weighting import FIT_KEYS, WeightingConfig, token_statistics, weighting_probe
from ctrain.probes.weighting.captum_peer import captum_loop_weights
from ctrain.probes.weighting.ig import integrated_gradients

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, where the shared --toy option lives
from _toy import TOY_MODEL, parse_args

MODEL = "all-MiniLM-L6-v2"
STEPS = 50
TOY = {"model": TOY_MODEL, "loop_sentences": 1, "r2_sentences": 4, "r2_steps": 2, "sketch_size": 4}


def timed(function, *args, **kwargs):
    """The value, and the wall-clock and process-CPU seconds it took."""
    wall, cpu = time.perf_counter(), time.process_time()
    value = function(*args, **kwargs)
    return value, torch.tensor([time.perf_counter() - wall, time.process_time() - cpu], dtype=torch.float64)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=MODEL)
    parser.add_argument("--loop-sentences", type=int, default=2, help="short sentences timed against the captum loop")
    parser.add_argument("--r2-sentences", type=int, default=12, help="sentences of the R^2 comparison")
    parser.add_argument("--r2-steps", type=int, default=32, help="quadrature steps of the R^2 comparison")
    parser.add_argument("--sketch-size", type=int, default=32, help="sketch directions r")
    args = parse_args(parser, TOY, argv)

    encoder = load_encoder(args.model).eval()
    dev = [row[0] for row in read_sts_b("dev")]
    print(f"model {args.model}: d = {encoder.hidden_size}, torch threads = {torch.get_num_threads()}")

    # 1. speed and agreement against the loop, on short sentences, one at a time
    lengths = [len(encoder.tokenizer.tokenize(s)) for s in dev[:200]]
    short = [s for s, n in sorted(zip(dev[:200], lengths), key=lambda p: p[1]) if n >= 6][: args.loop_sentences]
    seconds = {name: torch.zeros(2, dtype=torch.float64) for name in ("loop", "exact", "sketch")}
    differences = {"exact": 0.0, "sketch": 0.0}
    largest = 0.0
    for sentence in short:
        batch = encoder.tokenize([sentence])
        reference, seconds_loop = timed(captum_loop_weights, encoder, batch["input_ids"], batch["attention_mask"], STEPS)
        exact, seconds_exact = timed(integrated_gradients, encoder, **batch, steps=STEPS)
        sketch, seconds_sketch = timed(integrated_gradients, encoder, **batch, steps=STEPS, mode="sketch", sketch_size=args.sketch_size)
        seconds["loop"] += seconds_loop
        seconds["exact"] += seconds_exact
        seconds["sketch"] += seconds_sketch
        differences["exact"] = max(differences["exact"], (exact.weights - reference).abs().max().item())
        differences["sketch"] = max(differences["sketch"], (sketch.weights - reference).abs().max().item())
        largest = max(largest, reference.max().item())
    count, tokens = len(short), [len(encoder.tokenizer.tokenize(s)) for s in short]
    print(f"\n[1] vs captum loop over d output dims, {STEPS} Gauss-Legendre steps, {count} sentences of {tokens} tokens")
    for name in ("loop", "exact", "sketch"):
        label = {"loop": "captum loop", "exact": "ctrain exact", "sketch": f"ctrain sketch r={args.sketch_size}"}[name]
        wall, cpu = (seconds[name] / count).tolist()
        ratio = "" if name == "loop" else "  speed-up wall {:.1f}x, cpu {:.1f}x".format(*(seconds["loop"] / seconds[name]).tolist())
        difference = "" if name == "loop" else f"  max |c - c_loop| = {differences[name]:.2e} (max c = {largest:.3f})"
        print(f"  {label:<22} {wall:7.2f} s/sentence wall, {cpu:7.2f} s cpu{ratio}{difference}")

    # 2. completeness error per number of quadrature steps (sketch r=1: its completeness is exact, via a JVP)
    sentences = dev[: args.r2_sentences]
    batch = encoder.tokenize(sentences)
    print(f"\n[2] completeness error ||sum IG - (f(x) - f(b))|| / ||f(x) - f(b)|| over {len(sentences)} sentences")
    for quadrature, step_list in (("gauss_legendre", (4, 8, 16, 24, 32, 50)), ("riemann_trapezoid", (8, 16, 24, 32, 50))):
        enough = None
        for steps in step_list:
            errors = integrated_gradients(
                encoder, **batch, steps=steps, quadrature=quadrature, mode="sketch", sketch_size=1
            ).completeness_error
            enough = enough or (steps if errors.max() <= 0.01 else None)
            print(f"  {quadrature:<18} m={steps:<3} mean {errors.mean():.2e}  max {errors.max():.2e}")
        print(f"  {quadrature}: smallest m tried with every sentence <= 1%: {enough}")

    # 3. R^2 of sketch vs exact on those sentences (statistics: all dev first sentences)
    statistics = token_statistics(encoder.tokenizer, dev)
    common = dict(steps=args.r2_steps, theorem=False, batch_size=8)
    runs = {}
    for mode in ("exact", "sketch"):
        runs[mode], seconds_run = timed(
            weighting_probe, encoder, sentences, WeightingConfig(ig_mode=mode, sketch_size=args.sketch_size, **common), statistics=statistics
        )
        wall, cpu = (seconds_run / len(sentences)).tolist()
        print(f"\n[3] {mode:<6} probe on {len(sentences)} sentences, m={args.r2_steps}: {wall:.2f} s/sentence wall, {cpu:.2f} s cpu")
    for quantity in ("kl", "dkl", "selfinfo"):
        keys = FIT_KEYS["ig", quantity]
        exact_r2, sketch_r2 = runs["exact"].metrics[keys.r2], runs["sketch"].metrics[keys.r2]
        print(f"  {keys.r2:<26} exact {exact_r2:.5f}  sketch {sketch_r2:.5f}  |diff| {abs(exact_r2 - sketch_r2):.5f}  "
              f"n {runs['exact'].metrics[keys.n]:.0f}")  # fmt: skip


if __name__ == "__main__":
    main()
