"""Geometry probes against brute-force pairwise implementations, invariants and conventions.

The metric functions take sums of unit vectors; the brute-force references here take the vectors
and loop over pairs, and the end-to-end test runs every metric from per-sentence forward passes.
"""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from ctrain.data.sources import read_sts_b
from ctrain.models.encoder import load_encoder
from ctrain.probes.geometry import (
    GeometryConfig,
    GeometryResult,
    format_layer_table,
    geometry_probe,
    positive_pairs,
    probe_sentences,
)
from ctrain.probes.geometry.metrics import (
    Moments,
    alignment,
    anisotropy,
    closed_form_mean_cosine,
    informativity_r2,
    intra_similarity,
    rogue_shares,
    rogue_summary,
    select_types,
    self_similarity,
    self_similarity_change,
    uniformity,
)
from ctrain.probes.geometry.runner import build_plan

ROOT = Path(__file__).resolve().parents[1]
TOL = 1e-9  # pure functions run in float64
MODEL_TOL = 2e-6  # batched vs one-sentence forward passes differ by float32 rounding


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(a.double() @ b.double() / (a.double().norm() * b.double().norm()))


def loop_mean_cosine(vectors: torch.Tensor) -> float:
    """Mean cosine over distinct pairs by an explicit double loop."""
    values = [cosine(vectors[i], vectors[j]) for i in range(len(vectors)) for j in range(len(vectors)) if i != j]
    return sum(values) / len(values)


def matrix_mean_cosine(vectors: torch.Tensor) -> float:
    """Mean of the off-diagonal of the full cosine matrix."""
    units = F.normalize(vectors.double(), dim=-1)
    matrix = units @ units.T
    count = len(vectors)
    return float((matrix.sum() - matrix.diagonal().sum()) / (count * (count - 1)))


def unit_sums_by_group(vectors: torch.Tensor, groups: torch.Tensor, count: int) -> torch.Tensor:
    """Sum of the unit vectors (..., N, d) of each group 0..count-1 (the statistics the stream accumulates)."""
    units = F.normalize(vectors.double(), dim=-1)
    return units.new_zeros(*units.shape[:-2], count, units.shape[-1]).index_add_(-2, groups, units)


def brute_self_similarity(vectors, tokens, sentences, first_per_sentence, min_occurrences, min_sentences) -> dict[int, float]:
    """Group occurrences per type in Python, qualify, full cosine matrix per type."""
    groups: dict[int, list[int]] = {}
    seen: set[tuple[int, int]] = set()
    totals: dict[int, int] = {}
    in_sentences: dict[int, set[int]] = {}
    for index, (token, sentence) in enumerate(zip(tokens.tolist(), sentences.tolist())):
        totals[token] = totals.get(token, 0) + 1
        in_sentences.setdefault(token, set()).add(sentence)
        if first_per_sentence and (token, sentence) in seen:
            continue
        seen.add((token, sentence))
        groups.setdefault(token, []).append(index)
    return {
        token: matrix_mean_cosine(vectors[members])
        for token, members in groups.items()
        if totals[token] >= min_occurrences and len(in_sentences[token]) >= min_sentences and len(members) >= 2
    }


def brute_rogue_shares(vectors: torch.Tensor, distinct: bool) -> torch.Tensor:
    """Per dimension, its part of the summed cosine over all (distinct, or also self) pairs, from the pair tensor."""
    units = F.normalize(vectors.double(), dim=-1)
    per_dimension = torch.einsum("ti,si->its", units, units)  # (d, N, N): u_ti u_si
    if distinct:
        per_dimension = per_dimension * (1 - torch.eye(len(units), dtype=units.dtype))
    contributions = per_dimension.sum((1, 2))
    return contributions / contributions.sum()


def selection_self_similarity(vectors, tokens, sentences, occurrences, min_occurrences, min_sentences):
    """select_types + per-type unit sums + the closed form, as the probe composes them."""
    selection = select_types(tokens, sentences, occurrences, min_occurrences, min_sentences)
    used = selection.slot >= 0
    sums = unit_sums_by_group(vectors[..., used, :], selection.slot[used], selection.type_ids.numel())
    return selection.type_ids, self_similarity(sums, selection.counts)


