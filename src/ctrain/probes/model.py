"""The word-weighting and geometry measurements of any model, without training: the engine of `ctrain probe MODEL`.

MODEL is a hub id, a local directory, a ctrain run directory (its model_best/, else
model_final/), an offline short name (all-MiniLM-L6-v2, all-mpnet-base-v2) or tiny-bert.
`probe_model` writes the results to its output folder as JSON and returns them; what a long run is doing
(the set-up, progress and the time left) goes to its `say` callable, and the terminal tables and figures
are drawn from the returned results by cli/probe.py and reporting/probe_figures.py.
`SETUPS` name a paper's measurement; any argument given beside it wins.
"""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from scipy.optimize import nnls

from ctrain.data.sources import read_sts_b
from ctrain.fileio import atomic_write_text
from ctrain.models.encoder import load_encoder
from ctrain.probes.sentences import Columns, sample_sentences, sts_b_sentences
from ctrain.probes.sts import StsEvaluator
from ctrain.probes.geometry import GeometryConfig, GeometryResult, geometry_probe
from ctrain.probes.weighting import (
    KURITA2023_WEIGHTING,
    BatchProgress,
    WeightingConfig,
    WeightingResult,
    weighting_probe,
)

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
"""Named setups: the probe_model() arguments each one sets (the flags given on the command line still win)."""


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
    """Says `label: done/total sentences, elapsed, about T left` (to `say`) at most every `interval` seconds.

    The probe weighs short sentences first, so a rate per sentence underestimates what is left
    (by 3x on the full kurita2023 setup); the time left is projected from the batches' token lengths
    (`projected_seconds`). The first weighed batch carries one-off costs (shap's JIT compilation,
    allocator warm-up) and reused batches none, so neither is timed, and no time left is said before a
    batch has been timed (a resumed run's reused batches once made it promise seconds for an hour's work).
    """

    def __init__(
        self, label: str, interval: float = 10.0, clock: Callable[[], float] = time.perf_counter, say: Callable[[str], None] = print
    ) -> None:
        self.label, self.interval, self.clock, self.say = label, interval, clock, say
        self.started = self.last = self.previous = clock()
        self.done = 0  # sentences weighed or reused
        self.weighed = 0  # sentences weighed by this process (not reused from an interrupted run's batches)
        self.timed: list[tuple[int, float]] = []  # (token length, seconds) of each weighed batch after the first
        self.sample_lengths: tuple[int, ...] = ()  # every batch's padded length, as the probe reported it
        self.sample_size = 0

    def finish(self) -> float:
        """Seconds since the start; the projection then covers the whole run."""
        self.last = self.clock()
        return self.last - self.started

    def seconds_for(self, total: int) -> float:
        """Projected seconds to weigh `total` sentences of which the probe's are a random sample: the cost fitted to
        the timed batches over every batch of the sample, scaled up. (The rate of the batches after the first came
        from the sample's longest sentences and overstated it.) Before a batch is timed, this run's rate."""
        if self.timed:
            return projected_seconds(self.timed, self.sample_lengths) * total / self.sample_size
        return (self.last - self.started) / max(self.weighed, 1) * total

    def __call__(self, batch: BatchProgress) -> None:
        now = self.clock()
        seconds, self.previous, size, self.done = now - self.previous, now, batch.done - self.done, batch.done
        self.sample_lengths, self.sample_size = batch.lengths, batch.total
        if not batch.reused:
            if self.weighed:
                self.timed.append((batch.lengths[batch.batch], seconds))
            self.weighed += size
        if now - self.last < self.interval and batch.done < batch.total:
            return
        self.last = now
        elapsed = now - self.started
        rest = batch.lengths[batch.batch + 1 :]
        left = "time left not known yet"
        if self.timed:
            left = f"about {format_seconds(max(projected_seconds(self.timed, rest), 0.0))} left"
        self.say(f"  {self.label}: {batch.done}/{batch.total} sentences, {format_seconds(elapsed)} elapsed, {left}")


def _quiet(line: str) -> None:
    """`say` for callers that only want the returned results."""


@dataclass
class WeightingRun:
    """The word-weighting probe of one model as `ctrain probe` ran it: the result, its corpus and its timing."""

    result: WeightingResult
    num_sentences: int  # sentences in the probe: weighed here or read back
    reused_sentences: int  # of those, weighed by an interrupted run and read back from its kept batches
    corpus_size: int  # sentences whose token statistics (KL, dKL, -log P) were counted
    seconds: float
    projected_corpus_seconds: float  # all corpus_size sentences, from this run's timed batches (`ProgressLine.seconds_for`)


@dataclass
class ModelProbe:
    """What `probe_model` measured on one model; each measurement not asked for stays empty."""

    model: str
    directory: Path
    description: str  # the model's architecture, layers, device, pooling and normalisation, in words
    sts: dict[str, tuple[float, int]] = field(default_factory=dict)  # STS-B split -> (Spearman x100, pairs)
    weighting: WeightingRun | None = None
    geometry: dict[str, GeometryResult] = field(default_factory=dict)  # convention -> result


