"""IG's path rule refined where the completeness residual is: the quadrature for integrands with near-steps.

IG integrates the gradient along the straight path from the baseline. On any sub-interval [a, c] of the path,
``f(c) - f(a)`` is the exact integral of the path derivative ``g'(t) = J(t) (x - b)``, so the completeness residual
of a rule on that sub-interval, ``(f(c) - f(a)) - rule(g')``, is known exactly, not estimated. Where attention
heads switch within 1e-4 of t (all-mpnet-base-v2 from the PAD baseline, docs/kurita_setup.md), the integrand is a
near-step that no fixed rule resolves; here the sub-intervals holding the largest share of the residual are split
until a sentence's residual is under the tolerance or its evaluation budget is spent.

Decisions:

- The sub-interval rule is Simpson's (both ends and the midpoint). Under bisection every point stays a node, so an
  evaluation is never thrown away and the final rule's nodes are exactly the points evaluated: the budget bounds
  both the refinement and the VJP pass that follows it. A split costs 2 evaluations (the quarter points).
- A sentence stops when the sum of its sub-intervals' residual norms, an upper bound of its completeness error that
  cancellation between sub-intervals cannot fool, is under ``tol * ||f(1) - f(0)||``. Each round splits the fewest
  sub-intervals, largest residual first, that hold half of that sum (as many as the budget allows).
- Sub-intervals narrower than ``2 * min_width`` are not split, ``min_width`` the relative spacing of the path's
  float type (``MIN_WIDTH``, 2^-24, about 6e-8 of t, in float32; 2^-53 in float64): a coarser floor leaves
  all-mpnet-base-v2's attention switches on the path unresolved (docs/kurita_setup.md, "IG: adaptive quadrature").
  Their residual is given up (it stays in the reported error); the stopping rule and the split shares count the
  sub-intervals that can still be split. Switches narrower than float32 resolves need the path in float64
  (``WeightingConfig.ig_precision``).
- The reported completeness error is that of the final rule, ``||sum_t w_t g'(t) - (f(1) - f(0))|| / ||f(1) - f(0)||``,
  the same quantity as the fixed rules report.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

ADAPTIVE = "adaptive"
MIN_WIDTH = 2.0**-24

EvaluatePath = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]
"""(sentence index (M,), t (M,) float64) -> (f(t) (M, d), g'(t) (M, d)) at those points of those sentences' paths."""


@dataclass(frozen=True)
class PathRule:
    """Quadrature rows over a batch's paths: row ``r`` is node ``alphas[r]`` of sentence ``sentence[r]`` with ``weights[r]``."""

    sentence: Tensor
    alphas: Tensor
    weights: Tensor
    completeness_error: Tensor  # (B,) of the rule, float64
    evaluations: Tensor  # (B,) path points evaluated per sentence


def fixed_path_rule(alphas: Tensor, weights: Tensor, num_sentences: int) -> tuple[Tensor, Tensor, Tensor]:
    """The same nodes for every sentence as rows (sentence, t, weight), step-major."""
    sentence = torch.arange(num_sentences).repeat(len(alphas))
    return sentence, alphas.repeat_interleave(num_sentences), weights.repeat_interleave(num_sentences)


class _Sentence:
    """One sentence's evaluated points and its Simpson sub-intervals (a, midpoint, c)."""

    def __init__(self, panels: int) -> None:
        self.values: dict[float, Tensor] = {}
        self.slopes: dict[float, Tensor] = {}
        edges = [i / panels for i in range(panels + 1)]
        self.panels = [(a, (a + c) / 2, c) for a, c in zip(edges, edges[1:])]

    def points(self) -> list[float]:
        return sorted({t for panel in self.panels for t in panel})

    def residuals(self) -> Tensor:
        """(panels, d): ``f(c) - f(a) - (c - a) / 6 (g'(a) + 4 g'(m) + g'(c))`` per sub-interval."""
        return torch.stack([
            self.values[c] - self.values[a] - (c - a) / 6 * (self.slopes[a] + 4 * self.slopes[m] + self.slopes[c])
            for a, m, c in self.panels
        ])  # fmt: skip

    def weights(self) -> dict[float, float]:
        weights = dict.fromkeys(self.points(), 0.0)
        for a, m, c in self.panels:
            weights[a] += (c - a) / 6
            weights[m] += 4 * (c - a) / 6
            weights[c] += (c - a) / 6
        return weights

    def split(self, chosen: list[int]) -> list[float]:
        """Bisect the chosen sub-intervals; returns the new points (their quarter points)."""
        new, panels = [], []
        for index, (a, m, c) in enumerate(self.panels):
            if index in chosen:
                left, right = (a + m) / 2, (m + c) / 2
                panels += [(a, left, m), (m, right, c)]
                new += [left, right]
            else:
                panels.append((a, m, c))
        self.panels = panels
        return new


def _to_split(norms: Tensor, affordable: int) -> list[int]:
    """The fewest sub-intervals, largest residual first, holding half the sum of ``norms`` (at most ``affordable``)."""
    chosen, covered = [], 0.0
    for index in torch.argsort(norms, descending=True)[:affordable].tolist():
        chosen.append(index)
        covered += float(norms[index])
        if covered >= 0.5 * float(norms.sum()):
            break
    return chosen


def adaptive_path_rule(
    evaluate: EvaluatePath, num_sentences: int, tol: float, max_evaluations: int, panels: int, *, min_width: float = MIN_WIDTH
) -> PathRule:
    """Composite Simpson on ``panels`` equal sub-intervals of every path, refined per sentence (module docstring).

    Each round evaluates the new points of all sentences in one call of ``evaluate``.
    """
    start = 2 * panels + 1
    if panels < 1 or max_evaluations < start:
        raise ValueError(
            f"the adaptive rule starts from {start} points a sentence ({panels} sub-intervals) and max_evaluations is "
            f"{max_evaluations}: raise max_evaluations to at least {start} or lower steps"
        )
    sentences = [_Sentence(panels) for _ in range(num_sentences)]
    requests = [(s, t) for s, sentence in enumerate(sentences) for t in sentence.points()]
    while requests:
        index = torch.tensor([s for s, _ in requests])
        values, slopes = evaluate(index, torch.tensor([t for _, t in requests], dtype=torch.float64))
        for (s, t), value, slope in zip(requests, values.double(), slopes.double()):
            sentences[s].values[t], sentences[s].slopes[t] = value, slope
        requests = []
        for s, sentence in enumerate(sentences):
            splittable = torch.tensor([c - a >= 2 * min_width for a, _, c in sentence.panels])
            norms = sentence.residuals().norm(dim=1) * splittable
            change = float((sentence.values[1.0] - sentence.values[0.0]).norm())
            affordable = (max_evaluations - len(sentence.values)) // 2
            if float(norms.sum()) <= tol * change or affordable < 1:
                continue
            requests += [(s, t) for t in sentence.split(_to_split(norms, affordable))]
    rows, errors = [], []
    for s, sentence in enumerate(sentences):
        weights = sentence.weights()
        rows += [(s, t, w) for t, w in weights.items()]
        integral = sum(w * sentence.slopes[t] for t, w in weights.items())
        change = sentence.values[1.0] - sentence.values[0.0]
        errors.append(float((integral - change).norm() / change.norm()))
    return PathRule(
        sentence=torch.tensor([s for s, _, _ in rows]),
        alphas=torch.tensor([t for _, t, _ in rows], dtype=torch.float64),
        weights=torch.tensor([w for _, _, w in rows], dtype=torch.float64),
        completeness_error=torch.tensor(errors, dtype=torch.float64),
        evaluations=torch.tensor([len(sentence.values) for sentence in sentences]),
    )