# ------------------------------------------------------------------ pure functions on random data


def test_closed_form_and_anisotropy_match_double_loop():
    generator = torch.Generator().manual_seed(1)
    samples = torch.randn(3, 4, 30, 8, generator=generator) + 0.5  # (layers, resamples, M, d)
    sums = F.normalize(samples.double(), dim=-1).sum(-2)
    mean, spread = anisotropy(sums, 30)
    for layer in range(3):
        per_resample = [loop_mean_cosine(samples[layer, r]) for r in range(4)]
        assert float(closed_form_mean_cosine(sums[layer, 0], 30)) == pytest.approx(per_resample[0], abs=TOL)
        assert float(mean[layer]) == pytest.approx(np.mean(per_resample), abs=TOL)
        assert float(spread[layer]) == pytest.approx(np.std(per_resample, ddof=1), abs=TOL)
    assert float(anisotropy(sums[:, :1], 30)[1][0]) == 0.0  # one resample: no spread


def test_identical_vectors_give_one_and_gaussian_gives_zero():
    same = torch.tensor([0.3, -1.0, 2.0]).repeat(12, 1)
    assert float(closed_form_mean_cosine(unit_sums_by_group(same, torch.zeros(12, dtype=torch.long), 1), 12)) == pytest.approx(1.0, abs=TOL)
    _, per_type = selection_self_similarity(same, torch.tensor([7] * 12), torch.arange(12), "first_per_sentence", 5, 5)
    assert float(per_type[0]) == pytest.approx(1.0, abs=TOL)
    sentences = torch.tensor([0] * 6 + [1] * 6)
    intra = intra_similarity(unit_sums_by_group(same, sentences, 2), same.double().new_zeros(2, 3).index_add_(0, sentences, same.double()), torch.tensor([6, 6]))
    assert intra.tolist() == pytest.approx([1.0, 1.0], abs=TOL)
    gaussian = torch.randn(4000, 64, generator=torch.Generator().manual_seed(2))
    assert abs(float(closed_form_mean_cosine(F.normalize(gaussian.double(), dim=-1).sum(0), 4000))) < 2e-3


@pytest.mark.parametrize(
    "occurrences,min_occurrences,min_sentences",
    [("first_per_sentence", 5, 5), ("first_per_sentence", 5, 2), ("all", 5, 1), ("all", 3, 2), ("first_per_sentence", 2, 1)],
)
def test_self_similarity_matches_brute_force(occurrences, min_occurrences, min_sentences):
    generator = torch.Generator().manual_seed(3)
    tokens = torch.randint(0, 12, (300,), generator=generator)
    sentences = torch.randint(0, 20, (300,), generator=generator).sort().values
    vectors = torch.randn(2, 300, 6, generator=generator) + torch.randn(12, 6, generator=generator)[tokens]
    type_ids, per_type = selection_self_similarity(vectors, tokens, sentences, occurrences, min_occurrences, min_sentences)
    for layer in range(2):
        expected = brute_self_similarity(
            vectors[layer], tokens, sentences, occurrences == "first_per_sentence", min_occurrences, min_sentences
        )
        assert expected and sorted(expected) == type_ids.tolist()
        got = dict(zip(type_ids.tolist(), per_type[layer].tolist()))
        for token, value in expected.items():
            assert got[token] == pytest.approx(value, abs=TOL)


