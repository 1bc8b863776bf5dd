"""``WeightingConfig``: every setting of the word-weighting probe and its default; ``KURITA2023_WEIGHTING``: the paper's.

The training callback, ``ctrain probe`` and the benchmarks take the config whole, and every function of
the package that needs settings reads them from it.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from ctrain.probes.weighting.adaptive import ADAPTIVE
from ctrain.probes.weighting.ig import COMPLETENESS_CHECKS, PRECISIONS, QUADRATURES, Completeness, Mode, Precision, Quadrature, SketchKind
from ctrain.probes.weighting.information import UNITS, TokenStatistics, Units, token_statistics
from ctrain.probes.weighting.keys import METHODS
from ctrain.probes.weighting.regression import POINTS, Points
from ctrain.probes.weighting.shapley import SHAP_MODES, ShapMode
from ctrain.probes.weighting.theorem import TypeAverage, WordVector
from ctrain.runtime import check_choice

_CHOICES = {
    "ig_mode": ("exact", "sketch"),
    "sketch_kind": ("rademacher", "orthogonal"),
    "quadrature": QUADRATURES,
    "completeness": COMPLETENESS_CHECKS,
    "ig_precision": PRECISIONS,
    "shap_mode": SHAP_MODES,
    "units": UNITS,
    "points": POINTS,
    "word_vector": ("sum", "mean"),
    "type_average": ("vectors", "norms"),
}


@dataclass(kw_only=True)
class WeightingConfig:
    """Every setting of the word-weighting probe, with the defaults of docs/metrics.md; presets override only what they must.

    ``include_self`` decides whether an occurrence of ``w`` counts itself in
    ``P_sent(.|w)`` (docs/metrics.md, "Information of a token type": yes, as the paper's "sentences containing w"
    and the theorem's proof do). ``sketch_size`` and ``sketch_kind`` only matter with
    ``ig_mode="sketch"``; the ``shap_*`` fields only with ``"shap"`` in ``methods``.
    ``completeness`` is how sketch mode checks IG's completeness (``integrated_gradients``):
    ``path`` exactly, with a JVP as costly as a cheap sketch itself; ``directions`` along the sketch's directions, free.
    ``completeness_tol`` is the completeness error a sentence may have before the probe warns about it; with
    ``quadrature="adaptive"`` each sentence's rule is refined until it is met or ``max_evaluations`` path points
    are spent (``adaptive``; ``steps`` is then the starting rule's size, about ``steps + 1`` points).
    ``ig_precision="float64"`` runs IG's model and path in float64, so that the adaptive rule resolves attention
    switches narrower than float32's spacing of the path (docs/kurita_setup.md); about twice the cost on a CPU.
    ``shap_batch_size`` is the PartitionSHAP recursion's coalitions per round, as ``shap.PartitionExplainer``'s
    ``batch_size``: None (default) is the library's own (its Text masker's, 5 in shap 0.51). Where a long sentence
    exhausts ``shap_max_evals`` it decides which partition nodes get expanded, so it changes the weights; a larger one
    (e.g. 256) is faster with the native recursion (docs/kurita_setup.md). In exact and permutation mode it only sets
    the coalitions per forward pass (None: 256).
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
    ig_precision: Precision = "float32"
    shap_mode: ShapMode = "exact"
    shap_max_exact_tokens: int = 10
    shap_permutations: int = 64
    shap_max_evals: int = 500
    shap_batch_size: int | None = None
    theorem: bool = True
    word_vector: WordVector = "sum"
    type_average: TypeAverage = "vectors"
    bootstrap_resamples: int = 1000
    confidence: float = 0.95

    def __post_init__(self) -> None:
        self.methods = tuple(self.methods)
        if self.completeness_tol <= 0:
            raise ValueError(f"completeness_tol must be > 0 (a relative error, e.g. 0.01), got {self.completeness_tol}")
        if self.quadrature == ADAPTIVE and self.max_evaluations < 2 * max(self.steps // 2, 1) + 1:
            raise ValueError(
                f"max_evaluations {self.max_evaluations} is below the adaptive rule's starting {2 * max(self.steps // 2, 1) + 1} "
                f"points (steps {self.steps}): raise max_evaluations or lower steps"
            )
        if self.bootstrap_resamples < 0:
            raise ValueError(f"bootstrap_resamples must be >= 0 (0 = no intervals), got {self.bootstrap_resamples}")
        if self.shap_batch_size is not None and self.shap_batch_size < 1:
            raise ValueError(f"shap_batch_size must be >= 1 or null (the shap library's default), got {self.shap_batch_size}")
        if not 0 < self.confidence < 1:
            raise ValueError(f"confidence must be in (0, 1), got {self.confidence}")
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown or not self.methods:
            raise ValueError(f"methods must be a non-empty subset of {METHODS}, got {self.methods}")
        for name, choices in _CHOICES.items():
            check_choice(getattr(self, name), choices, name)

    def statistics(self, tokenizer: PreTrainedTokenizerBase, corpus: list[str]) -> TokenStatistics:
        """The token statistics of ``corpus`` with this config's units, include_self, dKL repeats, seed and truncation."""
        return token_statistics(tokenizer, corpus, units=self.units, include_self=self.include_self, dkl_repeats=self.dkl_repeats, seed=self.seed, max_length=self.max_length)


KURITA2023_WEIGHTING = WeightingConfig(
    methods=("ig", "shap"),  # the paper reports both
    # its SHAP is shap's PartitionExplainer (appendix D.3); partition_native runs the same recursion with the
    # coalitions of a whole batch in one forward round (equal to shap_mode partition, the library, to float rounding;
    # where a long sentence exhausts max_evals, exact priority ties are broken by a seeded draw, not NumPy's global RNG)
    shap_mode="partition_native",
    # shap_batch_size stays None: the library's default batch (PartitionExplainer's batch_size="auto", as the paper
    # called it); it decides which partition nodes of a sentence that exhausts the 500 evaluations get expanded.
    # Exact IG takes d VJPs per quadrature step (384 for MiniLM, 768 for MPNet): days for 3000 sentences
    # on a CPU. 16 orthogonal directions estimate the same c_i^2 (exact at sketch_size = d); on a GPU
    # pass --weighting.ig_mode exact.
    ig_mode="sketch",
    sketch_size=16,
    sketch_kind="orthogonal",
    # 16 Gauss-Legendre steps, not 50: at a third of IG's cost they give the 50-step R^2 within the sketch's own
    # error (docs/kurita_setup.md, "IG: sketch size and quadrature against exact IG", has the figures and commands).
    steps=16,
)
"""The word-weighting paper's IG and SHAP; everything else is WeightingConfig's default."""
