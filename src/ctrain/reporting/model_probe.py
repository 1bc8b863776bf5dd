"""The word-weighting and geometry measurements of any model, without training (`ctrain probe MODEL`).

MODEL is a hub id, a local directory, a ctrain run directory (its model_best/, else
model_final/), an offline short name (all-MiniLM-L6-v2, all-mpnet-base-v2) or tiny-bert.
Results go to `--out` as JSON plus figures, and the headline numbers to the terminal.
`--setup NAME` starts from a paper's measurement (`SETUPS`); any flag given after it wins.
"""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from scipy.optimize import nnls

from ctrain.data.sources import read_sts_b
from ctrain.fileio import atomic_write_text
from ctrain.models.encoder import load_encoder
from ctrain.probes.sentences import Columns, sample_sentences, sts_b_sentences
from ctrain.probes.sts import encoder_sts
from ctrain.probes.weighting import (
    FIT_KEYS,
    KURITA2023_WEIGHTING,
    THEOREM_KEYS,
    BatchProgress,
    WeightingConfig,
    completeness_warning,
    weighting_probe,
)
from ctrain.probes.weighting.keys import IG_COMPLETENESS_ERROR_MAX, IG_COMPLETENESS_ERROR_MEAN, IG_EVALUATIONS_MEAN

Measurement = Literal["sts", "weighting", "geometry"]
Setup = Literal["kurita2023", "isotropy2023"]

SETUPS: dict[str, dict] = {
    # Kurita et al. 2023: all 3000 STS-B dev sentences (both columns) weighed, KL and -log P over the same sentences.
    "kurita2023": {
        "measure": ["sts", "weighting"],
        "split": "dev",
        "columns": "both",
        "num_sentences": None,
        **{f"weighting.{f.name}": getattr(KURITA2023_WEIGHTING, f.name) for f in fields(WeightingConfig)},
    },
    # The isotropy / learning-dynamics study: its geometry convention on all first sentences of STS-B test.
    "isotropy2023": {"measure": ["sts", "geometry"], "conventions": ["isotropy2023"], "geometry_sentences": None},
}
"""Named setups: the probe() arguments each one sets (the flags given on the command line still win)."""