def test_first_per_sentence_pairs_only_different_sentences():
    # type 7: three times in sentence 0, once in sentences 1 and 2; type 8: five times in sentence 3 only
    tokens = torch.tensor([7, 7, 7, 7, 7, 8, 8, 8, 8, 8])
    sentences = torch.tensor([0, 0, 0, 1, 2, 3, 3, 3, 3, 3])
    vectors = torch.randn(len(tokens), 5, generator=torch.Generator().manual_seed(10))
    type_ids, per_type = selection_self_similarity(vectors, tokens, sentences, "first_per_sentence", 1, 1)
    assert type_ids.tolist() == [7]  # type 8 has one context: no pair
    # brute force: every pair of occurrences that are each the first of their type in two different sentences
    first = {}
    for index, sentence in enumerate(sentences.tolist()):
        first.setdefault((int(tokens[index]), sentence), index)
    places = [index for (token, _), index in first.items() if token == 7]
    pairs = [cosine(vectors[i], vectors[j]) for i, j in itertools.combinations(places, 2)]
    assert places == [0, 3, 4] and float(per_type[0]) == pytest.approx(np.mean(pairs), abs=TOL)
    within = cosine(vectors[0], vectors[1])  # a pair inside sentence 0: counted under `all` only
    type_ids, per_type = selection_self_similarity(vectors, tokens, sentences, "all", 1, 1)
    assert type_ids.tolist() == [7, 8]
    assert float(per_type[0]) == pytest.approx(np.mean([cosine(vectors[i], vectors[j]) for i, j in itertools.combinations(range(5), 2)]), abs=TOL)
    assert float(per_type[0]) != pytest.approx(np.mean(pairs), abs=1e-3) and within != pytest.approx(np.mean(pairs), abs=1e-3)


def test_isotropy2023_qualification_rule():
    # type 1: 5 occurrences in 1 sentence (fails >= 2 sentences); type 2: 5 occurrences in 2 sentences
    # (qualifies, 2 first occurrences used); type 3: 4 occurrences in 4 sentences (fails >= 5 in total).
    tokens = torch.tensor([1, 1, 1, 1, 1, 2, 2, 2, 3, 2, 2, 3, 3, 3])
    sentences = torch.tensor([0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 2, 3])
    selection = select_types(tokens, sentences, "first_per_sentence", min_occurrences=5, min_sentences=2)
    assert selection.type_ids.tolist() == [2]
    assert selection.counts.tolist() == [2]
    assert (selection.slot >= 0).nonzero().squeeze(1).tolist() == [5, 9]  # first occurrence in each sentence
    vectors = torch.randn(len(tokens), 4, generator=torch.Generator().manual_seed(4))
    _, per_type = selection_self_similarity(vectors, tokens, sentences, "first_per_sentence", 5, 2)
    assert float(per_type[0]) == pytest.approx(cosine(vectors[5], vectors[9]), abs=TOL)
    assert select_types(tokens, sentences, "all", 5, 1).type_ids.tolist() == [1, 2]
    assert select_types(tokens, sentences, "first_per_sentence", 1, 4).type_ids.tolist() == [3]  # default-style rule
    with pytest.raises(ValueError, match="choose one of first_per_sentence, all"):
        select_types(tokens, sentences, "first")


def test_intra_and_norms_match_loops():
    generator = torch.Generator().manual_seed(5)
    sentence_ids = torch.tensor([0, 0, 0, 2, 2, 3, 3, 3, 3])  # sentence 1 has no token
    vectors = torch.randn(2, len(sentence_ids), 5, generator=generator) + 1.0
    vector_sums = vectors.double().new_zeros(2, 4, 5).index_add_(1, sentence_ids, vectors.double())
    per_sentence = intra_similarity(unit_sums_by_group(vectors, sentence_ids, 4), vector_sums, torch.bincount(sentence_ids, minlength=4))
    for layer in range(2):
        for sentence in (0, 2, 3):
            members = vectors[layer][sentence_ids == sentence]
            mean = members.double().mean(0)
            assert float(per_sentence[layer, sentence]) == pytest.approx(np.mean([cosine(m, mean) for m in members]), abs=TOL)
    norms = vectors.double().norm(dim=-1)
    whole = Moments.of(norms)
    merged = Moments.of(norms[:, :4]).merge(Moments.of(norms[:, 4:]))
    for moments in (whole, merged):
        assert torch.allclose(moments.mean, norms.mean(-1)) and torch.allclose(moments.std(), norms.std(-1))


