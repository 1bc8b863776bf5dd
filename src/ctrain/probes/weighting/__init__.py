"""Word weighting (docs/metrics.md, "Word weighting"): attribution weights of words regressed on their information.

- `information`: the statistics corpus's per-type counts, KL, dKL and -log P, and the units of a sentence.
- `ig`: Integrated Gradients weights (exact or sketched), and the unit weights ``c'`` of any attribution.
- `adaptive`: IG's path rule refined per sentence where its completeness residual is (``quadrature: adaptive``).
- `shapley`: SHAP weights (exact, sampled, or the paper's PartitionSHAP); `partition` runs its recursion.
- `regression`: OLS and sentence-bootstrap intervals of weights on information.
- `theorem`: Theorem 1's ``0.5 ||w||^2`` fits.
- `keys`: every logged key, generated from one table.
- `config`: `WeightingConfig` (every setting) and `KURITA2023_WEIGHTING` (the paper's).
- `batch`: `weigh_batch`, what one batch of sentences weighs: the per-batch step every probe and benchmark calls.
- `store`: the resumable on-disk store of weighed batches, and the progress each batch reports.
- `probe`: `weighting_probe`, which ties them together over all probe sentences and fits, and
  `completeness_warning`, the one line a probe prints when sentences miss IG completeness.
- `captum_peer`: IG the straightforward way (captum, one output dim at a time), which tests and benchmarks check
  `ig` against; nothing logged comes from it.
- `lab_peer`: the Theorem-1 lab's input-row fits of any table of token rows (`LabProbe`) and gensim's word2vec, the
  lab's peer (benchmarks/lab/lab_peer.py sets them beside ctrain's `sgns`); nothing logged comes from it.
"""

from ctrain.probes.weighting.batch import BatchWeights, weigh_batch
from ctrain.probes.weighting.config import KURITA2023_WEIGHTING, WeightingConfig
from ctrain.probes.weighting.information import TokenStatistics, token_statistics
from ctrain.probes.weighting.keys import FIT_KEYS, METHODS, QUANTITIES, THEOREM_KEYS, Quantity
from ctrain.probes.weighting.probe import UnitTable, WeightingResult, completeness_warning, fit_weights, weighting_probe
from ctrain.probes.weighting.store import BatchProgress, BatchStore

__all__ = [
    "FIT_KEYS",
    "KURITA2023_WEIGHTING",
    "METHODS",
    "QUANTITIES",
    "THEOREM_KEYS",
    "BatchProgress",
    "BatchStore",
    "BatchWeights",
    "Quantity",
    "TokenStatistics",
    "UnitTable",
    "WeightingConfig",
    "WeightingResult",
    "completeness_warning",
    "fit_weights",
    "token_statistics",
    "weigh_batch",
    "weighting_probe",
]
