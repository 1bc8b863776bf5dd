"""The word-weighting probe: attribution weights regressed on token information.

``weighting_probe`` is what the training callback and ``ctrain probe`` call. It
weighs every unit of the probe sentences by IG (and optionally SHAP), one ``weigh_batch``
at a time, regresses the normalised weights ``c'`` on ``KL``, ``dKL`` and ``I`` of a
statistics corpus, and measures Theorem 1 (docs/metrics.md, "Word weighting"). Pass
``statistics`` (``WeightingConfig.statistics``) to reuse them across calls: they depend on
the corpus and the tokenizer only, not on the weights being trained.

Decisions the papers leave open:

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

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ctrain.models.encoder import SentenceEncoder
from ctrain.probes.jsonio import to_strict_json
from ctrain.probes.weighting.adaptive import ADAPTIVE
from ctrain.probes.weighting.batch import BatchWeights, weigh_batch
from ctrain.probes.weighting.config import WeightingConfig
from ctrain.probes.weighting.information import TokenStatistics, segment
from ctrain.probes.weighting.keys import (
    FIT_KEYS,
    IG_COMPLETENESS_ERROR_MAX,
    IG_COMPLETENESS_ERROR_MEAN,
    IG_COMPLETENESS_ERROR_N,
    IG_COMPLETENESS_OVER_TOL_SHARE,
    IG_EVALUATIONS_MAX,
    IG_EVALUATIONS_MEAN,
    KL_INCLUDE_SELF,
    NUM_SENTENCES,
    NUM_UNITS,
    QUANTITIES,
    THEOREM_INPUT_HALF_NORM_MEAN,
    THEOREM_KEYS,
    Quantity,
)
from ctrain.probes.weighting.regression import Interval, bootstrap_fit, ols, regression_points
from ctrain.probes.weighting.store import BatchProgress, BatchStore
from ctrain.probes.weighting.theorem import half_squared_norm, theorem_regressions, type_means

Weigh = Callable[[SentenceEncoder, list[str], WeightingConfig, int], BatchWeights]
INFORMATION = {"kl": "kl", "dkl": "dkl", "selfinfo": "self_information"}  # quantity -> its column (and statistic)


@dataclass(frozen=True)
class UnitTable:
    """Every unit occurrence of the probe sentences, one row per unit, as columns.

    ``sentence`` indexes the probe sentences; ``count`` is 0 and the information NaN for a type the statistics
    corpus never saw."""

    sentence: np.ndarray  # int64
    token: np.ndarray  # object: the type string
    weights: dict[str, np.ndarray]  # method -> c'
    kl: np.ndarray
    dkl: np.ndarray
    self_information: np.ndarray
    count: np.ndarray  # int64

    def __len__(self) -> int:
        return len(self.sentence)

    def rows(self) -> list[dict]:
        """One JSON-ready dict per unit: sentence, token, weights (per method), kl, dkl, self_information, count."""
        columns = (self.sentence.tolist(), self.token.tolist(), self.kl.tolist(), self.dkl.tolist(), self.self_information.tolist(), self.count.tolist())
        weights = [dict(zip(self.weights, values)) for values in zip(*(w.tolist() for w in self.weights.values()))]
        return [
            {"sentence": s, "token": t, "weights": w, "kl": kl, "dkl": dkl, "self_information": i, "count": n}
            for (s, t, kl, dkl, i, n), w in zip(zip(*columns), weights)
        ]


@dataclass
class WeightingResult:
    """Flat metrics for loggers, the per-unit table for plots, and the config that produced them."""

    metrics: dict[str, float]
    units: UnitTable
    config: WeightingConfig = field(default_factory=WeightingConfig)

    def occurrences(self, method: str, quantity: Quantity) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(x, y, type, sentence) of every eligible unit occurrence of the ``{method}_{quantity}`` fit."""
        units = self.units
        x = getattr(units, INFORMATION[quantity])
        kept = (units.count >= self.config.min_count) & np.isfinite(x)
        return x[kept], units.weights[method][kept], units.token[kept], units.sentence[kept]

    def regression_data(self, method: str, quantity: Quantity) -> tuple[np.ndarray, np.ndarray]:
        """The (x, y) points of the ``{method}_{quantity}`` fit: eligible units, per occurrence or per type."""
        x, y, types, _ = self.occurrences(method, quantity)
        return regression_points(x, y, types, self.config.points)

    def interval(self, method: str, quantity: Quantity, num_sentences: int) -> Interval:
        """Bootstrap interval (over the ``num_sentences`` probe sentences) of the ``{method}_{quantity}`` fit."""
        x, y, types, sentence = self.occurrences(method, quantity)
        c = self.config
        return bootstrap_fit(x, y, sentence, num_sentences, points=c.points, types=types, resamples=c.bootstrap_resamples, confidence=c.confidence, seed=c.seed)

    def to_json(self) -> str:
        """Config, metrics and one record per unit as strict JSON (NaN written as null), full float precision."""
        return to_strict_json({"config": asdict(self.config), "metrics": self.metrics, "records": self.units.rows()})


