"""Which of ctrain's choices moves SHAP-vs-KL and -log P (issue 36, item 3): one change at a time from the setup.

The kurita2023 setup's SHAP (PartitionSHAP, `partition_native`, 500 evaluations; IG is not run, no variant
touches it) on `--sentences` STS-B dev sentences drawn as `ctrain probe --num_sentences N` draws them (seed 0:
the same 300 as docs/kurita_setup.md's all-mpnet-base-v2 run), KL and -log P over all 3000. Variants, each the
setup with one change:

- `setup`: as `ctrain probe MODEL --setup kurita2023` runs it (the shap library's default batch, the sentence
  embedding as the model declares it, KL counting the word's own occurrence, MASK as the absent value, subword
  tokens as units);
- `batch_256`: 256 coalitions per round of the recursion instead of the library's default;
- `normalize_<on|off>`: the sentence embedding with the L2 normalisation the model does not declare, or without
  the one it does (`load_encoder(normalize=...)`);
- `include_self_off`: KL leaves the word's own occurrence out (`include_self false`);
- `pad_absent`: the tokenizer's PAD token (IG's baseline) as SHAP's absent value instead of MASK: the SHAP masker
  takes the tokenizer's mask token, so this variant gives the tokenizer PAD as its mask token;
- `words`: word units (a word's weight from its subword tokens' weights) instead of subword tokens.
- `points_type`: one regression point per token type (its mean weight) instead of one per occurrence.

Printed and written to OUT/shap_sensitivity.json: R^2 and beta x100 of SHAP c' on KL(w) and on -log P(w), each
with its 95% bootstrap interval over 1000 resamples of the sentences (the probe's own). For `points_type`, also
why its interval can leave out its estimate (`type_points`): the KL fit on the types seen in at least 1, 2 and 5
probe sentences, and the mean share of the types a bootstrap resample keeps. Each variant's weighed
batches are kept under OUT/<variant>/, so a stopped run resumes where it stopped; `include_self_off` changes only the
fits, and so does `points_type`: they refit the setup's batches. `--toy` runs every variant on a
tiny random BERT, the 8 longest sentences and a 40-evaluation budget in seconds (the test's mode; its numbers mean nothing).

    PYTHONPATH=src python benchmarks/studies/shap_sensitivity.py --model all-mpnet-base-v2 --sentences 300 --out shap_sensitivity
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import json
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ctrain.fileio import atomic_write_text
from ctrain.models.encoder import SentenceEncoder, load_encoder
from ctrain.probes.sentences import sample_sentences, sts_b_sentences
from ctrain.probes.weighting import FIT_KEYS, KURITA2023_WEIGHTING, WeightingConfig, WeightingResult, token_statistics, weighting_probe
from ctrain.probes.weighting.regression import ols, regression_points, sentence_draws
from ctrain.probes.weighting.store import FIT_ONLY_FIELDS

VARIANTS = ("setup", "batch_256", "normalize", "include_self_off", "pad_absent", "words", "points_type")
FITS = (("kl", "KL(w)"), ("selfinfo", "-log P(w)"))
SHAP_SETUP = dataclasses.replace(KURITA2023_WEIGHTING, methods=("shap",))
CONFIG_CHANGES = {
    "batch_256": {"shap_batch_size": 256},
    "include_self_off": {"include_self": False},
    "words": {"units": "words"},
    "points_type": {"points": "type"},
}


@contextlib.contextmanager
def absent_token(encoder: SentenceEncoder, token: str) -> Iterator[None]:
    """The encoder's tokenizer, for the duration, declares ``token`` its mask token (SHAP's absent value)."""
    original = encoder.tokenizer
    encoder.tokenizer = copy.deepcopy(original)
    encoder.tokenizer.mask_token = token
    try:
        yield
    finally:
        encoder.tokenizer = original


def run_variant(variant: str, model: str, sentences: list[str], corpus: list[str], config: WeightingConfig, out: Path) -> dict:
    """The probe of one variant: its label, the config it ran, the SHAP fits' metrics and its seconds."""
    config = dataclasses.replace(config, **CONFIG_CHANGES.get(variant, {}))
    encoder = load_encoder(model)
    label = variant
    if variant == "normalize":
        encoder = load_encoder(model, normalize=not encoder.normalize)
        label = f"normalize_{'on' if encoder.normalize else 'off'}"
    statistics = token_statistics(
        encoder.tokenizer, corpus, units=config.units, include_self=config.include_self, dkl_repeats=config.dkl_repeats, seed=config.seed, max_length=config.max_length
    )
    absent = absent_token(encoder, encoder.tokenizer.pad_token) if variant == "pad_absent" else contextlib.nullcontext()
    refit_only = variant in CONFIG_CHANGES and set(CONFIG_CHANGES[variant]) <= FIT_ONLY_FIELDS  # the setup's weights, refitted
    started = time.perf_counter()
    with absent:
        result = weighting_probe(encoder, sentences, config, statistics=statistics, resume_dir=out / ("setup" if refit_only else label))
    metrics = {key: value for key, value in result.metrics.items() if key.startswith("weighting/shap_")}
    row = {"variant": label, "config": dataclasses.asdict(config), "metrics": metrics, "seconds": time.perf_counter() - started}
    if config.points == "type":
        row["type_points"] = type_point_breakdown(result, len(sentences))
    return row