@pytest.mark.parametrize("offset", [0.0, 3.0])  # 0: near isotropy, where self-pairs dominate
def test_rogue_shares_match_pair_loops(offset):
    generator = torch.Generator().manual_seed(6)
    vectors = torch.randn(40, 10, generator=generator) + torch.linspace(0, offset, 10)
    units = F.normalize(vectors.double(), dim=-1)
    distinct = rogue_shares(units.sum(0), units.pow(2).sum(0))
    with_self = rogue_shares(units.sum(0))
    # explicit double loop for the distinct pairs, the pair tensor for both
    loop = torch.zeros(10, dtype=torch.float64)
    for t, s in itertools.permutations(range(40), 2):
        loop += units[t] * units[s]
    assert torch.allclose(distinct, loop / loop.sum(), atol=TOL)
    assert torch.allclose(distinct, brute_rogue_shares(vectors, distinct=True), atol=TOL)
    assert torch.allclose(with_self, brute_rogue_shares(vectors, distinct=False), atol=TOL)
    assert float(distinct.sum()) == pytest.approx(1.0, abs=TOL) and float(with_self.sum()) == pytest.approx(1.0, abs=TOL)
    assert (distinct - with_self).abs().max() > 1e-3  # the two definitions differ


def test_rogue_summary():
    shares = torch.tensor([0.05, 0.3, -0.02, 0.12, 0.25, 0.3])
    summary = rogue_summary(shares / shares.sum())
    ordered = sorted((shares / shares.sum()).tolist(), reverse=True)
    for k in (1, 2, 3):
        assert float(summary[f"rogue_top{k}"]) == pytest.approx(ordered[k - 1], abs=TOL)
    for percent in (10, 20, 50):
        dims = next(i + 1 for i in range(6) if sum(ordered[: i + 1]) >= percent / 100)
        assert int(summary[f"rogue_dims_{percent}"]) == dims


@pytest.mark.parametrize("offset", [0.0, 4.0, 40.0])  # 40: rogue dim 0 dominates, cosines all near 1
def test_informativity_matches_pair_loop(offset):
    generator = torch.Generator().manual_seed(7)
    vectors = torch.randn(25, 6, generator=generator) + torch.tensor([offset, 0, 0, 0, 0, 0])
    drops = [torch.tensor([0, 3]), torch.tensor([1])]
    expected = []
    for drop in drops:
        before, after = [], []
        kept = vectors.clone()
        kept[:, drop] = 0
        for i, j in itertools.combinations(range(25), 2):
            before.append(cosine(vectors[i], vectors[j]))
            after.append(cosine(kept[i], kept[j]))
        expected.append(np.corrcoef(before, after)[0, 1] ** 2)
    exact = informativity_r2(vectors, drops, compute_dtype=torch.float64)
    assert [m.n for m in exact] == [25, 25]
    assert [float(m.value) for m in exact] == pytest.approx(expected, abs=TOL)
    fast = informativity_r2(vectors, drops)  # float32 throughout, centred Gram matrices
    assert [float(m.value) for m in fast] == pytest.approx(expected, abs=1e-6 if offset < 40 else 1e-5)
    (nothing_dropped,) = informativity_r2(vectors, [torch.tensor([], dtype=torch.long)])
    assert float(nothing_dropped.value) == pytest.approx(1.0, abs=1e-6)


def test_informativity_batches_layers_with_their_own_drops():
    generator = torch.Generator().manual_seed(9)
    layers = torch.randn(3, 30, 8, generator=generator)
    drops = torch.tensor([[0, 1], [2, 5], [7, 3]])
    (batched,) = informativity_r2(layers, [drops], compute_dtype=torch.float64)
    one_by_one = [float(informativity_r2(layers[l], [drops[l]], compute_dtype=torch.float64)[0].value) for l in range(3)]
    assert batched.value.tolist() == pytest.approx(one_by_one, abs=TOL)


def test_alignment_and_uniformity_match_pdist():
    generator = torch.Generator().manual_seed(8)
    x, y = torch.randn(40, 7, generator=generator), torch.randn(40, 7, generator=generator)
    xn, yn = (F.normalize(v.double(), dim=-1) for v in (x, y))
    assert float(alignment(x, y).value) == pytest.approx(float(((xn - yn).norm(dim=1) ** 2).mean()), abs=TOL)
    expected = float(torch.pdist(xn).pow(2).mul(-2).exp().mean().log())
    assert float(uniformity(x, compute_dtype=torch.float64).value) == pytest.approx(expected, abs=TOL)
    assert float(uniformity(x, chunk_rows=3, compute_dtype=torch.float64).value) == pytest.approx(expected, abs=TOL)
    assert float(uniformity(x).value) == pytest.approx(expected, abs=1e-6)  # float32 distances
    assert uniformity(x).n == 40