def probe_device(device: str) -> torch.device:
    """`auto` -> cuda when torch sees a GPU, else cpu; a requested GPU that is not there is a one-line error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    chosen = torch.device(device)
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: torch sees no CUDA GPU on this machine; use --device cpu (or auto)")
    return chosen


def resolve_model(model: str) -> str:
    """A ctrain run directory stands for its best (else final) exported model."""
    path = Path(model)
    for exported in ("model_best", "model_final"):
        if (path / exported / "modules.json").exists():
            return str(path / exported)
    return model


def output_directory(model: str, setup: str | None) -> Path:
    """`probe_results/<model as given, '/' -> '-'>[-<setup>]`: one folder per model path, so run directories never collide."""
    name = re.sub(r"[^\w.+-]+", "-", model.strip("/").removeprefix("./")).strip("-") or "model"
    return Path("probe_results") / (f"{name}-{setup}" if setup else name)


def format_seconds(seconds: float) -> str:
    """1h02m, 3m05s or 42s."""
    seconds = round(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def projected_seconds(timed: list[tuple[int, float]], lengths: Sequence[int]) -> float:
    """Seconds to weigh batches of these token `lengths`, from (length, seconds) of batches timed so far.

    A batch costs about a*L + b*L^2 (IG's passes grow with L, SHAP's evaluations times their length
    with L^2), fitted with a, b >= 0; with fewer than two distinct lengths timed, cost per token.
    """
    observed = np.array(timed, dtype=float).reshape(-1, 2)
    remaining = np.asarray(lengths, dtype=float)
    if len(np.unique(observed[:, 0])) < 2:
        return float(observed[:, 1].sum() / observed[:, 0].sum() * remaining.sum())
    coefficients, _ = nnls(np.stack([observed[:, 0], observed[:, 0] ** 2], 1), observed[:, 1])
    return float(coefficients[0] * remaining.sum() + coefficients[1] * (remaining**2).sum())


class ProgressLine:
    """Prints `label: done/total sentences, elapsed, about T left` at most every `interval` seconds.

    The probe weighs short sentences first, so a rate per sentence underestimates what is left
    (by 3x on the full kurita2023 setup); the time left is projected from the batches' token lengths
    (`projected_seconds`). The first weighed batch carries one-off costs (shap's JIT compilation,
    allocator warm-up) and reused batches none, so neither is timed.
    """

    def __init__(self, label: str, interval: float = 10.0, clock: Callable[[], float] = time.perf_counter) -> None:
        self.label, self.interval, self.clock = label, interval, clock
        self.started = self.last = self.previous = clock()
        self.first: tuple[int, float] | None = None  # sentences and seconds of the first batch
        self.done = 0
        self.timed: list[tuple[int, float]] = []  # (token length, seconds) of each weighed batch after the first
        self.warmed_up = False

    def finish(self) -> float:
        """Seconds since the start; the projection then covers the whole run."""
        self.last = self.clock()
        return self.last - self.started

    def seconds_for(self, total: int) -> float:
        """Projected seconds to weigh `total` sentences at the rate so far (for a random sample of them)."""
        done, elapsed = self.done, self.last - self.started
        first_done, first_seconds = self.first or (done, elapsed)
        if done > first_done:
            return first_seconds + (elapsed - first_seconds) / (done - first_done) * (total - first_done)
        return elapsed / done * total

    def __call__(self, batch: BatchProgress) -> None:
        now = self.clock()
        seconds, self.previous, self.done = now - self.previous, now, batch.done
        if self.first is None:
            self.first = (batch.done, now - self.started)
        if not batch.reused:
            if self.warmed_up:
                self.timed.append((batch.lengths[batch.batch], seconds))
            self.warmed_up = True
        if now - self.last < self.interval and batch.done < batch.total:
            return
        self.last = now
        elapsed = now - self.started
        rest = batch.lengths[batch.batch + 1 :]
        left = projected_seconds(self.timed, rest) if self.timed else self.seconds_for(batch.total) - elapsed
        print(f"  {self.label}: {batch.done}/{batch.total} sentences, {format_seconds(elapsed)} elapsed, "
              f"about {format_seconds(max(left, 0.0))} left", flush=True)  # fmt: skip


def probe(
    model: str,
    setup: Setup | None = None,
    measure: list[Measurement] = ["sts", "weighting"],  # noqa: B006 (jsonargparse reads the default)
    out: str | None = None,
    split: str = "dev",
    columns: Columns = "both",
    num_sentences: int | None = 200,
    weighting: WeightingConfig = WeightingConfig(),  # noqa: B008 (read by jsonargparse, never mutated)
    conventions: list[str] = ["default", "isotropy2023"],  # noqa: B006
    geometry_sentences: int | None = 1379,
    max_length: int = 128,
    seed: int = 0,
    device: str = "auto",
) -> None:
    """Probe MODEL.

    Args:
        model: hub id, local path, run directory, all-MiniLM-L6-v2, all-mpnet-base-v2 or tiny-bert.
        setup: a paper's measurement: kurita2023 (word weighting) or isotropy2023 (geometry); later flags override it.
        measure: what to compute: sts (STS-B dev/test Spearman x100), weighting (spec 1-5), geometry (spec 6).
        out: output directory (default: probe_results/<model>[-<setup>]).
        split: STS-B split of the weighting corpus; the token statistics use all its sentences.
        columns: first sentence of each pair, or both.
        num_sentences: weighting sentences drawn at random (seeded) from the corpus; null for all of them.
        weighting: every setting of the word-weighting probe (docs/metrics.md), e.g. --weighting.ig_mode sketch.
        conventions: geometry conventions to compute (default, isotropy2023).
        geometry_sentences: geometry probe corpus size (STS-B test first sentences; null for all).
        max_length: tokens per sentence (geometry; weighting has --weighting.max_length).
        seed: seed of the geometry probe (weighting has --weighting.seed, which also draws the sentences).
        device: where the model runs: auto (the GPU when torch sees one, else the CPU), cpu, cuda or cuda:N.
    """
    for option, value in (("--num_sentences", num_sentences), ("--geometry_sentences", geometry_sentences)):
        if value is not None and value < 1:
            raise ValueError(f"{option} {value}: give at least 1 sentence, or null for all of them")
    source = resolve_model(model)
    on = probe_device(device)
    encoder = load_encoder(source).to(on)
    directory = Path(out) if out else output_directory(model, setup)
    directory.mkdir(parents=True, exist_ok=True)
    print(f"ctrain probe: {model} ({encoder.backbone.config.model_type}, {encoder.num_layers} layers, on {on}, "
          f"pooling {encoder.pooler.mode}, normalize {encoder.normalize}) -> {directory}"
          + (f", setup {setup}" if setup else ""))  # fmt: skip
    if "sts" in measure:
        for sts_split in ("dev", "test"):
            spearman, pairs = encoder_sts(encoder, read_sts_b(sts_split))
            print(f"STS-B {sts_split}: Spearman x100 {spearman:.2f} over {pairs} pairs")
    if "weighting" in measure:
        _weighting(encoder, model, directory, split, columns, num_sentences, weighting)
    if "geometry" in measure:
        _geometry(encoder, model, directory, conventions, geometry_sentences, max_length, seed)


def _weighting(encoder, model: str, directory: Path, split: str, columns: Columns, num_sentences: int | None, config: WeightingConfig) -> None:
    from ctrain.reporting.weighting_plots import (
        plot_sentence_weights,
        plot_weight_vs_information,
    )

    corpus = sts_b_sentences(split, columns)
    sentences = sample_sentences(corpus, num_sentences, config.seed)
    c = config
    statistics = c.statistics(encoder.tokenizer, corpus)
    kl_kind = "counts" if c.include_self else "leaves out"
    print(f"\nword weighting: {len(sentences)} of {len(corpus)} STS-B {split} sentences ({columns} columns); "
          f"KL, dKL and -log P over all {len(corpus)}; KL {kl_kind} the word's own occurrence (include_self={c.include_self})")
    print(f"  IG {c.ig_mode}" + (f" (sketch_size {c.sketch_size}, {c.sketch_kind})" if c.ig_mode == "sketch" else "")
          + (f", adaptive quadrature (tol {c.completeness_tol:g}, at most {c.max_evaluations} points)" if c.quadrature == "adaptive" else f", {c.steps} {c.quadrature} steps")
          + (f"; SHAP {c.shap_mode}" if "shap" in c.methods else "")
          + (f", batch {_shap_batch(encoder, c)}" if "shap" in c.methods and c.shap_mode.startswith("partition") else "")
          + f"; {c.units}, min_count {c.min_count}")  # fmt: skip
    progress = ProgressLine("weighting")
    batches = directory / "weighting_batches"  # each weighed batch, until weighting.json is written: a rerun resumes
    if kept := len(list(batches.glob("batch_*.pt"))):
        print(f"  {kept} batches kept in {batches} by an interrupted run: reused if they came from this same probe")
    result = weighting_probe(encoder, sentences, config, statistics, progress, resume_dir=batches)
    seconds = progress.finish()
    atomic_write_text(directory / "weighting.json", result.to_json())
    shutil.rmtree(batches)
    ci = f", [{100 * c.confidence:g}% bootstrap interval over {c.bootstrap_resamples} resamples of the sentences]" if c.bootstrap_resamples else ""
    print(f"\n  (R^2 x100, beta x100, n{ci})  {seconds / len(sentences):.2f} s/sentence, {format_seconds(seconds)} in all")
    for method in c.methods:
        for quantity, label in (("kl", "KL(w)"), ("selfinfo", "-log P(w)"), ("dkl", "dKL(w)")):
            keys = FIT_KEYS[method, quantity]
            print(f"  {method.upper():4s} vs {label:10s} R^2 {100 * result.metrics[keys.r2]:7.2f}"
                  f"{_interval(result.metrics, keys.r2_ci_low, keys.r2_ci_high)}   beta {100 * result.metrics[keys.slope]:8.2f}"
                  f"{_interval(result.metrics, keys.slope_ci_low, keys.slope_ci_high)}   n {int(result.metrics[keys.n])}")  # fmt: skip
        plot_weight_vs_information(result, directory / f"{method}_vs_kl.png", method, "kl", model)
        plot_sentence_weights(result, directory / f"{method}_sentences.png", 4, method, model)
    if IG_COMPLETENESS_ERROR_MEAN in result.metrics:
        print(f"  IG completeness error: mean {result.metrics[IG_COMPLETENESS_ERROR_MEAN]:.2e}, "
              f"max {result.metrics[IG_COMPLETENESS_ERROR_MAX]:.2e}; {result.metrics[IG_EVALUATIONS_MEAN]:.1f} path points a sentence")  # fmt: skip
        if warning := completeness_warning(result.metrics, c):
            print(f"  {warning}")
    for (target, quantity), keys in THEOREM_KEYS.items():
        if keys.r2 in result.metrics and quantity == "kl":
            print(f"  Theorem 1, 0.5||w||^2 vs KL ({target}): R^2 {result.metrics[keys.r2]:.4f}, "
                  f"slope {result.metrics[keys.slope]:.4f}, intercept {result.metrics[keys.intercept]:.4f}, "
                  f"Spearman {result.metrics[keys.spearman]:.4f}")  # fmt: skip
    if len(sentences) < len(corpus):
        print(f"  projected time of all {len(corpus)} sentences on this machine: "
              f"about {format_seconds(progress.seconds_for(len(corpus)))} (from these {len(sentences)} random ones)")


def _shap_batch(encoder, config: WeightingConfig) -> str:
    """The PartitionSHAP batch the probe runs, saying where it is the library's default."""
    if config.shap_batch_size is not None:
        return str(config.shap_batch_size)
    from ctrain.probes.weighting.partition import library_batch_size

    return f"{library_batch_size(encoder.tokenizer)} (the shap library's default)"


def _interval(metrics: dict[str, float], low: str | None, high: str | None) -> str:
    """` [low, high]` (x100) where the metrics hold the interval, else nothing."""
    if low not in metrics or high not in metrics:
        return ""
    return f" [{100 * metrics[low]:.2f}, {100 * metrics[high]:.2f}]"


def _geometry(encoder, model, directory, conventions, geometry_sentences, max_length, seed):
    from ctrain.probes.geometry import (
        GeometryConfig,
        format_layer_table,
        geometry_probe,
    )
    from ctrain.reporting.geometry_plots import plot_metrics_by_layer

    for convention in conventions:
        config = GeometryConfig(convention=convention, num_sentences=geometry_sentences, max_length=max_length, seed=seed)
        result = geometry_probe(encoder, config=config)
        atomic_write_text(directory / f"geometry_{convention}.json", result.to_json())
        plot_metrics_by_layer(result, directory / f"geometry_{convention}.png", model)
        print(f"\ngeometry, convention {convention}, {result.num_sentences} STS-B {config.split} sentences:")
        print(format_layer_table(result))
