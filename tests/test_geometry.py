"""Geometry probes against brute-force pairwise implementations, invariants and conventions."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch

from ctrain.encoder import load_encoder
from ctrain.probes.geometry import (
    GeometryConfig,
    GeometryResult,
    Moments,
    _plan,
    alignment,
    format_layer_table,
    geometry_probe,
    informativity_r2,
    intra_sentence_similarity,
    mean_pairwise_cosine,
    norm_stats,
    probe_sentences,
    rogue_shares,
    rogue_summary,
    select_types,
    self_similarity,
    self_similarity_change,
    uniformity,
)

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
    units = torch.nn.functional.normalize(vectors.double(), dim=-1)
    matrix = units @ units.T
    count = len(vectors)
    return float((matrix.sum() - matrix.diagonal().sum()) / (count * (count - 1)))


def brute_self_similarity(vectors, tokens, sentences, first_only, min_occurrences, min_sentences) -> dict[int, float]:
    """Group occurrences per type in Python, qualify, full cosine matrix per type."""
    groups: dict[int, list[int]] = {}
    seen: set[tuple[int, int]] = set()
    totals: dict[int, int] = {}
    in_sentences: dict[int, set[int]] = {}
    for index, (token, sentence) in enumerate(zip(tokens.tolist(), sentences.tolist())):
        totals[token] = totals.get(token, 0) + 1
        in_sentences.setdefault(token, set()).add(sentence)
        if first_only and (token, sentence) in seen:
            continue
        seen.add((token, sentence))
        groups.setdefault(token, []).append(index)
    return {
        token: matrix_mean_cosine(vectors[members])
        for token, members in groups.items()
        if totals[token] >= min_occurrences and len(in_sentences[token]) >= min_sentences and len(members) >= 2
    }


# ------------------------------------------------------------------ pure functions on random data


def test_mean_pairwise_cosine_matches_double_loop():
    generator = torch.Generator().manual_seed(1)
    vectors = torch.randn(3, 30, 8, generator=generator) + 0.5
    measure = mean_pairwise_cosine(vectors)
    assert measure.n == 30
    for layer in range(3):
        assert float(measure.value[layer]) == pytest.approx(loop_mean_cosine(vectors[layer]), abs=TOL)


def test_identical_vectors_give_one_and_gaussian_gives_zero():
    same = torch.tensor([0.3, -1.0, 2.0]).repeat(12, 1)
    assert float(mean_pairwise_cosine(same).value) == pytest.approx(1.0, abs=TOL)
    tokens = torch.tensor([7] * 12)
    _, _, ss = self_similarity(same, tokens, torch.arange(12))
    assert float(ss.value) == pytest.approx(1.0, abs=TOL)
    assert float(intra_sentence_similarity(same, torch.tensor([0] * 6 + [1] * 6)).value) == pytest.approx(1.0, abs=TOL)
    gaussian = torch.randn(4000, 64, generator=torch.Generator().manual_seed(2))
    assert abs(float(mean_pairwise_cosine(gaussian).value)) < 2e-3


@pytest.mark.parametrize(
    "occurrences,min_occurrences,min_sentences", [("all", 5, 1), ("first", 5, 2), ("all", 3, 2), ("first", 2, 1)]
)
def test_self_similarity_matches_brute_force(occurrences, min_occurrences, min_sentences):
    generator = torch.Generator().manual_seed(3)
    tokens = torch.randint(0, 12, (300,), generator=generator)
    sentences = torch.randint(0, 20, (300,), generator=generator).sort().values
    vectors = torch.randn(2, 300, 6, generator=generator) + torch.randn(12, 6, generator=generator)[tokens]
    type_ids, per_type, measure = self_similarity(vectors, tokens, sentences, occurrences, min_occurrences, min_sentences)
    for layer in range(2):
        expected = brute_self_similarity(
            vectors[layer], tokens, sentences, occurrences == "first", min_occurrences, min_sentences
        )
        assert sorted(expected) == type_ids.tolist()
        got = dict(zip(type_ids.tolist(), per_type[layer].tolist()))
        for token, value in expected.items():
            assert got[token] == pytest.approx(value, abs=TOL)
        assert float(measure.value[layer]) == pytest.approx(np.mean(list(expected.values())), abs=TOL)
    assert measure.n == len(type_ids)


def test_isotropy2023_qualification_rule():
    # type 1: 5 occurrences in 1 sentence (fails >= 2 sentences); type 2: 5 occurrences in 2 sentences
    # (qualifies, 2 first occurrences used); type 3: 4 occurrences in 4 sentences (fails >= 5 in total).
    tokens = torch.tensor([1, 1, 1, 1, 1, 2, 2, 2, 3, 2, 2, 3, 3, 3])
    sentences = torch.tensor([0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 2, 3])
    selection = select_types(tokens, sentences, "first", min_occurrences=5, min_sentences=2)
    assert selection.type_ids.tolist() == [2]
    assert selection.counts.tolist() == [2]
    assert (selection.slot >= 0).nonzero().squeeze(1).tolist() == [5, 9]  # first occurrence in each sentence
    vectors = torch.randn(len(tokens), 4, generator=torch.Generator().manual_seed(4))
    _, per_type, _ = self_similarity(vectors, tokens, sentences, "first", 5, 2)
    assert float(per_type[0]) == pytest.approx(cosine(vectors[5], vectors[9]), abs=TOL)
    # the default rule (all occurrences, >= 5 in total, any number of sentences) takes types 1 and 2
    assert select_types(tokens, sentences, "all", 5, 1).type_ids.tolist() == [1, 2]


def test_intra_and_norms_match_loops():
    generator = torch.Generator().manual_seed(5)
    sentence_ids = torch.tensor([0, 0, 0, 2, 2, 3, 3, 3, 3])  # sentence 1 has no token: skipped
    vectors = torch.randn(2, len(sentence_ids), 5, generator=generator) + 1.0
    measure = intra_sentence_similarity(vectors, sentence_ids)
    assert measure.n == 3
    for layer in range(2):
        per_sentence = []
        for sentence in (0, 2, 3):
            members = vectors[layer][sentence_ids == sentence]
            mean = members.double().mean(0)
            per_sentence.append(np.mean([cosine(member, mean) for member in members]))
        assert float(measure.value[layer]) == pytest.approx(np.mean(per_sentence), abs=TOL)
    mean, std = norm_stats(vectors)
    norms = vectors.double().norm(dim=-1)
    assert torch.allclose(mean.value, norms.mean(-1)) and torch.allclose(std.value, norms.std(-1))
    merged = Moments.of(norms[:, :4]).merge(Moments.of(norms[:, 4:]))
    assert torch.allclose(merged.mean, norms.mean(-1)) and torch.allclose(merged.std(), norms.std(-1))


def test_rogue_shares_and_summary():
    generator = torch.Generator().manual_seed(6)
    vectors = torch.randn(200, 10, generator=generator) + torch.linspace(0, 3, 10)
    shares = rogue_shares(vectors).value
    units = [v / v.norm() for v in vectors.double()]
    s = sum(units)
    assert torch.allclose(shares, s**2 / (s**2).sum(), atol=TOL)
    assert float(shares.sum()) == pytest.approx(1.0, abs=TOL)
    summary = rogue_summary(shares)
    ordered = sorted(shares.tolist(), reverse=True)
    for k in (1, 2, 3):
        assert float(summary[f"rogue_top{k}"]) == pytest.approx(ordered[k - 1], abs=TOL)
    for percent in (10, 20, 50):
        dims = next(i + 1 for i in range(10) if sum(ordered[: i + 1]) >= percent / 100)
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
    xn, yn = (torch.nn.functional.normalize(v.double(), dim=-1) for v in (x, y))
    assert float(alignment(x, y).value) == pytest.approx(float(((xn - yn).norm(dim=1) ** 2).mean()), abs=TOL)
    expected = float(torch.pdist(xn).pow(2).mul(-2).exp().mean().log())
    assert float(uniformity(x, compute_dtype=torch.float64).value) == pytest.approx(expected, abs=TOL)
    assert float(uniformity(x, chunk_rows=3, compute_dtype=torch.float64).value) == pytest.approx(expected, abs=TOL)
    assert float(uniformity(x).value) == pytest.approx(expected, abs=1e-6)  # float32 distances
    assert uniformity(x).n == 40


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
    plan = _plan(encoder, sentences, config)  # used for its processing order and random draws only
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
            x, tokens, sentence_of, config.occurrences == "first", config.min_occurrences, config.min_sentences
        )
        metrics[f"self_similarity/layer_{layer}"] = float(np.mean(list(per_type.values())))
        metrics[f"self_similarity_adjusted/layer_{layer}"] = metrics[f"self_similarity/layer_{layer}"] - baseline
        intra = [np.mean([cosine(h, s[layer].mean(0)) for h in s[layer]]) for s in states if s.shape[1]]
        metrics[f"intra_similarity/layer_{layer}"] = float(np.mean(intra))
        metrics[f"intra_similarity_adjusted/layer_{layer}"] = float(np.mean(intra)) - baseline
        metrics[f"norm_mean/layer_{layer}"] = float(x.norm(dim=1).mean())
        metrics[f"norm_std/layer_{layer}"] = float(x.norm(dim=1).std())
        s = sum(v / v.norm() for v in x)
        shares = sorted((s**2 / (s**2).sum()).tolist(), reverse=True)
        order = (s**2).argsort(descending=True)
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


@pytest.mark.parametrize("model,convention", [("tiny_bert", "default"), ("tiny_roberta", "isotropy2023")])
def test_probe_matches_brute_force(model, convention, request):
    encoder = request.getfixturevalue(model)
    config = GeometryConfig(
        convention=convention, anisotropy_sentences=30, anisotropy_resamples=3, informativity_tokens=60, positive_pairs=PAIRS
    )
    expected = brute_force_probe(encoder, SENTENCES, config)
    result = geometry_probe(encoder, SENTENCES, config)
    assert result.convention == convention
    assert set(expected) <= set(result.metrics)
    for key, value in expected.items():
        assert result.metrics[key] == pytest.approx(value, abs=MODEL_TOL), key
    # streaming in many small batches (types and resamples spread over them) gives the same values
    for change in ({"max_memory_mb": 1.0}, {"batch_tokens": 40}):
        small_config = GeometryConfig(**{**config.__dict__, **change})
        assert len(_plan(encoder, SENTENCES, small_config.resolved()).batches) >= 3, change
        small = geometry_probe(encoder, SENTENCES, small_config)
        for key, value in result.metrics.items():
            assert small.metrics[key] == pytest.approx(value, abs=MODEL_TOL), (change, key)


def test_conventions_specials_and_occurrences(tiny_bert):
    common = dict(sentence_level=False, anisotropy_resamples=2, informativity_tokens=20)
    default = geometry_probe(tiny_bert, SENTENCES, GeometryConfig(**common))
    paper = geometry_probe(tiny_bert, SENTENCES, GeometryConfig(convention="isotropy2023", **common))
    assert "[CLS]" not in default.type_self_similarity and "[SEP]" not in default.type_self_similarity
    assert paper.type_counts["[CLS]"] == len(SENTENCES)  # first occurrence per sentence, specials included
    shared = default.type_counts.keys() & paper.type_counts.keys()
    assert shared and all(default.type_counts[t] >= paper.type_counts[t] for t in shared)
    assert any(default.type_counts[t] > paper.type_counts[t] for t in shared)  # repeats within a sentence dropped
    record = json.loads(paper.to_json())
    assert record["convention"] == "isotropy2023"
    assert record["config"]["include_specials"] is True and record["config"]["occurrences"] == "first"
    assert record["config"]["min_sentences"] == 2 and record["config"]["redraw_per_layer"] is True
    assert record["sample_sizes"]["self_similarity/layer_2"] == len(paper.type_self_similarity)
    table = format_layer_table(paper, ["anisotropy", "self_similarity"])
    assert "isotropy2023" in table and len(table.splitlines()) == 2 + tiny_bert.num_layers + 1
    with pytest.raises(ValueError):
        GeometryConfig(convention="paper").resolved()


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
    plan = _plan(tiny_bert, SENTENCES, config)
    starts = plan.occurrence_start
    layers, resamples, sample = plan.anisotropy_draws.shape
    assert (layers, resamples, sample) == (tiny_bert.num_layers + 1, 4, 20)
    for draw in plan.anisotropy_draws.reshape(-1, sample):
        sentence = torch.searchsorted(starts, draw, right=True) - 1
        assert sentence.unique().numel() == sample  # one token from each of M distinct sentences
    assert plan.anisotropy_draws.unique().numel() > sample  # resamples differ
    redrawn = not torch.equal(plan.anisotropy_draws[0], plan.anisotropy_draws[1])
    assert redrawn == (convention == "isotropy2023")
    everything = _plan(tiny_bert, SENTENCES, GeometryConfig(convention=convention, anisotropy_sentences=10_000).resolved())
    assert everything.anisotropy_draws.shape[-1] == len(SENTENCES)  # all sentences when fewer than M


def test_plots_written_atomically(tiny_bert, tmp_path):
    from ctrain.plots.geometry import plot_metrics_by_layer, plot_metrics_by_step

    result = geometry_probe(tiny_bert, SENTENCES, GeometryConfig(anisotropy_resamples=2, positive_pairs=PAIRS))
    layer_figure = plot_metrics_by_layer(result, tmp_path / "layers.png")
    records = [(step, {f"geometry/{k}": v + step for k, v in result.metrics.items()}) for step in (0, 10, 3)]
    step_figure = plot_metrics_by_step(records, tmp_path / "steps.png", layers=[0, 2], log_steps=True)
    assert layer_figure.read_bytes()[:4] == b"\x89PNG" and step_figure.read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["layers.png", "steps.png"]  # no temporary left behind


def test_sentences_without_tokens_in_the_set_are_skipped(tiny_bert):
    # "" is [CLS] [SEP] only: no token once specials are excluded; one sentence per batch, so it forms batches alone
    config = GeometryConfig(sentence_level=False, anisotropy_resamples=2, informativity_tokens=20, batch_tokens=1)
    with_empty = geometry_probe(tiny_bert, SENTENCES[:9] + ["", ""], config)
    without = geometry_probe(tiny_bert, SENTENCES[:9], config)
    assert with_empty.sample_sizes["intra_similarity/layer_1"] == 9
    assert with_empty.metrics["intra_similarity/layer_1"] == pytest.approx(without.metrics["intra_similarity/layer_1"])
    assert with_empty.metrics["norm_mean/layer_1"] == pytest.approx(without.metrics["norm_mean/layer_1"])
