"""The word-weighting probe: attribution weights regressed on token information.

``weighting_probe`` is what the training callback and ``ctrain probe`` call. It
weighs every unit of the probe sentences by IG (and optionally SHAP), regresses the
normalised weights ``c'`` on ``KL``, ``dKL`` and ``I`` of a statistics corpus (spec
sections 1-4), and measures Theorem 1 (section 5). Pass ``statistics`` (from
``token_statistics``) to reuse them across calls: they depend on the corpus and the
tokenizer only, not on the weights being trained. ``WeightingConfig`` holds every
setting and its default; the callback, ``ctrain probe`` and the presets take it whole.

Every logged key is written out in ``FIT_KEYS``, ``THEOREM_KEYS`` and the constants
below it, so a grep for a column of ``metrics.csv`` lands here.

Decisions where the spec is open:

- The same ``min_count`` filter applies to the KL, dKL and I regressions and to the
  theorem fits, so that all of them use the same points and their R^2 compare; set
  ``min_count=1`` to fit dKL on every type.
- Probe units missing from the statistics corpus (possible with a separate corpus)
  have count 0 and NaN information, so they never enter a fit.
- Sentences are processed in order of token length (less padding); the batch that
  starts at sorted position ``s`` uses seed ``seed + s`` for its sketch directions and
  SHAP sentence ``s + b`` uses ``seed + s + b``, so results do not depend on the
  batch size except through float reassociation.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from ctrain.fileio import atomic_path, atomic_write_text
from ctrain.models.encoder import SentenceEncoder
from ctrain.probes.attribution import (
    Attribution,
    COMPLETENESS_CHECKS,
    QUADRATURES,
    SHAP_MODES,
    Completeness,
    Mode,
    Quadrature,
    ShapMode,
    SketchKind,
    attribution_mode,
    integrated_gradients,
    shap_weights,
    unit_weights,
)
from ctrain.probes.information import (
    UNITS,
    Segmentation,
    TokenStatistics,
    Units,
    segment,
    token_statistics,
)
from ctrain.probes.jsonio import to_strict_json
from ctrain.probes.regression import POINTS, FitKeys, Interval, Points, bootstrap_fit, ols, regression_points
from ctrain.probes.theorem import (
    TypeAverage,
    WordVector,
    half_squared_norm,
    type_means,
    theorem_regressions,
    vectors_per_unit,
)

Method = Literal["ig", "shap"]
METHODS: tuple[str, ...] = ("ig", "shap")
Quantity = Literal["kl", "dkl", "selfinfo"]
QUANTITIES: tuple[str, ...] = ("kl", "dkl", "selfinfo")

FIT_KEYS: dict[tuple[str, str], FitKeys] = {
    ("ig", "kl"): FitKeys(
        "weighting/ig_kl_r2", "weighting/ig_kl_beta", "weighting/ig_kl_beta_se",
        "weighting/ig_kl_intercept", "weighting/ig_kl_intercept_se", "weighting/ig_kl_n",
        r2_ci_low="weighting/ig_kl_r2_ci_low", r2_ci_high="weighting/ig_kl_r2_ci_high",
        slope_ci_low="weighting/ig_kl_beta_ci_low", slope_ci_high="weighting/ig_kl_beta_ci_high",
    ),
    ("ig", "dkl"): FitKeys(
        "weighting/ig_dkl_r2", "weighting/ig_dkl_beta", "weighting/ig_dkl_beta_se",
        "weighting/ig_dkl_intercept", "weighting/ig_dkl_intercept_se", "weighting/ig_dkl_n",
        r2_ci_low="weighting/ig_dkl_r2_ci_low", r2_ci_high="weighting/ig_dkl_r2_ci_high",
        slope_ci_low="weighting/ig_dkl_beta_ci_low", slope_ci_high="weighting/ig_dkl_beta_ci_high",
    ),
    ("ig", "selfinfo"): FitKeys(
        "weighting/ig_selfinfo_r2", "weighting/ig_selfinfo_beta", "weighting/ig_selfinfo_beta_se",
        "weighting/ig_selfinfo_intercept", "weighting/ig_selfinfo_intercept_se", "weighting/ig_selfinfo_n",
        r2_ci_low="weighting/ig_selfinfo_r2_ci_low", r2_ci_high="weighting/ig_selfinfo_r2_ci_high",
        slope_ci_low="weighting/ig_selfinfo_beta_ci_low", slope_ci_high="weighting/ig_selfinfo_beta_ci_high",
    ),
    ("shap", "kl"): FitKeys(
        "weighting/shap_kl_r2", "weighting/shap_kl_beta", "weighting/shap_kl_beta_se",
        "weighting/shap_kl_intercept", "weighting/shap_kl_intercept_se", "weighting/shap_kl_n",
        r2_ci_low="weighting/shap_kl_r2_ci_low", r2_ci_high="weighting/shap_kl_r2_ci_high",
        slope_ci_low="weighting/shap_kl_beta_ci_low", slope_ci_high="weighting/shap_kl_beta_ci_high",
    ),
    ("shap", "dkl"): FitKeys(
        "weighting/shap_dkl_r2", "weighting/shap_dkl_beta", "weighting/shap_dkl_beta_se",
        "weighting/shap_dkl_intercept", "weighting/shap_dkl_intercept_se", "weighting/shap_dkl_n",
        r2_ci_low="weighting/shap_dkl_r2_ci_low", r2_ci_high="weighting/shap_dkl_r2_ci_high",
        slope_ci_low="weighting/shap_dkl_beta_ci_low", slope_ci_high="weighting/shap_dkl_beta_ci_high",
    ),
    ("shap", "selfinfo"): FitKeys(
        "weighting/shap_selfinfo_r2", "weighting/shap_selfinfo_beta", "weighting/shap_selfinfo_beta_se",
        "weighting/shap_selfinfo_intercept", "weighting/shap_selfinfo_intercept_se", "weighting/shap_selfinfo_n",
        r2_ci_low="weighting/shap_selfinfo_r2_ci_low", r2_ci_high="weighting/shap_selfinfo_r2_ci_high",
        slope_ci_low="weighting/shap_selfinfo_beta_ci_low", slope_ci_high="weighting/shap_selfinfo_beta_ci_high",
    ),
}  # fmt: skip
"""(method, quantity) -> keys of the OLS of ``c'`` on that quantity (spec section 4), with the bootstrap interval
of R^2 and beta over probe sentences (``*_ci_low`` / ``*_ci_high``; logged when ``bootstrap_resamples > 0``)."""

THEOREM_KEYS: dict[tuple[str, str], FitKeys] = {
    ("input", "kl"): FitKeys(
        "weighting/theorem_input_r2", "weighting/theorem_input_slope", "weighting/theorem_input_slope_se",
        "weighting/theorem_input_intercept", "weighting/theorem_input_intercept_se", "weighting/theorem_input_n", "weighting/theorem_input_spearman",
    ),
    ("input", "dkl"): FitKeys(
        "weighting/theorem_input_dkl_r2", "weighting/theorem_input_dkl_slope", "weighting/theorem_input_dkl_slope_se",
        "weighting/theorem_input_dkl_intercept", "weighting/theorem_input_dkl_intercept_se", "weighting/theorem_input_dkl_n", "weighting/theorem_input_dkl_spearman",
    ),
    ("input", "selfinfo"): FitKeys(
        "weighting/theorem_input_selfinfo_r2", "weighting/theorem_input_selfinfo_slope", "weighting/theorem_input_selfinfo_slope_se",
        "weighting/theorem_input_selfinfo_intercept", "weighting/theorem_input_selfinfo_intercept_se", "weighting/theorem_input_selfinfo_n", "weighting/theorem_input_selfinfo_spearman",
    ),
    ("last", "kl"): FitKeys(
        "weighting/theorem_last_r2", "weighting/theorem_last_slope", "weighting/theorem_last_slope_se",
        "weighting/theorem_last_intercept", "weighting/theorem_last_intercept_se", "weighting/theorem_last_n", "weighting/theorem_last_spearman",
    ),
    ("last", "dkl"): FitKeys(
        "weighting/theorem_last_dkl_r2", "weighting/theorem_last_dkl_slope", "weighting/theorem_last_dkl_slope_se",
        "weighting/theorem_last_dkl_intercept", "weighting/theorem_last_dkl_intercept_se", "weighting/theorem_last_dkl_n", "weighting/theorem_last_dkl_spearman",
    ),
    ("last", "selfinfo"): FitKeys(
        "weighting/theorem_last_selfinfo_r2", "weighting/theorem_last_selfinfo_slope", "weighting/theorem_last_selfinfo_slope_se",
        "weighting/theorem_last_selfinfo_intercept", "weighting/theorem_last_selfinfo_intercept_se", "weighting/theorem_last_selfinfo_n", "weighting/theorem_last_selfinfo_spearman",
    ),
    ("last_type", "kl"): FitKeys(
        "weighting/theorem_last_type_r2", "weighting/theorem_last_type_slope", "weighting/theorem_last_type_slope_se",
        "weighting/theorem_last_type_intercept", "weighting/theorem_last_type_intercept_se", "weighting/theorem_last_type_n", "weighting/theorem_last_type_spearman",
    ),
    ("last_type", "dkl"): FitKeys(
        "weighting/theorem_last_type_dkl_r2", "weighting/theorem_last_type_dkl_slope", "weighting/theorem_last_type_dkl_slope_se",
        "weighting/theorem_last_type_dkl_intercept", "weighting/theorem_last_type_dkl_intercept_se", "weighting/theorem_last_type_dkl_n", "weighting/theorem_last_type_dkl_spearman",
    ),
    ("last_type", "selfinfo"): FitKeys(
        "weighting/theorem_last_type_selfinfo_r2", "weighting/theorem_last_type_selfinfo_slope", "weighting/theorem_last_type_selfinfo_slope_se",
        "weighting/theorem_last_type_selfinfo_intercept", "weighting/theorem_last_type_selfinfo_intercept_se", "weighting/theorem_last_type_selfinfo_n", "weighting/theorem_last_type_selfinfo_spearman",
    ),
}  # fmt: skip
"""(Theorem-1 target, quantity) -> keys of the OLS of ``0.5 ||w||^2`` on that quantity, with Spearman (spec section 5;
KL keeps its original names)."""

NUM_SENTENCES = "weighting/num_sentences"
NUM_UNITS = "weighting/num_units"
KL_INCLUDE_SELF = "weighting/kl_include_self"
THEOREM_INPUT_HALF_NORM_MEAN = "weighting/theorem_input_half_norm_mean"
IG_COMPLETENESS_ERROR_MEAN = "weighting/ig_completeness_error_mean"
IG_COMPLETENESS_ERROR_MAX = "weighting/ig_completeness_error_max"
IG_COMPLETENESS_ERROR_N = "weighting/ig_completeness_error_n"
IG_COMPLETENESS_OVER_TOL_SHARE = "weighting/ig_completeness_over_tol_share"
IG_EVALUATIONS_MEAN = "weighting/ig_evaluations_mean"
IG_EVALUATIONS_MAX = "weighting/ig_evaluations_max"

_CHOICES = {
    "ig_mode": ("exact", "sketch"),
    "sketch_kind": ("rademacher", "orthogonal"),
    "quadrature": QUADRATURES,
    "completeness": COMPLETENESS_CHECKS,
    "shap_mode": SHAP_MODES,
    "units": UNITS,
    "points": POINTS,
    "word_vector": ("sum", "mean"),
    "type_average": ("vectors", "norms"),
}


@dataclass
class WeightingConfig:
    """Every setting of the word-weighting probe, with the spec's defaults; presets override only what they must.

    ``include_self`` decides whether an occurrence of ``w`` counts itself in
    ``P_sent(.|w)`` (spec section 1: yes, as the paper's "sentences containing w"
    and the theorem's proof do). ``sketch_size`` and ``sketch_kind`` only matter with
    ``ig_mode="sketch"``; the ``shap_*`` fields only with ``"shap"`` in ``methods``.
    ``completeness`` is how sketch mode checks IG's completeness (``integrated_gradients``):
    ``path`` exactly, with a JVP as costly as a cheap sketch itself; ``directions`` along the sketch's directions, free.
    ``completeness_tol`` is the completeness error a sentence may have before the probe warns about it; with
    ``quadrature="adaptive"`` each sentence's rule is refined until it is met or ``max_evaluations`` path points
    are spent (``adaptive_quadrature``; ``steps`` is then the starting rule's size, about ``steps + 1`` points).
    ``bootstrap_resamples`` resamples of the probe sentences (0 = none) give the ``confidence``
    percentile interval of every weight fit's R^2 and beta (``regression.bootstrap_fit``), seeded by ``seed``.
    """

    methods: tuple[str, ...] = ("ig",)
    ig_mode: Mode = "exact"
    sketch_size: int = 32
    sketch_kind: SketchKind = "rademacher"
    steps: int = 50
    quadrature: Quadrature = "gauss_legendre"
    units: Units = "tokens"
    min_count: int = 5
    include_self: bool = True
    dkl_repeats: int = 5
    points: Points = "occurrence"
    max_length: int | None = 128
    seed: int = 0
    batch_size: int = 8
    vjp_batch: int | None = 8
    completeness: Completeness = "path"
    completeness_tol: float = 0.01
    max_evaluations: int = 256
    shap_mode: ShapMode = "exact"
    shap_max_exact_tokens: int = 10
    shap_permutations: int = 64
    shap_max_evals: int = 500
    shap_batch_size: int = 256
    theorem: bool = True
    word_vector: WordVector = "sum"
    type_average: TypeAverage = "vectors"
    bootstrap_resamples: int = 1000
    confidence: float = 0.95

    def __post_init__(self) -> None:
        self.methods = tuple(self.methods)
        if self.completeness_tol <= 0:
            raise ValueError(f"completeness_tol must be > 0 (a relative error, e.g. 0.01), got {self.completeness_tol}")
        if self.quadrature == "adaptive" and self.max_evaluations < 2 * max(self.steps // 2, 1) + 1:
            raise ValueError(
                f"max_evaluations {self.max_evaluations} is below the adaptive rule's starting {2 * max(self.steps // 2, 1) + 1} "
                f"points (steps {self.steps}): raise max_evaluations or lower steps"
            )
        if self.bootstrap_resamples < 0:
            raise ValueError(f"bootstrap_resamples must be >= 0 (0 = no intervals), got {self.bootstrap_resamples}")
        if not 0 < self.confidence < 1:
            raise ValueError(f"confidence must be in (0, 1), got {self.confidence}")
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown or not self.methods:
            raise ValueError(f"methods must be a non-empty subset of {METHODS}, got {self.methods}")
        for name, choices in _CHOICES.items():
            if getattr(self, name) not in choices:
                raise ValueError(f"unknown {name} '{getattr(self, name)}': choose one of {', '.join(choices)}")


@dataclass(frozen=True)
class TokenRecord:
    """One unit occurrence: its sentence (index into the probe sentences), type, ``c'`` per method and information."""

    sentence: int
    token: str
    weights: dict[str, float]
    kl: float
    dkl: float
    self_information: float
    count: int


@dataclass
class WeightingResult:
    """Flat metrics for loggers, per-unit records for plots, and the config that produced them."""

    metrics: dict[str, float]
    records: list[TokenRecord]
    config: WeightingConfig = field(default_factory=WeightingConfig)

    def occurrences(self, method: str, quantity: Quantity) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(x, y, type, sentence) of every eligible unit occurrence of the ``{method}_{quantity}`` fit."""
        attribute = {"kl": "kl", "dkl": "dkl", "selfinfo": "self_information"}[quantity]
        kept = [r for r in self.records if r.count >= self.config.min_count and math.isfinite(getattr(r, attribute))]
        x = np.array([getattr(r, attribute) for r in kept], dtype=np.float64)
        y = np.array([r.weights[method] for r in kept], dtype=np.float64)
        return x, y, np.array([r.token for r in kept], dtype=object), np.array([r.sentence for r in kept], dtype=np.int64)

    def regression_data(self, method: str, quantity: Quantity) -> tuple[np.ndarray, np.ndarray]:
        """The (x, y) points of the ``{method}_{quantity}`` fit: eligible units, per occurrence or per type."""
        x, y, types, _ = self.occurrences(method, quantity)
        return regression_points(x, y, types, self.config.points)

    def interval(self, method: str, quantity: Quantity, num_sentences: int) -> Interval:
        """Bootstrap interval (over the ``num_sentences`` probe sentences) of the ``{method}_{quantity}`` fit."""
        x, y, types, sentence = self.occurrences(method, quantity)
        c = self.config
        return bootstrap_fit(x, y, sentence, num_sentences, c.points, types, c.bootstrap_resamples, c.confidence, c.seed)

    def to_json(self) -> str:
        """Config, metrics and records as strict JSON (NaN written as null), full float precision."""
        return to_strict_json({"config": asdict(self.config), "metrics": self.metrics, "records": [asdict(r) for r in self.records]})


def _method_weights(
    encoder: SentenceEncoder, method: str, seg: Segmentation, sentences: list[str], config: WeightingConfig, seed: int
) -> tuple[torch.Tensor, Attribution]:
    """Normalised unit weights ``c'`` of one batch, and the attribution (IG: per-sentence completeness errors, evaluations)."""
    if method == "ig":
        attribution = integrated_gradients(
            encoder, seg.input_ids, seg.attention_mask, config.steps, config.quadrature, config.ig_mode,
            config.sketch_size, config.sketch_kind, seed, config.vjp_batch, config.completeness,
            config.completeness_tol, config.max_evaluations,
        )  # fmt: skip
    else:
        attribution = shap_weights(
            encoder, seg.input_ids, seg.attention_mask, sentences, config.shap_mode, config.shap_max_exact_tokens,
            config.shap_permutations, config.shap_max_evals, seed, config.shap_batch_size,
        )  # fmt: skip
    _, normalised = unit_weights(attribution.weights, seg.unit_of_position, seg.unit_sentence)
    return normalised, attribution


def _theorem_vectors(encoder: SentenceEncoder, seg: Segmentation, config: WeightingConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-unit input word-embedding vectors and last-layer hidden states of one batch."""
    with attribution_mode(encoder) as device, torch.no_grad():
        ids, mask = seg.input_ids.to(device), seg.attention_mask.to(device)
        last = encoder.token_states(ids, mask).last_hidden_state
        inputs = encoder.word_embeddings(ids)
        unit_of_position = seg.unit_of_position.to(device)
        return tuple(vectors_per_unit(s, unit_of_position, seg.num_units, config.word_vector).cpu() for s in (inputs, last))


@dataclass(frozen=True)
class BatchProgress:
    """What the weighting probe tells its progress callback after each batch.

    Batches go in order of token length, so later ones cost more: ``lengths`` (every batch's padded
    length, in the order they are weighed) lets a callback project the time left from the cost so far.
    """

    done: int  # sentences weighed (or reused) so far
    total: int
    batch: int  # index of the batch just finished
    lengths: tuple[int, ...]
    reused: bool  # kept on disk by an interrupted run: no model time was spent on it


class BatchStore:
    """Each weighed batch of a long probe, kept on disk so that an interrupted probe resumes where it stopped.

    A batch is one file, written atomically. ``key.json`` fingerprints what the batches depend on (the
    sentences, the config, the model's weights, byte for byte: a float sum would change with the number of
    threads and clear the batches of the same probe resumed with another); a directory left by a different probe
    is cleared.
    """

    def __init__(self, directory: Path, encoder: SentenceEncoder, sentences: list[str], config: WeightingConfig) -> None:
        self.directory = Path(directory)
        digest = hashlib.sha256(json.dumps([sentences, asdict(config)], sort_keys=True, default=str).encode())
        with torch.no_grad():
            for name, tensor in encoder.state_dict().items():
                digest.update(name.encode())
                digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        key = digest.hexdigest()
        key_file = self.directory / "key.json"
        if key_file.exists() and json.loads(key_file.read_text()).get("key") != key:
            shutil.rmtree(self.directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        atomic_write_text(key_file, json.dumps({"key": key}))

    def _file(self, start: int) -> Path:
        return self.directory / f"batch_{start:07d}.pt"

    def load(self, start: int) -> dict | None:
        return torch.load(self._file(start), weights_only=True) if self._file(start).exists() else None

    def save(self, start: int, batch: dict) -> None:
        with atomic_path(self._file(start)) as temporary:
            torch.save(batch, temporary)


def weighting_probe(
    encoder: SentenceEncoder,
    sentences: list[str],
    config: WeightingConfig | None = None,
    statistics: TokenStatistics | None = None,
    progress: Callable[[BatchProgress], None] | None = None,
    resume_dir: str | Path | None = None,
) -> WeightingResult:
    """Weigh the probe sentences' units and regress the weights on information (statistics default: the sentences).

    ``progress(BatchProgress)`` is called after every batch (sentences done, every batch's token length, reused or not).
    With ``resume_dir``, every batch's weights are kept there (`BatchStore`) and a rerun of the same probe
    weighs only the batches not yet kept: the result equals an uninterrupted run's.
    """
    config = config or WeightingConfig()
    tokenizer = encoder.tokenizer
    if statistics is None:
        statistics = token_statistics(
            tokenizer, sentences, config.units, config.include_self, config.dkl_repeats, config.seed, config.max_length
        )
    if (statistics.units, statistics.include_self) != (config.units, config.include_self):
        raise ValueError(
            f"statistics were computed with units={statistics.units}, include_self={statistics.include_self}; "
            f"the config asks for units={config.units}, include_self={config.include_self}: compute them with the config's"
        )
    lengths = [len(ids) for ids in tokenizer(list(sentences), truncation=config.max_length is not None, max_length=config.max_length)["input_ids"]]
    order = np.argsort(lengths, kind="stable")
    starts = range(0, len(sentences), config.batch_size)
    batch_lengths = tuple(max(lengths[i] for i in order[start : start + config.batch_size]) for start in starts)
    records: list[TokenRecord] = []
    errors: list[torch.Tensor] = []
    evaluations: list[torch.Tensor] = []
    input_vectors, last_vectors, unit_types = [], [], []
    store = BatchStore(resume_dir, encoder, list(sentences), config) if resume_dir is not None else None
    for start in starts:
        indices = order[start : start + config.batch_size]
        batch = [sentences[i] for i in indices]
        seg = segment(tokenizer, batch, config.units, config.max_length)
        kept = store.load(start) if store is not None else None
        reused = kept is not None
        if kept is None:
            kept = {"weights": {}, "completeness": None, "evaluations": None}
            for method in config.methods:
                kept["weights"][method], attribution = _method_weights(encoder, method, seg, batch, config, config.seed + start)
                if attribution.completeness_error is not None:
                    kept["completeness"], kept["evaluations"] = attribution.completeness_error, attribution.evaluations
            if config.theorem:
                kept["vectors"] = _theorem_vectors(encoder, seg, config)
            if store is not None:
                store.save(start, kept)
        weights = kept["weights"]
        if kept["completeness"] is not None:
            errors.append(kept["completeness"])
            evaluations.append(kept["evaluations"])
        types = statistics.index(seg.unit_types)
        for u, (b, name, t) in enumerate(zip(seg.unit_sentence.tolist(), seg.unit_types, types.tolist())):
            known = t >= 0
            records.append(
                TokenRecord(
                    sentence=int(indices[b]),
                    token=name,
                    weights={m: float(w[u]) for m, w in weights.items()},
                    kl=float(statistics.kl[t]) if known else math.nan,
                    dkl=float(statistics.dkl[t]) if known else math.nan,
                    self_information=float(statistics.self_information[t]) if known else math.nan,
                    count=int(statistics.counts[t]) if known else 0,
                )
            )
        if config.theorem:
            input_vectors.append(kept["vectors"][0])
            last_vectors.append(kept["vectors"][1])
            unit_types.append(types)
        if progress is not None:
            progress(BatchProgress(start + len(indices), len(sentences), start // config.batch_size, batch_lengths, reused))
    result = WeightingResult(metrics={}, records=records, config=config)
    metrics: dict[str, float] = {
        NUM_SENTENCES: float(len(sentences)),
        NUM_UNITS: float(len(records)),
        KL_INCLUDE_SELF: float(config.include_self),
    }
    for method in config.methods:
        for quantity in QUANTITIES:
            metrics.update(ols(*result.regression_data(method, quantity)).metrics(FIT_KEYS[method, quantity]))
            if config.bootstrap_resamples > 0:
                metrics.update(result.interval(method, quantity, len(sentences)).metrics(FIT_KEYS[method, quantity]))
    if errors:
        error = torch.cat(errors).double()
        metrics[IG_COMPLETENESS_ERROR_MEAN] = float(error.mean())
        metrics[IG_COMPLETENESS_ERROR_MAX] = float(error.max())
        metrics[IG_COMPLETENESS_ERROR_N] = float(len(error))
        metrics[IG_COMPLETENESS_OVER_TOL_SHARE] = float((error > config.completeness_tol).double().mean())
        evaluated = torch.cat(evaluations).double()
        metrics[IG_EVALUATIONS_MEAN] = float(evaluated.mean())
        metrics[IG_EVALUATIONS_MAX] = float(evaluated.max())
    if config.theorem and records:
        types = np.concatenate(unit_types)
        keep = types >= 0
        keep[keep] = statistics.eligible(config.min_count)[types[keep]]
        mask = torch.from_numpy(keep)
        information = {"kl": statistics.kl, "dkl": statistics.dkl, "selfinfo": statistics.self_information}
        inputs, lasts = torch.cat(input_vectors)[mask], torch.cat(last_vectors)[mask]
        for quantity, values in information.items():
            for target, fit in theorem_regressions(inputs, lasts, types[keep], values, config.type_average).items():
                metrics.update(fit.metrics(THEOREM_KEYS[target, quantity]))
        metrics[THEOREM_INPUT_HALF_NORM_MEAN] = float(half_squared_norm(type_means(inputs, types[keep])[1]).mean())
    result.metrics = metrics
    return result


def completeness_warning(metrics: dict[str, float], config: WeightingConfig) -> str | None:
    """One line naming how many sentences miss IG completeness, the worst error and the setting that fixes it; None if none do."""
    if IG_COMPLETENESS_OVER_TOL_SHARE not in metrics or metrics[IG_COMPLETENESS_OVER_TOL_SHARE] == 0:
        return None
    total = int(metrics[IG_COMPLETENESS_ERROR_N])
    missed = round(metrics[IG_COMPLETENESS_OVER_TOL_SHARE] * total)
    fix = (
        f"raise weighting.max_evaluations (now {config.max_evaluations})"
        if config.quadrature == "adaptive"
        else "set weighting.quadrature: adaptive"
    )
    return (
        f"weighting: {missed} of {total} sentences miss IG completeness {100 * config.completeness_tol:g}% "
        f"(worst {100 * metrics[IG_COMPLETENESS_ERROR_MAX]:.1f}%): {fix}; their IG weights are not trustworthy"
    )