def type_point_breakdown(result: WeightingResult, num_sentences: int) -> dict:
    """Why a type-point bootstrap interval can leave out its estimate.

    SHAP on KL refitted on the types seen in at least 1 (the estimate), 2 and 5 probe sentences, and the mean
    share of the types that a resample of the probe's bootstrap keeps (a type goes when none of its sentences is drawn).
    """
    x, y, types, sentence = result.occurrences("shap", "kl")
    type_x, type_y = regression_points(x, y, types, "type")
    _, type_index = np.unique(types, return_inverse=True)
    in_sentence = np.zeros((len(type_x), num_sentences))
    in_sentence[type_index, sentence] = 1.0
    by_sentences = []
    for least in (1, 2, 5):
        keep = in_sentence.sum(1) >= least
        fit = ols(type_x[keep], type_y[keep])
        by_sentences.append({"min_sentences": least, "types": int(keep.sum()), "r2": fit.r2, "slope": fit.slope})
    config = result.config
    draws = sentence_draws(num_sentences, config.bootstrap_resamples, config.seed)
    drawn = np.zeros(draws.shape)
    np.put_along_axis(drawn, draws, 1.0, axis=1)
    kept_share = float(((drawn @ in_sentence.T) > 0).mean())
    return {"types": len(type_x), "by_sentences": by_sentences, "kept_share": kept_share}


def type_point_line(breakdown: dict) -> str:
    """One line: the KL fit's R^2 on types seen in >= k probe sentences, and the share of types a resample keeps."""
    fits = " / ".join(f"{100 * fit['r2']:.2f} ({fit['types']})" for fit in breakdown["by_sentences"])
    least = " / ".join(str(fit["min_sentences"]) for fit in breakdown["by_sentences"])
    return f"    type points, SHAP vs KL R^2 x100 on the types in >= {least} probe sentences: {fits}; a resample keeps {100 * breakdown['kept_share']:.1f}% of the types"


def table(rows: list[dict]) -> str:
    """Markdown: one line per variant, R^2 and beta x100 [95% interval] of SHAP on KL and on -log P."""
    header = "| variant | " + " | ".join(f"SHAP vs {name} R^2 x100 | beta x100" for _, name in FITS) + " |"
    lines = [header, "|" + " --- |" * (1 + 2 * len(FITS))]
    for row in rows:
        cells = []
        for quantity, _ in FITS:
            keys, m = FIT_KEYS["shap", quantity], row["metrics"]
            cells.append(f"{100 * m[keys.r2]:.2f} [{100 * m[keys.r2_ci_low]:.2f}, {100 * m[keys.r2_ci_high]:.2f}]")
            cells.append(f"{100 * m[keys.slope]:.2f} [{100 * m[keys.slope_ci_low]:.2f}, {100 * m[keys.slope_ci_high]:.2f}]")
        lines.append(f"| {row['variant']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="all-mpnet-base-v2")
    parser.add_argument("--sentences", type=int, default=300, help="STS-B dev sentences weighed (the statistics use all 3000)")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--out", type=Path, default=Path("shap_sensitivity"))
    parser.add_argument("--toy", action="store_true", help="tiny random BERT, the 8 longest sentences, 40 evaluations: seconds, for the test")
    args = parser.parse_args(argv)
    corpus = sts_b_sentences("dev")
    config, model = SHAP_SETUP, args.model
    if args.toy:
        model, corpus = "tiny-bert", sorted(corpus, key=len)[-8:]  # long enough to exhaust the budget and split words
        config = dataclasses.replace(config, shap_max_evals=40, bootstrap_resamples=50, min_count=1, theorem=False)
    sentences = sample_sentences(corpus, None if args.toy else args.sentences, config.seed)
    print(f"{model}: SHAP of {len(sentences)} STS-B dev sentences, statistics over {len(corpus)}; one change at a time", flush=True)
    rows = []
    for variant in args.variants:
        rows.append(run_variant(variant, model, sentences, corpus, config, args.out))
        print(f"  {rows[-1]['variant']}: {rows[-1]['seconds']:.0f} s", flush=True)
        if "type_points" in rows[-1]:
            print(type_point_line(rows[-1]["type_points"]), flush=True)
        atomic_write_text(args.out / "shap_sensitivity.json", json.dumps({"model": model, "sentences": len(sentences), "rows": rows}, indent=1))
    print(table(rows))
    return rows


if __name__ == "__main__":
    main()