def test_positive_pairs_score_above_the_threshold():
    rows = read_sts_b("dev")
    at_four = [(a, b) for a, b, score in rows if score == 4.0]
    assert at_four  # so that the two rules differ on the real data
    strict = positive_pairs("dev", 4.0)
    assert strict == [(a, b) for a, b, score in rows if score > 4.0]
    assert positive_pairs("dev", 4.0, at_threshold=True) == [(a, b) for a, b, score in rows if score >= 4.0]
    assert not set(at_four) & set(strict)


def test_self_similarity_change_formula():
    change = self_similarity_change({"a": 0.9, "b": 0.5}, 0.2, {"a": 0.6, "c": 0.1}, 0.1)
    assert change == {"a": pytest.approx((0.9 - 0.2) - (0.6 - 0.1))}


# ------------------------------------------------------------------ the runner on tiny models


SENTENCES = probe_sentences()[:48]
PAIRS = [("A man is playing a guitar.", "A man plays the guitar."), ("A dog runs.", "The dog is running."), ("Hi.", "Hello.")]


@pytest.fixture(scope="module")
def tiny_bert():
    return load_encoder("tiny-bert")


@pytest.fixture(scope="module")
def tiny_roberta():
    return load_encoder("tiny-roberta")


def brute_force_probe(encoder, sentences, config: GeometryConfig) -> dict[str, float]:
    """Every metric from per-sentence forward passes, all hidden states kept, full cosine matrices."""
    config = config.resolved()
    plan = build_plan(encoder, sentences, config)  # used for its processing order and random draws only
    expected_ids = sorted(tuple(encoder.tokenize([s], config.max_length)["input_ids"][0].tolist()) for s in sentences)
    sentence_ids = plan.ids.split(plan.lengths.tolist())
    assert sorted(tuple(ids.tolist()) for ids in sentence_ids) == expected_ids
    states, tokens, sentence_of = [], [], []
    encoder.eval()
    with torch.no_grad():
        for index, ids in enumerate(sentence_ids):
            hidden = encoder.token_states(
                input_ids=ids[None], attention_mask=torch.ones(1, ids.numel(), dtype=torch.long), output_hidden_states=True
            ).hidden_states
            keep = torch.ones_like(ids, dtype=torch.bool) if config.include_specials else ~encoder.special_mask(ids)
            states.append(torch.stack(hidden)[:, 0][:, keep].double())
            tokens.append(ids[keep])
            sentence_of += [index] * int(keep.sum())
    every = torch.cat(states, dim=1)  # (L+1, N, d)
    tokens, sentence_of = torch.cat(tokens), torch.tensor(sentence_of)
    metrics = {}
    for layer in range(every.shape[0]):
        x = every[layer]
        draws = [matrix_mean_cosine(x[plan.anisotropy_draws[layer, r]]) for r in range(plan.anisotropy_draws.shape[1])]
        baseline = float(np.mean(draws))
        metrics[f"anisotropy/layer_{layer}"] = baseline
        metrics[f"anisotropy_std/layer_{layer}"] = float(np.std(draws, ddof=1))
        per_type = brute_self_similarity(
            x, tokens, sentence_of, config.occurrences == "first_per_sentence", config.min_occurrences, config.min_sentences
        )
        metrics[f"self_similarity/layer_{layer}"] = float(np.mean(list(per_type.values())))
        metrics[f"self_similarity_adjusted/layer_{layer}"] = metrics[f"self_similarity/layer_{layer}"] - baseline
        intra = [np.mean([cosine(h, s[layer].mean(0)) for h in s[layer]]) for s in states if s.shape[1]]
        metrics[f"intra_similarity/layer_{layer}"] = float(np.mean(intra))
        metrics[f"intra_similarity_adjusted/layer_{layer}"] = float(np.mean(intra)) - baseline
        metrics[f"norm_mean/layer_{layer}"] = float(x.norm(dim=1).mean())
        metrics[f"norm_std/layer_{layer}"] = float(x.norm(dim=1).std())
        share_tensor = brute_rogue_shares(x, distinct=config.rogue_pairs == "distinct")
        shares = sorted(share_tensor.tolist(), reverse=True)
        order = share_tensor.argsort(descending=True)
        metrics.update({f"rogue_top{k}/layer_{layer}": shares[k - 1] for k in (1, 2, 3)})
        for percent in (10, 20, 50):
            dims = next(i + 1 for i in range(len(shares)) if sum(shares[: i + 1]) >= percent / 100)
            metrics[f"rogue_dims_{percent}/layer_{layer}"] = dims
        sample = x[plan.informativity_draws]
        for k in config.rogue_remove:
            kept = sample.clone()
            kept[:, order[:k]] = 0
            full, reduced = (torch.nn.functional.normalize(m, dim=1) for m in (sample, kept))
            upper = torch.triu_indices(len(sample), len(sample), 1)
            r = np.corrcoef((full @ full.T)[upper[0], upper[1]], (reduced @ reduced.T)[upper[0], upper[1]])[0, 1]
            metrics[f"informativity_r2_k{k}/layer_{layer}"] = r**2
    embeddings = torch.nn.functional.normalize(encoder.encode(sentences).double(), dim=1)
    metrics["uniformity"] = float(torch.pdist(embeddings).pow(2).mul(-2).exp().mean().log())
    left, right = (torch.nn.functional.normalize(encoder.encode(list(side)).double(), dim=1) for side in zip(*PAIRS))
    metrics["alignment"] = float(((left - right).norm(dim=1) ** 2).mean())
    return metrics


