"""Callbacks that run the word-weighting and geometry probes on a schedule while training.

They only schedule: the measurements are the pure functions of `ctrain.probes`. Each run
happens on global rank 0, logs `weighting/...` or `geometry/...` (docs/metrics.md) at the optimizer step it
measured (the first at step 0, the model as it started), and appends the full result to
`<run dir>/probes/<name>.jsonl`. The probes put the model in eval mode, take gradients
only with respect to their inputs and use their own RNG, so training is unchanged by them
(a test checks that the training metrics are identical with and without them).
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytorch_lightning as pl

from ctrain.callbacks.schedule import StepSchedule
from ctrain.data.sources import read_sts_b
from ctrain.probes.geometry import GeometryConfig, SelfSimilarityState, geometry_probe
from ctrain.probes.jsonio import to_strict_json
from ctrain.probes.sentences import sample_sentences, sts_b_sentences
from ctrain.probes.weighting import TokenStatistics, WeightingConfig, completeness_warning, weighting_probe


def sentences_hash(sentences: list[str]) -> str:
    """SHA-256 of the probe sentences in order (each followed by a NUL), to show every step used the same ones."""
    return hashlib.sha256("".join(f"{sentence}\0" for sentence in sentences).encode()).hexdigest()


def statistics_hash(statistics: TokenStatistics) -> str:
    """SHA-256 of the token statistics: the types and every per-type array, bit for bit, and their settings."""
    digest = hashlib.sha256("\0".join(statistics.types).encode())
    for name in ("counts", "probability", "self_information", "kl", "dkl", "kl_shuffled"):
        digest.update(np.ascontiguousarray(getattr(statistics, name), dtype=np.float64).tobytes())
    settings = (statistics.units, statistics.include_self, statistics.dkl_repeats, statistics.seed, statistics.max_length, statistics.num_sentences)
    digest.update(repr(settings).encode())
    return digest.hexdigest()


class _ScheduledProbe(pl.Callback):
    """Runs `measure` at step 0, then every `every_n_steps` (or at log-spaced steps), and at `trainer.max_steps`.

    `measure` returns metrics under their full keys (`weighting/ig_kl_r2`); a key that does not
    start with `<name>/` is logged as `<name>/<key>`. The probe's own cost is logged as `<name>/seconds`.
    """

    name = "probe"

    def __init__(self, every_n_steps: int = 100, log_spaced: bool = False, num_sentences: int = 300, split: str = "dev") -> None:
        self.schedule = StepSchedule(every_n_steps, log_spaced)
        self.num_sentences, self.split = num_sentences, split
        self.sentences: list[str] = []
        self.directory = Path(".")
        self._done: set[int] = set()
        self.measured: dict[int, dict[str, float]] = {}  # step -> logged metrics, of this process's measurements

    def _due(self, step: int, max_steps: int) -> bool:
        # the trained model (max_steps) is always measured, whatever the schedule
        return step not in self._done and self.schedule.due(step, last_step=max_steps)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # trainer.log_dir is a collective under DDP: read it on every rank, not on rank 0 alone.
        self.directory = Path(trainer.log_dir or trainer.default_root_dir) / "probes"
        if not self.sentences:
            self.sentences = self.load_sentences()

    def load_sentences(self) -> list[str]:
        """The sentences every measurement uses: the first `num_sentences` first sentences of the split."""
        return [row[0] for row in read_sts_b(self.split)][: self.num_sentences]

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._maybe_measure(trainer, pl_module)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx: int) -> None:
        self._maybe_measure(trainer, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """The trained model, when no schedule reached it: a run limited by max_epochs (max_steps -1) or stopped early."""
        self._maybe_measure(trainer, pl_module, last=True)

    def _maybe_measure(self, trainer: pl.Trainer, pl_module: pl.LightningModule, last: bool = False) -> None:
        step = trainer.global_step
        due = step not in self._done if last else self._due(step, trainer.max_steps)
        if not due or not trainer.is_global_zero:
            return
        self._done.add(step)
        started = time.perf_counter()
        metrics, record = self.measure(pl_module)
        prefix = f"{self.name}/"
        metrics = {key if key.startswith(prefix) else prefix + key: value for key, value in metrics.items()}
        metrics[prefix + "seconds"] = time.perf_counter() - started  # the probe's own cost, to budget it
        self.measured[step] = metrics
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)
        self.directory.mkdir(parents=True, exist_ok=True)
        with (self.directory / f"{self.name}.jsonl").open("a") as handle:
            handle.write(to_strict_json({"step": step, **record}) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def measure(self, pl_module: pl.LightningModule) -> tuple[dict[str, float], dict]:
        raise NotImplementedError

    def state_dict(self) -> dict:
        return {"done": sorted(self._done)}

    def load_state_dict(self, state_dict: dict) -> None:
        self._done = set(state_dict["done"])


TRAINING_CORPUS = "training"  # WordWeightingProbe(split=...): the run's own training texts, not an STS-B split


class WordWeightingProbe(_ScheduledProbe):
    """IG (and optionally SHAP) weights regressed on KL / dKL / -log P, plus the Theorem-1 norm fits.

    `config` is the whole `WeightingConfig` (any field can be set from YAML; unset fields keep its
    defaults). The probe sentences are `num_sentences` sentences of the STS-B `split` (both columns)
    drawn at random with `config.seed`; the token statistics come from the whole split and are
    computed once. `split: training` takes both from the run's own training texts instead (every text
    of every training example, as the data module read them: all of them under several processes too,
    as each process reads them all and only the sampler shards them), so that a run on `--data.train` or
    `data.max_examples` measures what it trained on. Each
    `probes/weighting.jsonl` record carries `sentences_sha256` and `statistics_sha256`, so that every step
    can be shown to have measured the same inputs.
    """

    name = "weighting"

    def __init__(
        self,
        every_n_steps: int = 100,
        log_spaced: bool = False,
        num_sentences: int = 300,
        split: str = "dev",
        config: WeightingConfig | None = None,
    ) -> None:
        super().__init__(every_n_steps, log_spaced, num_sentences, split)
        self.config = config or WeightingConfig()
        self.statistics: TokenStatistics | None = None
        self.statistics_sha256 = ""  # hashed once, when the statistics are computed: they never change
        self.corpus: list[str] = []

    def _load_corpus(self, trainer: pl.Trainer | None = None) -> list[str]:
        """The split's sentences (both columns), or with `split: training` every text of the run's training examples."""
        if self.split != TRAINING_CORPUS:
            return sts_b_sentences(self.split)
        examples = getattr(getattr(trainer, "datamodule", None), "examples", None)
        if not examples:
            raise ValueError("WordWeightingProbe(split='training') needs a run whose data module has read its training examples")
        return [text for example in examples for text in example]

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if not self.corpus:
            self.corpus = self._load_corpus(trainer)
        super().setup(trainer, pl_module, stage)

    def load_sentences(self) -> list[str]:
        if not self.corpus:
            self.corpus = self._load_corpus()
        return sample_sentences(self.corpus, self.num_sentences, self.config.seed)

    def measure(self, pl_module: pl.LightningModule) -> tuple[dict[str, float], dict]:
        if self.statistics is None:
            self.statistics = self.config.statistics(pl_module.encoder.tokenizer, self.corpus)
            self.statistics_sha256 = statistics_hash(self.statistics)
        result = weighting_probe(pl_module.encoder, self.sentences, self.config, statistics=self.statistics)
        if warning := completeness_warning(result.metrics, self.config):
            print(warning, flush=True)
        record = {
            "config": asdict(self.config),
            "sentences_sha256": sentences_hash(self.sentences),
            "statistics_sha256": self.statistics_sha256,
            "metrics": result.metrics,
        }
        return result.metrics, record


class GeometryProbe(_ScheduledProbe):
    """Per-layer isotropy, self- and intra-sentence similarity, norms, rogue dimensions, alignment/uniformity.

    `config` holds every setting of the measurement (YAML: `init_args: {config: {anisotropy_resamples: 5}}`);
    the probe corpus is its `split` and `num_sentences`. The first measurement (step 0) is the
    reference for the per-type self-similarity change.
    """

    name = "geometry"

    def __init__(self, every_n_steps: int = 100, log_spaced: bool = False, config: GeometryConfig | None = None) -> None:
        self.config = config or GeometryConfig()
        super().__init__(every_n_steps, log_spaced, self.config.num_sentences, self.config.split)
        self.reference: SelfSimilarityState | None = None

    def measure(self, pl_module: pl.LightningModule) -> tuple[dict[str, float], dict]:
        result = geometry_probe(pl_module.encoder, self.sentences, self.config, self.reference)
        if self.reference is None:
            self.reference = result.reference_state
        record = {"config": result.config, "metrics": result.metrics, "type_changes": result.type_changes}
        return result.metrics, record

    def state_dict(self) -> dict:
        reference = None if self.reference is None else self.reference._asdict()
        return {**super().state_dict(), "reference": reference}

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        if state_dict.get("reference") is not None:
            self.reference = SelfSimilarityState(**state_dict["reference"])
