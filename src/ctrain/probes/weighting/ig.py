"""Word weights by Integrated Gradients (docs/metrics.md, "Weights"), and the unit weights ``c'`` of any attribution.

IG attributes the inference sentence embedding ``f(X)`` (eval mode, fp32 or with
``precision="float64"`` fp64, autocast off: ``attribution_mode``) and leaves the model as it found it: train/eval mode and parameter
dtypes are restored, parameter ``.grad`` is never written (gradients are taken w.r.t. the inputs
only, through ``torch.func.vjp``) and the global torch RNG is never consumed (random
sketch directions come from a ``torch.Generator`` seeded by an argument). SHAP is ``shapley``'s.

Decisions the papers leave open:

- IG runs the backbone with the *math* scaled-dot-product-attention kernel: the CPU
  flash kernel has no batching rule for its backward, so a batched VJP through it
  falls back to a slow per-example loop. The two kernels agree to float tolerance.
- ``riemann_trapezoid`` is the textbook trapezoid rule on ``m`` equally spaced points
  of [0, 1] (weights sum to 1). Captum's rule of that name uses step 1/m instead of
  1/(m-1), so its weights sum to 1 - 1/m; ``gauss_legendre`` matches captum exactly.
- The baseline keeps the attention mask of the input (PAD embeddings are attended,
  as in captum with the same baseline).
- Exact mode takes its ``d`` VJPs per step along the orthonormal DCT-II basis of the
  output space rather than the unit vectors: the Frobenius norm is the same, and the
  dense cotangents ran about 2x faster on CPU than one-hot ones.
- Sketch directions satisfy ``E[v v^T] = I`` and the estimate is the mean over the
  ``r = sketch_size`` directions. Orthogonal directions are ``sqrt(d)`` times ``r``
  orthonormal rows of a Haar matrix (r orthonormal directions scaled by sqrt(d/r), written per
  direction), exact at ``r = d``.
- Completeness is exact in both modes: exact mode sums its ``IG_ijk``; sketch mode,
  which never forms them, uses ``sum_ij IG_ijk = sum_a w_a (J(a) (x - b))_k``, one
  forward-mode JVP along the path (a few forward passes' cost).
- A unit made of several positions (a word in ``units="words"``) weighs
  ``sqrt(sum_i c_i^2)`` over its positions: the Frobenius norm of ``c_i`` extended to
  all input dims of the word. ``c'`` divides by the mean over the sentence's units.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

from ctrain.models.encoder import SentenceEncoder, attribution_mode
from ctrain.probes.weighting.adaptive import ADAPTIVE, adaptive_path_rule, fixed_path_rule
from ctrain.runtime import check_choice

Quadrature = Literal["gauss_legendre", "riemann_trapezoid", "adaptive"]
QUADRATURES: tuple[str, ...] = ("gauss_legendre", "riemann_trapezoid", ADAPTIVE)
Mode = Literal["exact", "sketch"]
SketchKind = Literal["rademacher", "orthogonal"]
Completeness = Literal["path", "directions"]
COMPLETENESS_CHECKS: tuple[str, ...] = ("path", "directions")
Precision = Literal["float32", "float64"]
PRECISIONS: tuple[str, ...] = ("float32", "float64")


@dataclass(frozen=True)
class Attribution:
    """Per-position weights ``c_i`` (0 at special positions); IG only: per-sentence completeness error and path points evaluated."""

    weights: Tensor
    completeness_error: Tensor | None
    evaluations: Tensor | None = None


def quadrature_rule(method: Quadrature, steps: int) -> tuple[Tensor, Tensor]:
    """Nodes ``a`` in [0, 1] and weights (float64) approximating ``integral_0^1 g(a) da``."""
    if method == "gauss_legendre":
        if steps < 1:
            raise ValueError(f"gauss_legendre needs steps >= 1, got {steps}")
        nodes, weights = np.polynomial.legendre.leggauss(steps)
        return torch.from_numpy(0.5 * (1 + nodes)), torch.from_numpy(0.5 * weights)
    if method == "riemann_trapezoid":
        if steps < 2:
            raise ValueError(f"riemann_trapezoid needs steps >= 2, got {steps}")
        weights = torch.full((steps,), 1.0 / (steps - 1), dtype=torch.float64)
        weights[[0, -1]] /= 2
        return torch.linspace(0, 1, steps, dtype=torch.float64), weights
    raise ValueError(f"'{method}' is not a fixed quadrature: choose gauss_legendre or riemann_trapezoid (adaptive rules: adaptive_path_rule)")


def pad_baseline(encoder: SentenceEncoder, input_ids: Tensor) -> tuple[Tensor, Tensor]:
    """Word-embedding vectors ``x`` and the baseline ``b``: PAD at non-special positions, specials kept."""
    with torch.no_grad():
        x = encoder.word_embeddings(input_ids)
        pad = encoder.word_embeddings.weight[encoder.tokenizer.pad_token_id]
        return x, torch.where(encoder.special_mask(input_ids).unsqueeze(-1), x, pad)


def output_directions(
    mode: Mode, dim: int, sketch_size: int, kind: SketchKind, generator: torch.Generator
) -> tuple[Tensor, float]:
    """Output directions ``v`` and the factor turning ``sum_v ||.||^2`` into ``c^2``.

    Exact mode may use any orthonormal basis of the output space (the Frobenius norm is
    invariant under rotations of it). It uses the orthonormal DCT-II basis: dense
    cotangents ran about 2x faster than the one-hot rows of the identity on CPU.
    """
    check_choice(mode, Mode, "mode")
    if mode == "exact":
        frequency, index = torch.arange(dim, dtype=torch.float64).unsqueeze(1), torch.arange(dim, dtype=torch.float64)
        basis = torch.cos(math.pi * (index + 0.5) * frequency / dim) * math.sqrt(2 / dim)
        basis[0] /= math.sqrt(2)
        return basis.float(), 1.0
    if sketch_size < 1:
        raise ValueError(f"sketch_size must be >= 1, got {sketch_size}")
    check_choice(kind, SketchKind, "sketch kind")
    if kind == "rademacher":
        return torch.randint(0, 2, (sketch_size, dim), generator=generator).float() * 2 - 1, 1.0 / sketch_size
    if sketch_size > dim:
        raise ValueError(f"orthogonal sketches need sketch_size <= output dim {dim}, got {sketch_size}: lower sketch_size")
    q, r = torch.linalg.qr(torch.randn(dim, sketch_size, generator=generator, dtype=torch.float64))
    rows = (q * torch.sign(torch.diagonal(r))).T  # Haar-distributed orthonormal rows
    return (math.sqrt(dim) * rows).float(), 1.0 / sketch_size


def integrated_gradients(
    encoder: SentenceEncoder,
    input_ids: Tensor,
    attention_mask: Tensor,
    *,
    steps: int = 50,
    quadrature: Quadrature = "gauss_legendre",
    mode: Mode = "exact",
    sketch_size: int = 32,
    sketch_kind: SketchKind = "rademacher",
    seed: int = 0,
    vjp_batch: int | None = 8,
    completeness: Completeness = "path",
    completeness_tol: float = 0.01,
    max_evaluations: int = 256,
    precision: Precision = "float32",
) -> Attribution:
    """IG weights ``c_i = ||IG_i..||_F`` of a padded batch with the PAD baseline.

    One forward pass over all ``steps`` interpolations of all sentences, then one
    batched VJP (``vmap`` over the cotangents) per ``vjp_batch`` output directions (the
    ``d`` vectors of an orthonormal basis in exact mode, ``sketch_size`` random vectors in
    sketch mode). The quadrature weights ride in the cotangents, so the step sum is a
    plain sum.

    The completeness error in sketch mode: ``path`` (default) computes ``sum_ij IG_ij.`` in
    all ``d`` output dims with one JVP along the path (exact, but it costs about as much as
    the rest of a cheap sketch); ``directions`` takes the residual along the sketch's own
    directions, a by-product of the VJPs: an estimate of the same relative error from a
    random projection (equal to ``path`` when the directions span the output space).

    ``quadrature="adaptive"`` refines each sentence's rule (``adaptive_path_rule``, starting from ``steps // 2``
    Simpson sub-intervals) until its completeness error is under ``completeness_tol`` or ``max_evaluations`` path
    points are spent; its error is the refinement's own exact check, whatever ``completeness`` says. The path is
    evaluated in chunks of ``steps`` rows a sentence, so memory stays that of the fixed rule. ``precision="float64"``
    runs the model and the path in float64 (about twice the cost on a CPU), so that the adaptive rule can split the
    path below float32's resolution of t.
    """
    check_choice(completeness, COMPLETENESS_CHECKS, "completeness check")
    check_choice(precision, PRECISIONS, "precision")
    dtype = getattr(torch, precision)
    generator = torch.Generator().manual_seed(seed)
    with attribution_mode(encoder, dtype) as device, torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
        positions = encoder.position_ids(input_ids)
        x, baseline = pad_baseline(encoder, input_ids)
        delta = x - baseline
        batch = x.shape[0]
        chunk_rows = max(steps, 1) * batch  # the fixed rule's path in one piece: its memory bounds every chunk

        def embed(sentence: Tensor) -> Callable[[Tensor], Tensor]:
            return lambda z: encoder(inputs_embeds=z, attention_mask=attention_mask[sentence], position_ids=positions[sentence])

        def path(sentence: Tensor, alphas: Tensor) -> Tensor:
            return baseline[sentence] + alphas.to(dtype).view(-1, 1, 1) * delta[sentence]

        def along_path(sentence: Tensor, alphas: Tensor) -> tuple[Tensor, Tensor]:
            """f and its derivative along the path, g'(a) = J(a) (x - b), at the given rows: one JVP per chunk."""
            sentence, alphas = sentence.to(device), alphas.to(device)
            with warnings.catch_warnings():  # torch scripts a few decompositions on first use and warns about it
                warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=DeprecationWarning)
                pieces = [torch.func.jvp(embed(s), (path(s, a),), (delta[s],)) for s, a in zip(sentence.split(chunk_rows), alphas.split(chunk_rows))]
            return torch.cat([value for value, _ in pieces]), torch.cat([slope for _, slope in pieces])

        if quadrature == ADAPTIVE:
            rule = adaptive_path_rule(along_path, batch, completeness_tol, max_evaluations, max(steps // 2, 1), min_width=torch.finfo(dtype).eps / 2)
            sentence, alphas, row_weights = rule.sentence, rule.alphas, rule.weights
            evaluations = rule.evaluations
        else:
            sentence, alphas, row_weights = fixed_path_rule(*quadrature_rule(quadrature, steps), batch)
            evaluations = torch.full((batch,), steps)
        sentence, row_weights = sentence.to(device), row_weights.to(device, dtype)
        rows = list(zip(sentence.split(chunk_rows), alphas.split(chunk_rows), row_weights.split(chunk_rows)))
        pullbacks = [torch.func.vjp(embed(s), path(s, a))[1] for s, a, _ in rows] if len(rows) == 1 else None
        dim = encoder.embedding_size
        directions, scale = output_directions(mode, dim, sketch_size, sketch_kind, generator)
        directions = directions.to(device, dtype)
        squares = torch.zeros(input_ids.shape, device=device, dtype=dtype)
        sums = []  # exact mode: sum_ij IG_ij. along each basis direction
        along_directions = quadrature != ADAPTIVE and (mode == "exact" or completeness == "directions")
        for chunk in directions.split(vjp_batch or len(directions)):
            integral = torch.zeros(len(chunk), *x.shape, device=device, dtype=dtype)  # (K, B, n, e): sum_a w_a v^T J(a), per sentence
            for (s, a, w), pullback in zip(rows, pullbacks or (torch.func.vjp(embed(s), path(s, a))[1] for s, a, _ in rows)):
                (grads,) = torch.func.vmap(pullback)(w.view(1, -1, 1) * chunk.view(len(chunk), 1, dim))
                integral.index_add_(1, s, grads)
            ig = delta * integral
            squares += ig.pow(2).sum((0, 3))
            if along_directions:
                sums.append(ig.sum((2, 3)))
        if quadrature == ADAPTIVE:
            error = rule.completeness_error.float()
        else:
            ends = encoder(
                inputs_embeds=torch.cat([x, baseline]), attention_mask=attention_mask.repeat(2, 1), position_ids=positions.repeat(2, 1)
            )
            target = ends[:batch] - ends[batch:]
            if along_directions:  # exact: in the rotated basis the norms are the same; sketch: a random projection of both
                target = target @ directions.T
                residual = torch.cat(sums).T - target
            else:  # sum_ij IG_ijk = sum_a w_a (J(a) (x - b))_k: one JVP along the path gives it exactly
                _, slopes = along_path(sentence, alphas)
                residual = torch.zeros_like(target).index_add_(0, sentence, row_weights.view(-1, 1) * slopes) - target
            error = residual.norm(dim=1) / target.norm(dim=1)
        return Attribution(weights=(scale * squares).sqrt().float().cpu(), completeness_error=error.float().cpu(), evaluations=evaluations)


def unit_weights(position_weights: Tensor, unit_of_position: Tensor, unit_sentence: Tensor) -> tuple[Tensor, Tensor]:
    """Unit weights ``c_u = sqrt(sum_{i in u} c_i^2)`` and ``c'_u = c_u / mean_{u' in its sentence} c_u'``."""
    valid = unit_of_position.ge(0)
    num_units, num_sentences = len(unit_sentence), position_weights.shape[0]
    weights = torch.zeros(num_units, dtype=torch.float64).index_add_(
        0, unit_of_position[valid], position_weights[valid].double().pow(2)
    ).sqrt()
    totals = torch.zeros(num_sentences, dtype=torch.float64).index_add_(0, unit_sentence, weights)
    sizes = torch.bincount(unit_sentence, minlength=num_sentences).double()
    return weights, weights / (totals / sizes)[unit_sentence]