@pytest.mark.parametrize(
    "model,convention,flags",
    [
        ("tiny_bert", "default", {}),
        ("tiny_roberta", "isotropy2023", {}),
        ("tiny_bert", "default", {"occurrences": "all", "rogue_pairs": "with_self", "include_specials": True, "min_sentences": 1}),
    ],
)
def test_probe_matches_brute_force(model, convention, flags, request):
    encoder = request.getfixturevalue(model)
    config = GeometryConfig(
        convention=convention, anisotropy_sentences=30, anisotropy_resamples=3, informativity_tokens=60, positive_pairs=PAIRS,
        **flags,
    )  # fmt: skip
    expected = brute_force_probe(encoder, SENTENCES, config)
    result = geometry_probe(encoder, SENTENCES, config)
    assert result.convention == convention
    assert set(expected) <= set(result.metrics)
    for key, value in expected.items():
        assert result.metrics[key] == pytest.approx(value, abs=MODEL_TOL), key
    # streaming in many small batches (types and resamples spread over them) gives the same values
    for change in ({"max_memory_mb": 1.0}, {"batch_tokens": 40}):
        small_config = GeometryConfig(**{**config.__dict__, **change})
        assert len(build_plan(encoder, SENTENCES, small_config.resolved()).batches) >= 3, change
        small = geometry_probe(encoder, SENTENCES, small_config)
        for key, value in result.metrics.items():
            assert small.metrics[key] == pytest.approx(value, abs=MODEL_TOL), (change, key)


