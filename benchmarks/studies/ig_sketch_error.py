"""How far the kurita2023 setup's sketched IG is from exact IG, as a difference in the regression R^2 and beta.

Exact IG needs the whole Jacobian: ``d`` VJPs per quadrature step (384 for all-MiniLM-L6-v2),
24 times the setup's 16. Here it is taken along one Haar-random orthonormal basis of the
output space per batch, split into ``d / r`` groups of ``r`` directions: the mean over all
groups is exact IG, and every group alone is an ``r``-direction orthogonal sketch, so one
exact computation also gives ``d / r`` sketches of each size ``r`` (8, 16, 32, 64) to
compare with it.

To make exact IG affordable on a CPU it uses ``--ref-steps`` Gauss-Legendre nodes instead of
the setup's 16; the quadrature's own effect is measured separately with sketch directions
drawn as ``weighting_probe`` draws them (seed ``seed + batch start``), at 50 steps (``FINE_STEPS``,
WeightingConfig's default) and at fewer.

Sentences: the first N of ``--num_sentences N``'s draw, in the probe's order (by token length)
and batches of 8; statistics (KL, dKL, -log P) over all 3000 STS-B dev sentences, min_count 5,
points = occurrences, as the setup fits them. Results are saved after every batch (``--out``),
and ``--report`` prints the comparison from a saved file.

    PYTHONPATH=src .venv/bin/python benchmarks/studies/ig_sketch_error.py --sentences 96 --out ig_sketch_error.npz
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from ctrain.models.encoder import attribution_mode, load_encoder
from ctrain.probes.sentences import sample_sentences, sts_b_sentences
from ctrain.probes.weighting import KURITA2023_WEIGHTING as SETUP
from ctrain.probes.weighting import WeightingConfig
from ctrain.probes.weighting.ig import output_directions, pad_baseline, quadrature_rule, unit_weights
from ctrain.probes.weighting.information import segment
from ctrain.probes.weighting.regression import ols

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, where the shared --toy option lives
from _toy import TOY_MODEL, parse_args

MODEL = "all-MiniLM-L6-v2"
SIZES = (8, 16, 32, 64)
FINE_STEPS = WeightingConfig().steps  # the quadrature the setup's 16 steps are measured against


def direction_squares(encoder, input_ids, attention_mask, directions, steps, vjp_batch=16) -> torch.Tensor:
    """``||(x - b) * sum_a w_a grad <v, f(z_a)>||^2`` per direction ``v``, sentence and position: (K, B, n)."""
    with attribution_mode(encoder) as device, torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        positions = encoder.position_ids(input_ids)
        x, baseline = pad_baseline(encoder, input_ids)
        delta = x - baseline
        alphas, weights = (t.float() for t in quadrature_rule("gauss_legendre", steps))
        path = (baseline + alphas.view(-1, 1, 1, 1) * delta).flatten(0, 1)
        repeat = (steps, 1)

        def embed(z):
            return encoder(inputs_embeds=z, attention_mask=attention_mask.repeat(repeat), position_ids=positions.repeat(repeat))

        _, vjp = torch.func.vjp(embed, path)
        batch, dim, out = x.shape[0], directions.shape[1], []
        for chunk in directions.split(vjp_batch):
            cotangents = (weights.view(1, -1, 1, 1) * chunk.view(len(chunk), 1, 1, dim)).expand(-1, -1, batch, -1)
            (grads,) = torch.func.vmap(vjp)(cotangents.reshape(len(chunk), steps * batch, dim))
            out.append((delta * grads.view(len(chunk), steps, *x.shape).sum(1)).pow(2).sum(-1))
        return torch.cat(out)


def haar_basis(dim: int, seed: int) -> torch.Tensor:
    """``sqrt(d)`` times the rows of a Haar-random orthogonal matrix (the setup's orthogonal directions, all ``d`` of them)."""
    q, r = torch.linalg.qr(torch.randn(dim, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return (np.sqrt(dim) * (q * torch.sign(torch.diagonal(r))).T).float()


def collect(args) -> None:
    encoder = load_encoder(args.model).eval()
    corpus = sts_b_sentences("dev", "both")
    sentences = sample_sentences(corpus, args.draw, SETUP.seed)
    tokenizer = encoder.tokenizer
    lengths = [len(ids) for ids in tokenizer(sentences, truncation=True, max_length=SETUP.max_length)["input_ids"]]
    order = np.argsort(lengths, kind="stable")
    chosen = np.sort(np.random.default_rng(args.seed).choice(len(sentences), args.sentences, replace=False))
    order = [i for i in order if i in set(chosen.tolist())]
    saved = dict(np.load(args.out, allow_pickle=True)) if args.out and Path(args.out).exists() else {}
    rows = {k: list(v) for k, v in saved.items()} if saved else {}
    done = len(rows.get("sentence", []))
    dim = encoder.embedding_size
    for start in range(done, len(order), SETUP.batch_size):
        began = time.perf_counter()
        indices = order[start : start + SETUP.batch_size]
        batch = [sentences[i] for i in indices]
        seg = segment(tokenizer, batch, SETUP.units, SETUP.max_length)
        basis = haar_basis(dim, args.seed + 1000 + start)
        exact_squares = direction_squares(encoder, seg.input_ids, seg.attention_mask, basis, args.ref_steps)  # (d, B, n)
        generator = torch.Generator().manual_seed(SETUP.seed + start)  # the setup's own directions for this batch
        setup_directions, _ = output_directions("sketch", dim, SETUP.sketch_size, SETUP.sketch_kind, generator)
        setup_squares = {
            steps: direction_squares(encoder, seg.input_ids, seg.attention_mask, setup_directions, steps).mean(0)
            for steps in sorted({FINE_STEPS, SETUP.steps, args.ref_steps, *args.steps})
        }
        estimates = {"exact": exact_squares.mean(0)}
        for size in SIZES:
            groups = exact_squares.view(dim // size, size, *exact_squares.shape[1:]).mean(1)
            for g, squares in enumerate(groups):
                estimates[f"r{size}_{g}"] = squares
        for steps, squares in setup_squares.items():
            estimates[f"setup_{steps}"] = squares
        for name, squares in estimates.items():
            _, normalised = unit_weights(squares.sqrt(), seg.unit_of_position, seg.unit_sentence)
            rows.setdefault(name, []).extend(normalised.tolist())
        rows.setdefault("sentence", []).extend(int(indices[b]) for b in seg.unit_sentence.tolist())
        rows.setdefault("token", []).extend(seg.unit_types)
        if args.out:
            np.savez(args.out, **{k: np.array(v, dtype=object if k == "token" else None) for k, v in rows.items()})
        print(f"batch at {start}: {len(batch)} sentences, {time.perf_counter() - began:.0f} s", flush=True)


def report(args) -> None:
    data = dict(np.load(args.out, allow_pickle=True))
    encoder = load_encoder(args.model)
    corpus = sts_b_sentences("dev", "both")
    s = SETUP
    statistics = s.statistics(encoder.tokenizer, corpus)
    types = statistics.index(list(data["token"]))
    known = types >= 0
    keep = known.copy()
    keep[known] = statistics.eligible(s.min_count)[types[known]]
    quantities = {"kl": statistics.kl, "selfinfo": statistics.self_information, "dkl": statistics.dkl}
    print(f"{len(set(data['sentence'].tolist()))} sentences, {len(types)} token occurrences, {keep.sum()} with count >= {s.min_count}")

    def fits(y):
        out = {}
        for q, values in quantities.items():
            x = values[types[keep]]
            finite = np.isfinite(x)
            fit = ols(x[finite], y[keep][finite])
            out[q] = (100 * fit.r2, 100 * fit.slope)
        return out

    exact = fits(data["exact"])
    print("\nexact IG (%d GL steps): " % args.ref_steps + ", ".join(f"{q} R^2x100 {r:.2f} beta x100 {b:.2f}" for q, (r, b) in exact.items()))
    print("\nsketch minus exact (same steps): R^2 x100 and beta x100, mean (sd, max |.|) over the disjoint sketches of one basis;"
          " c' relative error median / 95th percentile")
    for size in SIZES:
        names = [k for k in data if k.startswith(f"r{size}_")]
        rel = np.concatenate([np.abs(data[k] / data["exact"] - 1) for k in names])
        line = [f"r={size:2d} ({len(names):2d} sketches)"]
        for q in quantities:
            dr = np.array([fits(data[k])[q][0] - exact[q][0] for k in names])
            db = np.array([fits(data[k])[q][1] - exact[q][1] for k in names])
            line.append(f"{q} dR2 {dr.mean():+.2f} ({dr.std():.2f}, {np.abs(dr).max():.2f}) dbeta {db.mean():+.2f} ({db.std():.2f})")
        print("  " + "; ".join(line) + f"; c' error {np.median(rel):.3f} / {np.quantile(rel, 0.95):.3f}")
    setup_keys = sorted((k for k in data if k.startswith("setup_")), key=lambda k: int(k.split("_")[1]))
    print(f"\nthe setup's own sketch (its seeds), by quadrature steps; minus exact, and c' relative to its {FINE_STEPS}-step value:")
    ref = data[f"setup_{FINE_STEPS}"]
    for k in setup_keys:
        f = fits(data[k])
        rel = np.abs(data[k] / ref - 1)
        print(f"  {k.split('_')[1]:>3s} steps: " + ", ".join(
            f"{q} R^2 {f[q][0]:.2f} (dR2 {f[q][0] - exact[q][0]:+.2f}) beta {f[q][1]:.2f}" for q in quantities)
            + f"; c' vs {FINE_STEPS} steps: max {rel.max():.2e}, median {np.median(rel):.2e}")  # fmt: skip


TOY = {"model": TOY_MODEL, "sentences": 8, "draw": 40, "ref_steps": 2, "steps": [2]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=MODEL)
    parser.add_argument("--sentences", type=int, default=96)
    parser.add_argument("--draw", type=int, default=3000, help="the setup's --num_sentences: sentences are chosen from its draw")
    parser.add_argument("--ref-steps", type=int, default=8, help="Gauss-Legendre steps of exact IG")
    parser.add_argument("--steps", type=int, nargs="*", default=[16, 24], help="more step counts for the setup's sketch")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="ig_sketch_error.npz")
    parser.add_argument("--report", action="store_true", help="only print the comparison of a saved --out")
    args = parse_args(parser, TOY, argv)
    if not args.report:
        collect(args)
    report(args)


if __name__ == "__main__":
    main()
