"""Benchmark: which word-weighting preset fits the demo's probe budget, and how far it is from exact IG.

The presets aim at the probes costing about 10% of the demo's wall time. For the preset of
`callbacks/probes.yaml` and a few alternatives (number of sentences, sketch directions,
quadrature steps, completeness check, batch) this prints, on the demo's model at step 0 (rebuilt from the
config and its seed) and at its last step (a finished demo run's `model_final/`):

- seconds per weighting probe (IG, its fits and the theorem fits; the statistics computed once
  beforehand, as the callback does), and the demo's probes' share of its wall time (`--demo-seconds`,
  measured with the probes on: the run the preset makes);
- IG-on-KL R^2 with its bootstrap interval, and the interval's width;
- the same fit from exact IG (every output direction, `--exact-steps` Gauss-Legendre steps) on
  the same sentences: the R^2 difference and the correlation of the normalised weights.

    make demo   # or: ctrain fit --config configs/demo.yaml --config callbacks/probes.yaml
    PYTHONPATH=src .venv/bin/python benchmarks/studies/demo_probe_budget.py runs/demo/version_0 --demo-seconds 84
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from pytorch_lightning import seed_everything

from ctrain.models.encoder import EncoderConfig, load_encoder
from ctrain.probes.sentences import sample_sentences, sts_b_sentences
from ctrain.probes.weighting import WeightingConfig, weighting_probe
from ctrain.probes.weighting.regression import ols
from ctrain.runtime import global_seed

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, where the shared --toy option lives
from _toy import parse_args

ROOT = Path(__file__).resolve().parents[2]
PRESET = ROOT / "callbacks" / "probes.yaml"
TOY = {"demo_seconds": 60.0, "max_sentences": 6, "exact_steps": 2}
# (sentences, WeightingConfig fields) besides the preset itself: the preset before issue 26, and cheaper or costlier sketches
ALTERNATIVES = (
    (48, {"sketch_size": 8, "steps": 16, "completeness": "path", "batch_size": 8}),
    (200, {"sketch_size": 8, "steps": 4, "completeness": "directions", "batch_size": 64}),
    (200, {"sketch_size": 4, "steps": 4, "completeness": "directions", "batch_size": 64}),
    (200, {"sketch_size": 16, "steps": 4, "completeness": "directions", "batch_size": 64}),
)


def preset_probe() -> dict:
    """The init_args of callbacks/probes.yaml's word-weighting probe."""
    callbacks = yaml.safe_load(PRESET.read_text())["trainer"]["callbacks"]
    (probe,) = [c["init_args"] for c in callbacks if c["class_path"].endswith("WordWeightingProbe")]
    return probe


def preset_candidate() -> tuple[int, dict]:
    """The preset's number of sentences and its WeightingConfig fields."""
    probe = preset_probe()
    return probe["num_sentences"], probe["config"]


def probes_per_run(config: str) -> int:
    """How many times the preset's word-weighting probe runs in the demo: step 0, every `every_n_steps`, the last step."""
    probe = preset_probe()
    steps = yaml.safe_load(Path(config).read_text())["trainer"]["max_steps"]
    return len(set(range(0, steps + 1, probe["every_n_steps"])) | {steps})


def step0_encoder(config: str):
    """The demo's encoder before its first step: the config's encoder built after its seed, as `ctrain fit` builds it."""
    settings = yaml.safe_load(Path(config).read_text())
    seed_everything(settings["seed_everything"])
    return EncoderConfig(**settings["model"]["encoder"]).load(seed=global_seed())


def probe_once(encoder, sentences, config, statistics):
    """Seconds, and per sentence the normalised IG weights of its fitted occurrences, and the fit with its interval."""
    started = time.perf_counter()
    result = weighting_probe(encoder, sentences, config, statistics=statistics)
    seconds = time.perf_counter() - started
    x, y, _, sentence = result.occurrences("ig", "kl")
    by_sentence = {sentences[i]: (x[sentence == i], y[sentence == i]) for i in np.unique(sentence)}
    m = result.metrics
    return seconds, by_sentence, tuple(m.get(f"weighting/ig_kl_r2{end}", float("nan")) for end in ("", "_ci_low", "_ci_high"))


def stacked(by_sentence, sentences):
    rows = [by_sentence[s] for s in sentences if s in by_sentence]
    return np.concatenate([r[0] for r in rows]), np.concatenate([r[1] for r in rows])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, nargs="?", help="a finished demo run directory (holds model_final/); without it, step 0 only")
    parser.add_argument("--config", default=str(ROOT / "configs" / "demo.yaml"))
    parser.add_argument("--demo-seconds", type=float, help="the demo's measured wall time with its probes (required)")
    parser.add_argument("--exact-steps", type=int, default=4, help="the preset's own completeness error says whether few suffice")
    parser.add_argument("--max-sentences", type=int, help="at most this many sentences a candidate")
    args = parse_args(parser, TOY, argv)
    if args.demo_seconds is None:
        parser.error("--demo-seconds is required: the demo's measured wall time with its probes")
    torch.manual_seed(0)
    preset = preset_candidate()
    candidates = tuple((min(count, args.max_sentences or count), fields) for count, fields in (preset, *ALTERNATIVES))
    base = WeightingConfig(**preset[1])
    models = {"step 0": step0_encoder(args.config)}
    if args.run is not None:
        models["last step"] = load_encoder(str(args.run / "model_final"))
    split = sts_b_sentences("dev")
    for label, encoder in models.items():
        encoder.eval()
        statistics = base.statistics(encoder.tokenizer, split)
        print(f"\n{label}: {encoder.embedding_size}-dim outputs")
        # exact IG once, on the union of every candidate's sentences: with a full basis the weights do not depend on the batch
        union = sorted({s for n, _ in candidates for s in sample_sentences(split, n, base.seed)}, key=split.index)
        exact_config = dataclasses.replace(base, ig_mode="exact", steps=args.exact_steps, theorem=False, bootstrap_resamples=0)
        exact_seconds, exact, _ = probe_once(encoder, union, exact_config, statistics)
        print(f"  exact IG ({args.exact_steps} steps) on {len(union)} sentences: {exact_seconds:.1f} s")
        for number, (sentences, fields) in enumerate(candidates):
            config = dataclasses.replace(base, **fields)
            directions, steps, completeness = config.sketch_size, config.steps, config.completeness
            probe = sample_sentences(split, sentences, base.seed)
            seconds, sketched, (r2, low, high) = probe_once(encoder, probe, config, statistics)
            x, y = stacked(sketched, probe)
            exact_x, exact_y = stacked(exact, probe)
            assert np.array_equal(x, exact_x), "sketch and exact fits must see the same occurrences"
            share = probes_per_run(args.config) * seconds / args.demo_seconds
            print(
                f"  {'preset' if number == 0 else '':6s} {sentences:4d} sentences, sketch {directions:2d} x {steps:2d} steps, batch {config.batch_size:2d}, completeness {completeness:10s}: {seconds:5.2f} s a probe ({100 * share:4.1f}% of the demo "
                f"for {probes_per_run(args.config)}); R^2 {r2:.4f} [{low:.4f}, {high:.4f}] width {high - low:.4f}; exact IG's R^2 on these "
                f"sentences {ols(exact_x, exact_y).r2:.4f} (sketch - exact {r2 - ols(exact_x, exact_y).r2:+.4f}); weights r {np.corrcoef(y, exact_y)[0, 1]:.3f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