def weighting_probe(
    encoder: SentenceEncoder,
    sentences: list[str],
    config: WeightingConfig | None = None,
    *,
    statistics: TokenStatistics | None = None,
    progress: Callable[[BatchProgress], None] | None = None,
    resume_dir: str | Path | None = None,
    weigh: Weigh = weigh_batch,
) -> WeightingResult:
    """Weigh the probe sentences' units and regress the weights on information (statistics default: the sentences).

    ``progress(BatchProgress)`` is called after every batch (sentences done, every batch's token length, reused or not).
    With ``resume_dir``, every batch's weights are kept there (`BatchStore`) and a rerun of the same probe
    weighs only the batches not yet kept: the result equals an uninterrupted run's. ``weigh`` weighs each batch
    (``weigh_batch``; a benchmark passes a wrapper of it that times or keeps what it weighed).
    """
    config = config or WeightingConfig()
    tokenizer = encoder.tokenizer
    if statistics is None:
        statistics = config.statistics(tokenizer, sentences)
    if (statistics.units, statistics.include_self) != (config.units, config.include_self):
        raise ValueError(
            f"statistics were computed with units={statistics.units}, include_self={statistics.include_self}; "
            f"the config asks for units={config.units}, include_self={config.include_self}: compute them with the config's"
        )
    lengths = [len(ids) for ids in tokenizer(list(sentences), truncation=config.max_length is not None, max_length=config.max_length)["input_ids"]]
    order = np.argsort(lengths, kind="stable")
    starts = range(0, len(sentences), config.batch_size)
    batch_lengths = tuple(max(lengths[i] for i in order[start : start + config.batch_size]) for start in starts)
    store = BatchStore(resume_dir, encoder, list(sentences), config) if resume_dir is not None else None
    batches: list[BatchWeights] = []
    sentence_of_unit: list[np.ndarray] = []
    for start in starts:
        indices = order[start : start + config.batch_size]
        batch = [sentences[i] for i in indices]
        stored = store.load(start) if store is not None else None
        if stored is None:
            weighed = weigh(encoder, batch, config, config.seed + start)
            if store is not None:
                store.save(start, weighed.stored())
        else:
            weighed = BatchWeights.from_stored(segment(tokenizer, batch, config.units, config.max_length), stored)
        batches.append(weighed)
        sentence_of_unit.append(indices[weighed.segmentation.unit_sentence.numpy()])
        if progress is not None:
            progress(BatchProgress(start + len(indices), len(sentences), start // config.batch_size, batch_lengths, stored is not None))
    return fit_weights(batches, np.concatenate(sentence_of_unit or [np.zeros(0, np.int64)]), len(sentences), statistics, config)


def fit_weights(
    batches: list[BatchWeights], sentence_of_unit: np.ndarray, num_sentences: int, statistics: TokenStatistics, config: WeightingConfig
) -> WeightingResult:
    """The probe's metrics and unit table from its weighed batches (``sentence_of_unit``: each unit's probe sentence)."""
    types = np.concatenate([statistics.index(b.segmentation.unit_types) for b in batches] or [np.zeros(0, np.int64)])
    known = types >= 0

    def per_unit(values: np.ndarray, missing: float, dtype: type = np.float64) -> np.ndarray:
        column = np.full(len(types), missing, dtype=dtype)
        column[known] = values[types[known]]
        return column

    units = UnitTable(
        sentence=sentence_of_unit.astype(np.int64),
        token=np.array([t for b in batches for t in b.segmentation.unit_types], dtype=object),
        weights={m: np.concatenate([b.weights[m] for b in batches] or [np.zeros(0)]) for m in config.methods},
        kl=per_unit(statistics.kl, np.nan),
        dkl=per_unit(statistics.dkl, np.nan),
        self_information=per_unit(statistics.self_information, np.nan),
        count=per_unit(statistics.counts, 0, np.int64),
    )
    result = WeightingResult(metrics={}, units=units, config=config)
    metrics: dict[str, float] = {
        NUM_SENTENCES: float(num_sentences),
        NUM_UNITS: float(len(units)),
        KL_INCLUDE_SELF: float(config.include_self),
    }
    for method in config.methods:
        for quantity in QUANTITIES:
            metrics.update(ols(*result.regression_data(method, quantity)).metrics(FIT_KEYS[method, quantity]))
            if config.bootstrap_resamples > 0:
                metrics.update(result.interval(method, quantity, num_sentences).metrics(FIT_KEYS[method, quantity]))
    errors = [torch.from_numpy(b.completeness_error) for b in batches if b.completeness_error is not None]
    if errors:
        error = torch.cat(errors).double()
        metrics[IG_COMPLETENESS_ERROR_MEAN] = float(error.mean())
        metrics[IG_COMPLETENESS_ERROR_MAX] = float(error.max())
        metrics[IG_COMPLETENESS_ERROR_N] = float(len(error))
        metrics[IG_COMPLETENESS_OVER_TOL_SHARE] = float((error > config.completeness_tol).double().mean())
        evaluated = torch.cat([torch.from_numpy(b.evaluations) for b in batches if b.evaluations is not None]).double()
        metrics[IG_EVALUATIONS_MEAN] = float(evaluated.mean())
        metrics[IG_EVALUATIONS_MAX] = float(evaluated.max())
    if config.theorem and len(units):
        keep = known.copy()
        keep[keep] = statistics.eligible(config.min_count)[types[keep]]
        mask = torch.from_numpy(keep)
        inputs = torch.cat([torch.from_numpy(b.input_vectors) for b in batches])[mask]
        lasts = torch.cat([torch.from_numpy(b.last_vectors) for b in batches])[mask]
        for quantity, column in INFORMATION.items():
            for target, fit in theorem_regressions(inputs, lasts, types[keep], getattr(statistics, column), config.type_average).items():
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
    if config.quadrature != ADAPTIVE:
        fix = "set weighting.quadrature: adaptive"
    elif metrics.get(IG_EVALUATIONS_MAX, 0) < config.max_evaluations and config.ig_precision == "float32":
        fix = "set weighting.ig_precision: float64 (the budget was not spent: the path changes faster than float32 resolves)"
    else:
        fix = f"raise weighting.max_evaluations (now {config.max_evaluations})"
    return (
        f"weighting: {missed} of {total} sentences miss IG completeness {100 * config.completeness_tol:g}% "
        f"(worst {100 * metrics[IG_COMPLETENESS_ERROR_MAX]:.1f}%): {fix}; their IG weights are not trustworthy"
    )
