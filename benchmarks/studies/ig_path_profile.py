"""Where IG's integrand misbehaves: the sentence embedding along the PAD-baseline path, one sentence at a time.

For g(a) = f(b + a (x - b)), the path IG integrates, this evaluates g and its derivative g'(a) (one forward-mode JVP)
on a uniform grid of `--points` values of a, and prints per sentence:
- the completeness error of the trapezoid rule on that grid, ||integral g' - (g(1) - g(0))|| / ||g(1) - g(0)||:
  what is left when the grid is far finer than IG's quadrature;
- the largest ||g'(a)|| on the grid and where, against its median (a smooth integrand has a small ratio);
- the grid interval where g moves most, narrowed ten-fold `--zoom` times: the share of g(1) - g(0) that happens
  inside it, and how much each layer's attention probabilities and hidden states move across the first narrowing.
A large share of the change inside a tiny interval is a near-step in the integrand, which no fixed quadrature
resolves (docs/kurita_setup.md reads all-mpnet-base-v2's).

    python benchmarks/studies/ig_path_profile.py --model all-mpnet-base-v2
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import sys
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from ctrain.data.sources import read_sts_b
from ctrain.models.encoder import attribution_mode, load_encoder
from ctrain.probes.weighting.ig import pad_baseline

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, where the shared --toy option lives
from _toy import TOY_MODEL, parse_args


TOY = {"model": TOY_MODEL, "sentences": 1, "points": 11, "zoom": 1}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="all-MiniLM-L6-v2")
    parser.add_argument("--sentences", type=int, default=3)
    parser.add_argument("--points", type=int, default=201)
    parser.add_argument("--zoom", type=int, default=4, help="rounds of ten-fold refinement of the steepest interval")
    parser.add_argument("--seed", type=int, default=0)
    args = parse_args(parser, TOY, argv)
    sentences = [sentence for row in read_sts_b("dev") for sentence in row[:2]]
    encoder = load_encoder(args.model)
    encoder.backbone.set_attn_implementation("eager")  # the only one that returns attention probabilities
    alphas = torch.linspace(0, 1, args.points)
    with attribution_mode(encoder), torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        for sentence in random.Random(args.seed).sample(sentences, args.sentences):
            batch = encoder.tokenize([sentence])
            mask, positions = batch["attention_mask"], encoder.position_ids(batch["input_ids"])
            x, baseline = pad_baseline(encoder, batch["input_ids"])

            def along_path(a: torch.Tensor) -> torch.Tensor:
                z = baseline + a.view(-1, 1, 1) * (x - baseline)
                rows = len(a)
                return encoder(inputs_embeds=z, attention_mask=mask.repeat(rows, 1), position_ids=positions.repeat(rows, 1))

            values, slopes = zip(*(torch.func.jvp(along_path, (chunk,), (torch.ones_like(chunk),)) for chunk in alphas.split(50)))
            values, slopes = torch.cat(values), torch.cat(slopes)
            target = values[-1] - values[0]
            error = (torch.trapezoid(slopes, alphas, dim=0) - target).norm() / target.norm()
            norms = slopes.norm(dim=1)
            print(f"{sentence!r} ({mask.shape[1]} tokens)")
            print(f"  trapezoid on {args.points} points: completeness error {error:.3f}")
            print(f"  largest ||g'(a)|| on the grid {norms.max():.1f} at a = {float(alphas[norms.argmax()]):.3f}; median {norms.median():.2f}")
            moves = (values[1:] - values[:-1]).norm(dim=1)
            left, right = float(alphas[moves.argmax()]), float(alphas[moves.argmax() + 1])  # where g moves most
            shares, intervals = [float(moves.max() / target.norm())], [(left, right)]
            for _ in range(args.zoom):  # ten sub-intervals a round, keep the one where g moves most
                points = torch.linspace(left, right, 11)
                moves = torch.diff(along_path(points), dim=0).norm(dim=1)
                left, right = float(points[moves.argmax()]), float(points[moves.argmax() + 1])
                shares.append(float(moves.max() / target.norm()))
                intervals.append((left, right))
            widths = [1 / (args.points - 1) / 10**level for level in range(args.zoom + 1)]
            print("  ||g change|| / ||g(1) - g(0)|| in the steepest interval of width "
                  + ", ".join(f"{width:.0e}: {share:.1%}" for width, share in zip(widths, shares))
                  + f" (the last between a = {left:.7f} and {right:.7f})")
            ends = [encoder.backbone(
                inputs_embeds=baseline + a * (x - baseline), attention_mask=mask, position_ids=positions,
                output_attentions=True, output_hidden_states=True,
            ) for a in intervals[min(1, args.zoom)]]  # fmt: skip
            attention = [float((after - before).abs().max()) for before, after in zip(ends[0].attentions, ends[1].attentions)]
            hidden = [float((after - before).abs().max()) for before, after in zip(ends[0].hidden_states[1:], ends[1].hidden_states[1:])]
            print(f"  across the steepest interval of width {widths[min(1, args.zoom)]:.0e}, per layer: largest attention-probability change {' '.join(f'{v:.2f}' for v in attention)}; "
                  f"largest hidden-state change {' '.join(f'{v:.2f}' for v in hidden)}", flush=True)


if __name__ == "__main__":
    main()