def test_conventions_specials_and_occurrences(tiny_bert):
    common = {"sentence_level": False, "anisotropy_resamples": 2, "informativity_tokens": 20}
    default = geometry_probe(tiny_bert, SENTENCES, GeometryConfig(**common))
    paper = geometry_probe(tiny_bert, SENTENCES, GeometryConfig(convention="isotropy2023", **common))
    every = geometry_probe(tiny_bert, SENTENCES, GeometryConfig(occurrences="all", **common))
    assert "[CLS]" not in default.type_self_similarity and "[SEP]" not in default.type_self_similarity
    assert paper.type_counts["[CLS]"] == len(SENTENCES)  # first occurrence per sentence, specials included
    # default: types in >= 5 sentences, isotropy2023: >= 5 occurrences in >= 2 sentences; one occurrence a sentence in both
    assert default.type_counts and set(default.type_counts) < set(paper.type_counts)
    assert all(count >= 5 and paper.type_counts[t] == count for t, count in default.type_counts.items())
    assert all(every.type_counts[t] >= count for t, count in default.type_counts.items())
    assert any(every.type_counts[t] > count for t, count in default.type_counts.items())  # repeats within a sentence
    record = json.loads(paper.to_json())
    assert record["convention"] == "isotropy2023" and record["num_sentences"] == len(SENTENCES)
    assert record["config"]["include_specials"] is True and record["config"]["occurrences"] == "first_per_sentence"
    assert record["config"]["min_sentences"] == 2 and record["config"]["redraw_per_layer"] is True
    assert record["config"]["rogue_pairs"] == "with_self" and record["config"]["positive_at_threshold"] is True
    assert json.loads(default.to_json())["config"]["rogue_pairs"] == "distinct"
    assert record["sample_sizes"]["self_similarity/layer_2"] == len(paper.type_self_similarity)
    table = format_layer_table(paper, ["anisotropy", "self_similarity"])
    assert len(table.splitlines()) == 2 + tiny_bert.num_layers + 1
    assert table.splitlines()[0].startswith("geometry (isotropy2023: include_specials True, occurrences first_per_sentence")
    with pytest.raises(ValueError, match="choose one of default, isotropy2023"):
        GeometryConfig(convention="paper").resolved()
    with pytest.raises(ValueError, match="unknown rogue_pairs .self.: choose one of distinct, with_self"):
        GeometryConfig(rogue_pairs="self").resolved()


def test_callback_takes_the_config_whole_and_presets_state_only_changes():
    from jsonargparse import ArgumentParser

    from ctrain.callbacks import GeometryProbe

    assert GeometryProbe().config == GeometryConfig()
    parser = ArgumentParser()
    parser.add_class_arguments(GeometryProbe, "probe")
    parsed = parser.parse_object({"probe": {"config": {"anisotropy_resamples": 5, "convention": "isotropy2023", "num_sentences": 12}}})
    probe = parser.instantiate(parsed).probe
    assert probe.config == GeometryConfig(convention="isotropy2023", anisotropy_resamples=5, num_sentences=12)
    assert probe.num_sentences == 12 and probe.split == "test"
    defaults, checked = GeometryConfig(), 0
    for preset in sorted((ROOT / "callbacks").glob("*.yaml")):
        for callback in (yaml.safe_load(preset.read_text()).get("trainer") or {}).get("callbacks", []):
            if callback["class_path"].endswith("GeometryProbe"):
                for name, value in ((callback.get("init_args") or {}).get("config") or {}).items():
                    assert value != getattr(defaults, name), f"{preset.name} repeats the default {name}={value}"
                    checked += 1
    assert checked


def test_determinism_mode_and_global_rng(tiny_bert):
    config = GeometryConfig(sentence_level=False, anisotropy_resamples=2, informativity_tokens=20, seed=11)
    tiny_bert.train()
    torch.manual_seed(123)
    before = torch.get_rng_state()
    first = geometry_probe(tiny_bert, SENTENCES, config)
    assert torch.equal(torch.get_rng_state(), before)
    assert tiny_bert.training
    assert geometry_probe(tiny_bert, SENTENCES, config).metrics == first.metrics
    other = geometry_probe(tiny_bert, SENTENCES, GeometryConfig(**{**config.__dict__, "seed": 12}))
    assert other.metrics["anisotropy/layer_1"] != first.metrics["anisotropy/layer_1"]
    with pytest.raises(ValueError, match="too small"):
        geometry_probe(tiny_bert, SENTENCES, GeometryConfig(max_memory_mb=0.01))
    assert tiny_bert.training
    tiny_bert.eval()
    geometry_probe(tiny_bert, SENTENCES, config)
    assert not tiny_bert.training


