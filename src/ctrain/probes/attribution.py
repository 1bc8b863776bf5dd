"""Word weights by Integrated Gradients and by SHAP (probe spec sections 2 and 3).

Both attribute the inference sentence embedding ``f(X)`` (eval mode, fp32, autocast
off) and leave the model as they found it: train/eval mode and parameter dtypes are
restored, parameter ``.grad`` is never written (gradients are taken w.r.t. the inputs
only, through ``torch.func.vjp``) and the global torch RNG is never consumed (random
sketch directions and permutations come from a ``torch.Generator`` seeded by an argument).

Decisions where the spec is open:

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
  orthonormal rows of a Haar matrix (the spec's "scaled by sqrt(d/r)" written per
  direction), exact at ``r = d``.
- Completeness is exact in both modes: exact mode sums its ``IG_ijk``; sketch mode,
  which never forms them, uses ``sum_ij IG_ijk = sum_a w_a (J(a) (x - b))_k``, one
  forward-mode JVP along the path (a few forward passes' cost).
- SHAP ``exact`` mode enumerates all coalitions of sentences with at most
  ``max_exact_tokens`` players and samples permutations beyond (exact enumeration
  costs ``2^p`` forward passes); ``permutation`` mode always samples.
- SHAP permutation sampling averages the
  marginal contributions along ``permutations`` uniformly random orderings (budget:
  ``permutations * (p + 1)`` forward passes); like exact SHAP it is efficient, i.e.
  the values of a sentence sum to ``f(x) - f(all MASK)``.
- SHAP ``partition`` mode is ``shap.PartitionExplainer`` with ``shap.maskers.Text``
  (the word-weighting paper's tool): Owen values over the masker's hierarchical
  clustering of the tokens, MASK as the absent value, the model called on the masked
  *strings* (so a masked word may re-tokenise differently, as in the paper). Owen
  values equal Shapley values on additive games and are efficient on every game.
  ``partition_native`` is the same recursion run by ``ctrain.probes.partition_shap``: the
  same strings, tree and budget, the coalitions of all sentences of the batch evaluated
  together (equal to the library's values to float rounding; tests/test_partition_shap.py).
- A unit made of several positions (a word in ``units="words"``) weighs
  ``sqrt(sum_i c_i^2)`` over its positions: the Frobenius norm of the spec extended to
  all input dims of the word. ``c'`` divides by the mean over the sentence's units.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import chain
from typing import Literal

import numpy as np
import torch
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers import PreTrainedTokenizerBase

from ctrain.models.encoder import SentenceEncoder, eval_mode
from ctrain.probes.adaptive_quadrature import ADAPTIVE, adaptive_path_rule, fixed_path_rule

Quadrature = Literal["gauss_legendre", "riemann_trapezoid", "adaptive"]
QUADRATURES: tuple[str, ...] = ("gauss_legendre", "riemann_trapezoid", ADAPTIVE)
Mode = Literal["exact", "sketch"]
ShapMode = Literal["exact", "permutation", "partition", "partition_native"]
SHAP_MODES: tuple[str, ...] = ("exact", "permutation", "partition", "partition_native")
SketchKind = Literal["rademacher", "orthogonal"]
Completeness = Literal["path", "directions"]
COMPLETENESS_CHECKS: tuple[str, ...] = ("path", "directions")


@dataclass(frozen=True)
class Attribution:
    """Per-position weights ``c_i`` (0 at special positions); IG only: per-sentence completeness error and path points evaluated."""

    weights: Tensor
    completeness_error: Tensor | None
    evaluations: Tensor | None = None


@contextmanager
def attribution_mode(encoder: SentenceEncoder) -> Iterator[torch.device]:
    """Eval mode, fp32, autocast off, autograd available; everything restored on exit."""
    low_precision = [
        t for t in chain(encoder.parameters(), encoder.buffers()) if t.is_floating_point() and t.dtype != torch.float32
    ]
    dtypes = [t.dtype for t in low_precision]
    device = next(encoder.parameters()).device
    try:
        for tensor in low_precision:  # bf16/fp16 -> fp32 -> back is lossless
            tensor.data = tensor.data.float()
        with eval_mode(encoder), torch.inference_mode(False), torch.autocast(device.type, enabled=False):
            yield device
    finally:
        for tensor, dtype in zip(low_precision, dtypes):
            tensor.data = tensor.data.to(dtype)


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
    if mode == "exact":
        frequency, index = torch.arange(dim, dtype=torch.float64).unsqueeze(1), torch.arange(dim, dtype=torch.float64)
        basis = torch.cos(math.pi * (index + 0.5) * frequency / dim) * math.sqrt(2 / dim)
        basis[0] /= math.sqrt(2)
        return basis.float(), 1.0
    if mode != "sketch":
        raise ValueError(f"unknown mode '{mode}': choose exact or sketch")
    if sketch_size < 1:
        raise ValueError(f"sketch_size must be >= 1, got {sketch_size}")
    if kind == "rademacher":
        return torch.randint(0, 2, (sketch_size, dim), generator=generator).float() * 2 - 1, 1.0 / sketch_size
    if kind == "orthogonal":
        if sketch_size > dim:
            raise ValueError(f"orthogonal sketches need sketch_size <= output dim {dim}, got {sketch_size}: lower sketch_size")
        q, r = torch.linalg.qr(torch.randn(dim, sketch_size, generator=generator, dtype=torch.float64))
        rows = (q * torch.sign(torch.diagonal(r))).T  # Haar-distributed orthonormal rows
        return (math.sqrt(dim) * rows).float(), 1.0 / sketch_size
    raise ValueError(f"unknown sketch kind '{kind}': choose rademacher or orthogonal")


def integrated_gradients(
    encoder: SentenceEncoder,
    input_ids: Tensor,
    attention_mask: Tensor,
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
    evaluated in chunks of ``steps`` rows a sentence, so memory stays that of the fixed rule.
    """
    if completeness not in COMPLETENESS_CHECKS:
        raise ValueError(f"unknown completeness check '{completeness}': choose one of {', '.join(COMPLETENESS_CHECKS)}")
    generator = torch.Generator().manual_seed(seed)
    with attribution_mode(encoder) as device, torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
        positions = encoder.position_ids(input_ids)
        x, baseline = pad_baseline(encoder, input_ids)
        delta = x - baseline
        batch = x.shape[0]
        chunk_rows = max(steps, 1) * batch  # the fixed rule's path in one piece: its memory bounds every chunk

        def embed(sentence: Tensor) -> Callable[[Tensor], Tensor]:
            return lambda z: encoder(inputs_embeds=z, attention_mask=attention_mask[sentence], position_ids=positions[sentence])

        def path(sentence: Tensor, alphas: Tensor) -> Tensor:
            return baseline[sentence] + alphas.float().view(-1, 1, 1) * delta[sentence]

        def along_path(sentence: Tensor, alphas: Tensor) -> tuple[Tensor, Tensor]:
            """f and its derivative along the path, g'(a) = J(a) (x - b), at the given rows: one JVP per chunk."""
            sentence, alphas = sentence.to(device), alphas.to(device)
            with warnings.catch_warnings():  # torch scripts a few decompositions on first use and warns about it
                warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=DeprecationWarning)
                pieces = [torch.func.jvp(embed(s), (path(s, a),), (delta[s],)) for s, a in zip(sentence.split(chunk_rows), alphas.split(chunk_rows))]
            return torch.cat([value for value, _ in pieces]), torch.cat([slope for _, slope in pieces])

        if quadrature == ADAPTIVE:
            rule = adaptive_path_rule(along_path, batch, completeness_tol, max_evaluations, max(steps // 2, 1))
            sentence, alphas, row_weights = rule.sentence, rule.alphas, rule.weights
            evaluations = rule.evaluations
        else:
            sentence, alphas, row_weights = fixed_path_rule(*quadrature_rule(quadrature, steps), batch)
            evaluations = torch.full((batch,), steps)
        sentence, row_weights = sentence.to(device), row_weights.float().to(device)
        rows = list(zip(sentence.split(chunk_rows), alphas.split(chunk_rows), row_weights.split(chunk_rows)))
        pullbacks = [torch.func.vjp(embed(s), path(s, a))[1] for s, a, _ in rows] if len(rows) == 1 else None
        dim = encoder.embedding_size
        directions, scale = output_directions(mode, dim, sketch_size, sketch_kind, generator)
        directions = directions.to(device)
        squares = torch.zeros(input_ids.shape, device=device)
        sums = []  # exact mode: sum_ij IG_ij. along each basis direction
        along_directions = quadrature != ADAPTIVE and (mode == "exact" or completeness == "directions")
        for chunk in directions.split(vjp_batch or len(directions)):
            integral = torch.zeros(len(chunk), *x.shape, device=device)  # (K, B, n, e): sum_a w_a v^T J(a), per sentence
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
        return Attribution(weights=(scale * squares).sqrt().cpu(), completeness_error=error.cpu(), evaluations=evaluations)


def shapley_coefficients(players: int) -> Tensor:
    """``A`` with ``phi = A^T v`` over all ``2^p`` coalitions (row ``T`` = bitmask of present players).

    ``A[T, i] = w(|T| - 1)`` if ``i`` is in ``T`` else ``-w(|T|)``, with the Shapley
    weight ``w(s) = s! (p - s - 1)! / p!``.
    """
    present = (torch.arange(2**players).unsqueeze(1) >> torch.arange(players)) & 1
    size = present.sum(1, keepdim=True).double()

    def weight(s: Tensor) -> Tensor:
        return torch.exp(torch.lgamma(s + 1) + torch.lgamma(players - s) - math.lgamma(players + 1))

    inside, outside = weight((size - 1).clamp_min(0)), weight(size.clamp_max(players - 1))
    return torch.where(present.bool(), inside, -outside)


def _coalition_values(
    encoder: SentenceEncoder, input_ids: Tensor, positions: Tensor, players: Tensor, present: Tensor, batch_size: int
) -> Tensor:
    """``f`` of the sentence with absent players set to MASK, one row per coalition in ``present`` (C, p)."""
    ids = input_ids.repeat(len(present), 1)
    ids[:, players] = torch.where(present, ids[:, players], encoder.tokenizer.mask_token_id)
    return torch.cat(
        [
            encoder(input_ids=chunk, attention_mask=torch.ones_like(chunk), position_ids=positions.expand_as(chunk))
            for chunk in ids.split(batch_size)
        ]
    ).double()


def shapley_values(
    encoder: SentenceEncoder,
    input_ids: Tensor,
    max_exact_tokens: int = 10,
    permutations: int = 64,
    seed: int = 0,
    batch_size: int = 256,
) -> Tensor:
    """Shapley values ``phi`` (p, d) of the non-special positions of one unpadded sentence (n,).

    Exact over all ``2^p`` coalitions when ``p <= max_exact_tokens``, else the mean
    marginal contribution over ``permutations`` random orderings. MASK is the absent
    value; special positions are always present.
    """
    if encoder.tokenizer.mask_token_id is None:
        raise ValueError("SHAP needs a tokenizer with a mask token (the absent value)")
    generator = torch.Generator().manual_seed(seed)
    with attribution_mode(encoder) as device, torch.no_grad():
        input_ids = input_ids.to(device).unsqueeze(0)
        positions = encoder.position_ids(input_ids)
        players = torch.nonzero(~encoder.special_mask(input_ids[0]))[:, 0]
        p = len(players)
        if p == 0:
            return torch.zeros(0, encoder.embedding_size, dtype=torch.float64)
        if p <= max_exact_tokens:
            present = ((torch.arange(2**p).unsqueeze(1) >> torch.arange(p)) & 1).bool().to(device)
            values = _coalition_values(encoder, input_ids, positions, players, present, batch_size)
            return shapley_coefficients(p).to(device).T @ values
        order = torch.argsort(torch.rand(permutations, p, generator=generator), dim=1)
        rank = torch.argsort(order, dim=1).to(device)  # rank[q, i]: place of player i in ordering q
        present = rank.unsqueeze(1) < torch.arange(p + 1, device=device).view(1, -1, 1)  # (Q, p + 1, p) prefixes
        values = _coalition_values(encoder, input_ids, positions, players, present.flatten(0, 1), batch_size)
        values = values.view(permutations, p + 1, -1)
        after = values.gather(1, (rank + 1).unsqueeze(-1).expand(-1, -1, values.shape[-1]))
        before = values.gather(1, rank.unsqueeze(-1).expand(-1, -1, values.shape[-1]))
        return (after - before).mean(0)


def owen_values(
    value_function: Callable[[list[str]], np.ndarray],
    tokenizer: PreTrainedTokenizerBase,
    sentence: str,
    max_evals: int = 500,
    batch_size: int = 64,
) -> np.ndarray:
    """PartitionSHAP (``shap`` library) values (n, d) of every position of ``sentence``, specials included (0 there).

    ``value_function`` maps masked sentences (strings, MASK as the absent value) to
    outputs (C, d); the players are the tokenizer's tokens, grouped by ``shap``'s text
    clustering. ``max_evals`` bounds the model calls of one sentence.
    """
    import shap

    if tokenizer.mask_token is None:
        raise ValueError("SHAP needs a tokenizer with a mask token (the absent value): use another model or method ig")
    masker = shap.maskers.Text(tokenizer, mask_token=tokenizer.mask_token, collapse_mask_token=False)
    explainer = shap.PartitionExplainer(value_function, masker)
    return explainer([sentence], max_evals=max_evals, batch_size=batch_size, silent=True).values[0]


def shap_weights(
    encoder: SentenceEncoder,
    input_ids: Tensor,
    attention_mask: Tensor,
    sentences: list[str],
    mode: ShapMode = "exact",
    max_exact_tokens: int = 10,
    permutations: int = 64,
    max_evals: int = 500,
    seed: int = 0,
    batch_size: int = 256,
) -> Attribution:
    """SHAP weights ``c_i = ||phi_i||_2`` of a padded batch of ``sentences`` (sentence ``b`` sampled with seed ``seed + b``)."""
    if mode not in SHAP_MODES:
        raise ValueError(f"unknown shap_mode '{mode}': choose one of {', '.join(SHAP_MODES)}")
    weights = torch.zeros(input_ids.shape, dtype=torch.float64)
    special = encoder.special_mask(input_ids)

    def encode(masked: list[str]) -> np.ndarray:
        with attribution_mode(encoder), torch.no_grad():
            return encoder.encode(list(masked), batch_size=batch_size).double().cpu().numpy()

    if mode == "partition_native":  # the same values as "partition", all sentences' coalitions batched together
        from ctrain.probes.partition_shap import batched_owen_values, length_grouped_encoder

        native = batched_owen_values(
            length_grouped_encoder(encoder), encoder.tokenizer, sentences, max_evals, batch_size, [seed + b for b in range(len(sentences))]
        )  # fmt: skip
    for b, (ids, keep) in enumerate(zip(input_ids, attention_mask.bool())):
        players = torch.nonzero(keep & ~special[b])[:, 0].cpu()
        if mode in ("partition", "partition_native"):
            phi = native[b] if mode == "partition_native" else owen_values(encode, encoder.tokenizer, sentences[b], max_evals, batch_size)
            if len(phi) != int(keep.sum()):
                raise ValueError(
                    f"shap's tokenisation of sentence '{sentences[b]}' has {len(phi)} positions, the probe's {int(keep.sum())}: "
                    "raise max_length or use shap_mode exact"
                )
            weights[b, players] = torch.from_numpy(np.linalg.norm(phi, axis=1))[players]  # right padding: same positions
        else:
            exact_limit = max_exact_tokens if mode == "exact" else 0
            phi = shapley_values(encoder, ids[keep], exact_limit, permutations, seed + b, batch_size)
            weights[b, players] = phi.norm(dim=1).cpu()
    return Attribution(weights=weights, completeness_error=None)


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
