"""Benchmark: `ctrain probe all-MiniLM-L6-v2 --setup kurita2023`'s word weighting, fast path vs library paths.

On N sentences drawn as `--num_sentences N` draws them (seeded, STS-B dev, both columns; the
token statistics over all 3000, as the setup computes them), in the same process:

- the whole `weighting_probe` twice: with the setup's SHAP as the `shap` library computes it
  (`shap_mode partition`) and with ctrain's native batched recursion (`partition_native`);
  each run's seconds are split into IG, SHAP and the rest (statistics fits, theorem vectors);
- captum's `IntegratedGradients` looped over the same 16 sketch directions (target
  `<v, f(.)>`, 50 Gauss-Legendre steps, same PAD baseline and position ids), one sentence
  at a time, against ctrain's batched VJPs.

Printed: seconds per sentence (wall clock and process CPU: the machine is shared, only ratios
measured in the same run are meant to be read), the ratios, the largest absolute difference
in the weights (raw `c` and normalised `c'`) and in the logged metrics, and the 3000-sentence
projection of each path. SHAP sentences whose recursion exhausts the 500-evaluation budget
are reported apart: there the library breaks exact priority ties with NumPy's global RNG, so
it is compared with itself under two global seeds as well.

    PYTHONPATH=src .venv/bin/python benchmarks/speed/kurita_setup.py [--sentences 16] [--captum-sentences 4]
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ctrain.models.encoder import attribution_mode, load_encoder
from ctrain.probes.sentences import sample_sentences, sts_b_sentences
from ctrain.probes.weighting import KURITA2023_WEIGHTING, weigh_batch, weighting_probe
from ctrain.probes.weighting.batch import attribute
from ctrain.probes.weighting.ig import integrated_gradients, output_directions, pad_baseline
from ctrain.probes.weighting.partition import TextGame, text_masker
from ctrain.probes.weighting.shapley import owen_values

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, where the shared --toy option lives
from _toy import TOY_MODEL, parse_args

MODEL = "all-MiniLM-L6-v2"
TOTAL = 3000


class Clock:
    """Wall-clock and process-CPU seconds, accumulated per label."""

    def __init__(self) -> None:
        self.seconds: dict[str, np.ndarray] = {}

    def timed(self, label: str, function, *args, **kwargs):
        wall, cpu = time.perf_counter(), time.process_time()
        value = function(*args, **kwargs)
        spent = np.array([time.perf_counter() - wall, time.process_time() - cpu])
        self.seconds[label] = self.seconds.get(label, np.zeros(2)) + spent
        return value


def probe_with_split_times(encoder, sentences, config, statistics, clock: Clock, tag: str):
    """``weighting_probe`` with its IG and SHAP calls timed (and their raw weights kept), the total too."""
    captured = {"ig": [], "shap": []}

    def timed_attribute(encoder, method, segmentation, batch, config, seed):
        attribution = clock.timed(f"{tag} {method}", attribute, encoder, method, segmentation, batch, config, seed)
        if method == "ig":
            captured["ig"].append((segmentation.input_ids, segmentation.attention_mask, seed, attribution.weights))
        else:
            captured["shap"].append((list(batch), attribution.weights))
        return attribution

    weigh = functools.partial(weigh_batch, attribute=timed_attribute)
    result = clock.timed(f"{tag} total", weighting_probe, encoder, sentences, config, statistics=statistics, weigh=weigh)
    return result, captured


def captum_sketch_loop(encoder, input_ids, attention_mask, config, seed) -> torch.Tensor:
    """Sketch IG weights of one batch by captum, one sentence and one output direction at a time."""
    from captum.attr import IntegratedGradients

    generator = torch.Generator().manual_seed(seed)
    directions, scale = output_directions("sketch", encoder.embedding_size, config.sketch_size, config.sketch_kind, generator)
    weights = torch.zeros(input_ids.shape)
    with attribution_mode(encoder):
        for b, (ids, keep) in enumerate(zip(input_ids, attention_mask.bool())):
            ids = ids[keep].unsqueeze(0)
            positions = encoder.position_ids(ids)
            x, baseline = pad_baseline(encoder, ids)
            mask = torch.ones_like(ids)
            squares = torch.zeros(ids.shape[1])
            for v in directions:
                ig = IntegratedGradients(lambda z, m, p, v=v: encoder(inputs_embeds=z, attention_mask=m, position_ids=p) @ v)
                attribution = ig.attribute(
                    x, baselines=baseline, additional_forward_args=(mask, positions), n_steps=config.steps,
                    method="gausslegendre",
                )  # fmt: skip
                squares += attribution.detach()[0].pow(2).sum(-1)
            weights[b, : ids.shape[1]] = (scale * squares).sqrt()
    return weights


def evaluations_needed(game: TextGame) -> int:
    """Model calls of the full recursion (no budget): 2 per internal node per context, 2^depth contexts."""
    players, depth, total = game.players, {2 * game.players - 2: 0}, 0
    for node in range(2 * players - 2, players - 1, -1):
        total += 2 * 2 ** depth[node]
        for child in game.clustering[node - players, :2].astype(int):
            depth[child] = depth[node] + 1
    return total


TOY = {"model": TOY_MODEL, "sentences": 3, "captum_sentences": 1}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=MODEL)
    parser.add_argument("--sentences", type=int, default=16, help="sentences drawn as --num_sentences draws them")
    parser.add_argument("--captum-sentences", type=int, default=4, help="of them, how many the captum loop weighs")
    parser.add_argument("--seed", type=int, default=0)
    args = parse_args(parser, TOY, argv)

    torch.manual_seed(0)
    encoder = load_encoder(args.model).eval()
    corpus = sts_b_sentences("dev", "both")
    base = dataclasses.replace(KURITA2023_WEIGHTING, seed=args.seed)
    sentences = sample_sentences(corpus, args.sentences, base.seed)
    statistics = base.statistics(encoder.tokenizer, corpus)
    tokens = [len(encoder.tokenizer(s)["input_ids"]) for s in sentences]
    print(f"model {args.model}, torch threads {torch.get_num_threads()}; {len(sentences)} sentences of {np.mean(tokens):.1f} tokens "
          f"on average (max {max(tokens)}); setup: IG {base.ig_mode} r={base.sketch_size} {base.sketch_kind}, {base.steps} "
          f"{base.quadrature} steps, batch {base.batch_size}; SHAP max_evals {base.shap_max_evals}, batch {base.shap_batch_size}")  # fmt: skip

    # warm-up: numba compiles shap's helpers on first use, the allocator grows
    warm = sentences[:2]
    for mode in ("partition", "partition_native"):
        weighting_probe(encoder, warm, dataclasses.replace(base, shap_mode=mode, theorem=False), statistics=statistics)

    clock = Clock()
    library, lib_captured = probe_with_split_times(
        encoder, sentences, dataclasses.replace(base, shap_mode="partition"), statistics, clock, "library"
    )  # fmt: skip
    native, nat_captured = probe_with_split_times(
        encoder, sentences, dataclasses.replace(base, shap_mode="partition_native"), statistics, clock, "fast"
    )  # fmt: skip

    # captum's loop on the first batches' sentences (same directions as ctrain's batch)
    loop_diffs, loop_done, loop_largest = [], 0, 0.0
    for input_ids, attention_mask, seed, weights in nat_captured["ig"]:
        if loop_done >= args.captum_sentences:
            break
        take = min(len(input_ids), args.captum_sentences - loop_done)
        reference = clock.timed("captum loop", captum_sketch_loop, encoder, input_ids[:take], attention_mask[:take], base, seed)
        clock.seconds.setdefault("captum ctrain", np.zeros(2))
        clock.timed("captum ctrain", integrated_gradients, encoder, input_ids[:take], attention_mask[:take], steps=base.steps,
                    quadrature=base.quadrature, mode=base.ig_mode, sketch_size=base.sketch_size, sketch_kind=base.sketch_kind,
                    seed=seed, vjp_batch=base.vjp_batch)  # fmt: skip
        loop_diffs.append((weights[:take] - reference).abs().max().item())
        loop_largest = max(loop_largest, reference.max().item())
        loop_done += take

    n = len(sentences)
    per = {label: s / n for label, s in clock.seconds.items()}
    print("\nseconds per sentence (wall / CPU)")
    for tag in ("library", "fast"):
        total, ig, shap = per[f"{tag} total"], per[f"{tag} ig"], per[f"{tag} shap"]
        rest = total - ig - shap
        print(f"  {tag:8s} total {total[0]:6.2f} / {total[1]:6.2f}   IG {ig[0]:6.2f} / {ig[1]:6.2f}   "
              f"SHAP {shap[0]:6.2f} / {shap[1]:6.2f}   rest {rest[0]:5.2f} / {rest[1]:5.2f}   "
              f"-> {TOTAL} sentences: {total[0] * TOTAL / 60:.0f} min wall here")  # fmt: skip
    ratio = lambda a, b: per[a] / per[b]  # noqa: E731
    print(f"  ratio library/fast: whole probe {ratio('library total', 'fast total')[0]:.2f}x wall, "
          f"{ratio('library total', 'fast total')[1]:.2f}x CPU; SHAP {ratio('library shap', 'fast shap')[0]:.2f}x wall, "
          f"{ratio('library shap', 'fast shap')[1]:.2f}x CPU")  # fmt: skip
    if loop_done:
        loop, ours = clock.seconds["captum loop"] / loop_done, clock.seconds["captum ctrain"] / loop_done
        print(f"  IG, {loop_done} sentences: captum loop over the {base.sketch_size} directions {loop[0]:.2f} / {loop[1]:.2f}, "
              f"ctrain batched VJPs {ours[0]:.2f} / {ours[1]:.2f}: {loop[0] / ours[0]:.2f}x wall, {loop[1] / ours[1]:.2f}x CPU")  # fmt: skip

    # agreement
    masker = text_masker(encoder.tokenizer)
    needed = {s: evaluations_needed(TextGame.from_masker(masker, s)) for s in sentences}
    limited = {s for s, k in needed.items() if k > base.shap_max_evals - 2}
    fits_diff, limited_diff, largest = 0.0, 0.0, 0.0
    for (batch, lib_w), (batch2, nat_w) in zip(lib_captured["shap"], nat_captured["shap"]):
        assert batch == batch2
        for b, sentence in enumerate(batch):
            diff = (lib_w[b] - nat_w[b]).abs().max().item()
            largest = max(largest, lib_w[b].max().item())
            if sentence in limited:
                limited_diff = max(limited_diff, diff)
            else:
                fits_diff = max(fits_diff, diff)
    print(f"\nSHAP c_i = ||phi_i||, native vs library (largest c_i {largest:.3g}): max |diff| {fits_diff:.3g} over the "
          f"{n - len(limited)} sentences whose recursion fits the budget; {limited_diff:.3g} over the {len(limited)} that exhaust it")  # fmt: skip
    if limited:
        encode = lambda masked: encoder.encode(list(masked), batch_size=256).double().numpy()  # noqa: E731 (a forward pass's size)
        spread = 0.0
        with attribution_mode(encoder), torch.no_grad():
            for sentence in sorted(limited)[:4]:
                runs = []
                for seed in (0, 1):
                    np.random.seed(seed)
                    runs.append(np.linalg.norm(owen_values(encode, encoder.tokenizer, sentence, base.shap_max_evals, base.shap_batch_size), axis=1))
                spread = max(spread, np.abs(runs[0] - runs[1]).max())
        print(f"  the library against itself (np.random.seed 0 vs 1) on {min(len(limited), 4)} of those: max |diff| {spread:.3g}")
    for method in base.methods:
        diff = np.abs(library.units.weights[method] - native.units.weights[method]).max()
        print(f"  normalised c' ({method}), library path vs fast path: max |diff| {diff:.3g}")
    if loop_done:
        print(f"IG c_i, ctrain vs captum loop ({loop_done} sentences, largest c_i {loop_largest:.3g}): max |diff| {max(loop_diffs):.3g}")
    worst = max(
        (abs(library.metrics[k] - native.metrics[k]) / max(abs(library.metrics[k]), 1e-12), k)
        for k in library.metrics
        if math.isfinite(library.metrics[k]) and math.isfinite(native.metrics[k])
    )
    print(f"metrics, library path vs fast path: largest relative difference {worst[0]:.3g} ({worst[1]})")
    evals = np.array(list(needed.values()))
    print(f"SHAP recursion: {np.minimum(evals, base.shap_max_evals - 2).mean() + 2:.0f} model calls per sentence on average, "
          f"{len(limited)} of {n} sentences exhaust the budget")  # fmt: skip


if __name__ == "__main__":
    main()