def test_reference_change(tiny_bert):
    config = GeometryConfig(sentence_level=False, anisotropy_resamples=2, informativity_tokens=20)
    other = load_encoder("tiny-bert", seed=1)
    reference = geometry_probe(other, SENTENCES, config)
    result = geometry_probe(tiny_bert, SENTENCES, config, reference=reference.reference_state)
    a_last, a_ref = result.per_layer[-1]["anisotropy"], reference.per_layer[-1]["anisotropy"]
    changes = {
        token: (value - a_last) - (reference.type_self_similarity[token] - a_ref)
        for token, value in result.type_self_similarity.items()
        if token in reference.type_self_similarity
    }
    assert result.metrics["self_similarity_change"] == pytest.approx(np.mean(list(changes.values())), abs=1e-12)
    assert result.sample_sizes["self_similarity_change"] == len(changes)
    top = max(changes, key=changes.get)
    assert result.type_changes["increased"][0] == (top, pytest.approx(changes[top]))
    same = geometry_probe(tiny_bert, SENTENCES, config, reference=result)
    assert same.metrics["self_similarity_change"] == pytest.approx(0.0, abs=1e-12)
    assert isinstance(same, GeometryResult) and not math.isnan(same.metrics["anisotropy/layer_0"])


@pytest.mark.parametrize("convention", ["default", "isotropy2023"])
def test_anisotropy_draws_one_token_from_distinct_sentences(tiny_bert, convention):
    config = GeometryConfig(convention=convention, anisotropy_sentences=20, anisotropy_resamples=4).resolved()
    plan = build_plan(tiny_bert, SENTENCES, config)
    starts = plan.occurrence_start
    layers, resamples, sample = plan.anisotropy_draws.shape
    assert (layers, resamples, sample) == (tiny_bert.num_layers + 1, 4, 20)
    for draw in plan.anisotropy_draws.reshape(-1, sample):
        sentence = torch.searchsorted(starts, draw, right=True) - 1
        assert sentence.unique().numel() == sample  # one token from each of M distinct sentences
    assert plan.anisotropy_draws.unique().numel() > sample  # resamples differ
    redrawn = not torch.equal(plan.anisotropy_draws[0], plan.anisotropy_draws[1])
    assert redrawn == (convention == "isotropy2023")
    everything = build_plan(tiny_bert, SENTENCES, GeometryConfig(convention=convention, anisotropy_sentences=10_000).resolved())
    assert everything.anisotropy_draws.shape[-1] == len(SENTENCES)  # all sentences when fewer than M


def test_plot_written_atomically(tiny_bert, tmp_path):
    from ctrain.reporting.geometry_plots import plot_metrics_by_layer

    result = geometry_probe(tiny_bert, SENTENCES, GeometryConfig(anisotropy_resamples=2, positive_pairs=PAIRS))
    layer_figure = plot_metrics_by_layer(result, tmp_path / "layers.png", "tiny-bert")
    assert layer_figure.read_bytes()[:4] == b"\x89PNG"
    assert [p.name for p in tmp_path.iterdir()] == ["layers.png"]  # no temporary left behind


def test_sentences_without_tokens_in_the_set_are_skipped(tiny_bert):
    # "" is [CLS] [SEP] only: no token once specials are excluded; one sentence per batch, so it forms batches alone
    config = GeometryConfig(sentence_level=False, anisotropy_resamples=2, informativity_tokens=20, batch_tokens=1)
    with_empty = geometry_probe(tiny_bert, SENTENCES[:9] + ["", ""], config)
    without = geometry_probe(tiny_bert, SENTENCES[:9], config)
    assert with_empty.sample_sizes["intra_similarity/layer_1"] == 9
    assert with_empty.metrics["intra_similarity/layer_1"] == pytest.approx(without.metrics["intra_similarity/layer_1"])
    assert with_empty.metrics["norm_mean/layer_1"] == pytest.approx(without.metrics["norm_mean/layer_1"])


@pytest.mark.parametrize("log_spaced", [False, True])
def test_probes_measure_at_their_schedule_and_at_the_last_step(log_spaced):
    from ctrain.callbacks.probes import GeometryProbe

    probe = GeometryProbe(every_n_steps=100, log_spaced=log_spaced)
    due = [step for step in range(401 + 1) if probe._due(step, max_steps=401)]
    assert due == ([0, 1, 3, 10, 30, 100, 300, 401] if log_spaced else [0, 100, 200, 300, 400, 401])
    assert [step for step in range(500) if probe._due(step, max_steps=-1)][:3] == ([0, 1, 3] if log_spaced else [0, 100, 200])