def probe_model(
    model: str,
    *,
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
    say: Callable[[str], None] = _quiet,
) -> ModelProbe:
    """Probe MODEL.

    Args:
        model: hub id, local path, run directory, all-MiniLM-L6-v2, all-mpnet-base-v2 or tiny-bert.
        setup: a paper's measurement: kurita2023 (word weighting) or isotropy2023 (geometry); later flags override it.
        measure: what to compute: sts (STS-B dev/test Spearman x100), weighting and geometry (docs/metrics.md).
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
        say: where the lines on a long run's set-up and progress go (`ctrain probe` prints them).
    """
    for option, value in (("--num_sentences", num_sentences), ("--geometry_sentences", geometry_sentences)):
        if value is not None and value < 1:
            raise ValueError(f"{option} {value}: give at least 1 sentence, or null for all of them")
    on = probe_device(device)
    encoder = load_encoder(resolve_model(model)).to(on)
    directory = Path(out) if out else output_directory(model, setup)
    directory.mkdir(parents=True, exist_ok=True)
    description = (f"{encoder.backbone.config.model_type}, {encoder.num_layers} layers, on {on}, "
                   f"pooling {encoder.pooler.mode}, normalize {encoder.normalize}")  # fmt: skip
    say(f"ctrain probe: {model} ({description}) -> {directory}" + (f", setup {setup}" if setup else ""))
    probed = ModelProbe(model, directory, description)
    if "sts" in measure:
        probed.sts = {sts_split: StsEvaluator(read_sts_b(sts_split))(encoder) for sts_split in ("dev", "test")}
    if "weighting" in measure:
        probed.weighting = _weighting(encoder, directory, split, columns, num_sentences, weighting, say)
    if "geometry" in measure:
        for convention in conventions:
            config = GeometryConfig(convention=convention, num_sentences=geometry_sentences, max_length=max_length, seed=seed)
            probed.geometry[convention] = result = geometry_probe(encoder, config=config)
            atomic_write_text(directory / f"geometry_{convention}.json", result.to_json())
    return probed


def _methods_line(encoder, c: WeightingConfig) -> str:
    """How each method of the probe runs: IG's directions, path rule and precision; SHAP's mode and batch."""
    parts = []
    if "ig" in c.methods:
        sketch = f" (sketch_size {c.sketch_size}, {c.sketch_kind})" if c.ig_mode == "sketch" else ""
        path = (f"adaptive quadrature (tol {c.completeness_tol:g}, at most {c.max_evaluations} points)"
                if c.quadrature == "adaptive" else f"{c.steps} {c.quadrature} steps")  # fmt: skip
        parts.append(f"IG {c.ig_mode}{sketch}, {path}, {c.ig_precision}")
    if "shap" in c.methods:
        batch = f", batch {_shap_batch(encoder, c)}" if c.shap_mode.startswith("partition") else ""
        parts.append(f"SHAP {c.shap_mode}{batch}")
    return "; ".join(parts)


def _weighting(
    encoder, directory: Path, split: str, columns: Columns, num_sentences: int | None, config: WeightingConfig, say: Callable[[str], None]
) -> WeightingRun:
    corpus = sts_b_sentences(split, columns)
    sentences = sample_sentences(corpus, num_sentences, config.seed)
    c = config
    statistics = c.statistics(encoder.tokenizer, corpus)
    kl_kind = "counts" if c.include_self else "leaves out"
    say(f"\nword weighting: {len(sentences)} of {len(corpus)} STS-B {split} sentences ({columns} columns); "
        f"KL, dKL and -log P over all {len(corpus)}; KL {kl_kind} the word's own occurrence (include_self={c.include_self})")
    say(f"  {_methods_line(encoder, c)}; {c.units}, min_count {c.min_count}")
    progress = ProgressLine("weighting", say=say)
    batches = directory / "weighting_batches"  # each weighed batch, until weighting.json is written: a rerun resumes
    if kept := len(list(batches.glob("batch_*.pt"))):
        say(f"  {kept} batches kept in {batches} by an interrupted run: reused if they came from this same probe")
    result = weighting_probe(encoder, sentences, config, statistics=statistics, progress=progress, resume_dir=batches)
    seconds = progress.finish()
    atomic_write_text(directory / "weighting.json", result.to_json())
    shutil.rmtree(batches)
    reused = len(sentences) - progress.weighed
    return WeightingRun(result, len(sentences), reused, len(corpus), seconds, progress.seconds_for(len(corpus)))


def _shap_batch(encoder, config: WeightingConfig) -> str:
    """The PartitionSHAP batch the probe runs, saying where it is the library's default."""
    if config.shap_batch_size is not None:
        return str(config.shap_batch_size)
    from ctrain.probes.weighting.partition import library_batch_size

    return f"{library_batch_size(encoder.tokenizer)} (the shap library's default)"
