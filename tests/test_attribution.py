"""IG and SHAP word weights (docs/metrics.md, "Weights") against captum, brute-force Shapley values and closed forms."""

import itertools
import math

import numpy as np
import pytest
import torch
from reference import (
    brute_force_shapley,
    masked_value,
)

from ctrain.models.encoder import load_encoder, word_special_ids
from ctrain.probes.weighting.captum_peer import captum_loop_weights
from ctrain.probes.weighting.ig import (
    integrated_gradients,
    output_directions,
    pad_baseline,
    quadrature_rule,
    unit_weights,
)
from ctrain.probes.weighting.shapley import (
    owen_values,
    shap_weights,
    shapley_coefficients,
    shapley_values,
)

SENTENCES = ["a man plays guitar", "the quick brown fox jumps over it"]


@pytest.fixture(scope="module", params=["tiny-bert", "tiny-roberta", "tiny-mpnet"])
def encoder(request):
    return load_encoder(request.param).eval()


def test_exact_weights_equal_captum_one_output_at_a_time(encoder):
    batch = encoder.tokenize(SENTENCES)
    ours = integrated_gradients(encoder, batch["input_ids"], batch["attention_mask"], steps=6, vjp_batch=16)
    reference = captum_loop_weights(encoder, batch["input_ids"], batch["attention_mask"], steps=6)
    torch.testing.assert_close(ours.weights, reference, rtol=1e-4, atol=1e-6)
    special = encoder.special_mask(batch["input_ids"])
    assert ours.weights[special].eq(0).all() and ours.weights[~special].gt(0).all()


def test_explicit_positions_reproduce_the_models_own(encoder):
    batch = encoder.tokenize(SENTENCES)  # padded: RoBERTa/MPNet would shift positions if derived from embeddings
    x, _ = pad_baseline(encoder, batch["input_ids"])
    with torch.no_grad():
        own = encoder(**batch)
        explicit = encoder(inputs_embeds=x, attention_mask=batch["attention_mask"], position_ids=encoder.position_ids(batch["input_ids"]))
    torch.testing.assert_close(explicit, own)


def test_quadrature_rules():
    for method, steps in (("gauss_legendre", 7), ("riemann_trapezoid", 9)):
        nodes, weights = quadrature_rule(method, steps)
        assert weights.sum().item() == pytest.approx(1.0, abs=1e-14)
        assert (weights * nodes**2).sum().item() == pytest.approx(1 / 3, abs=0.01 if method == "riemann_trapezoid" else 1e-14)


def test_completeness_within_quadrature_error(tiny_bert):
    batch = tiny_bert.tokenize(SENTENCES)
    error = {
        (method, steps): integrated_gradients(tiny_bert, **batch, steps=steps, quadrature=method).completeness_error
        for method, steps in [("riemann_trapezoid", 4), ("riemann_trapezoid", 8), ("riemann_trapezoid", 16), ("gauss_legendre", 8)]
    }
    # trapezoid error is O(h^2): halving the step quarters it; Gauss-Legendre at 8 nodes is at float precision
    assert (error[("riemann_trapezoid", 8)] < 0.4 * error[("riemann_trapezoid", 4)]).all()
    assert (error[("riemann_trapezoid", 16)] < 0.4 * error[("riemann_trapezoid", 8)]).all()
    assert (error[("gauss_legendre", 8)] < 1e-5).all()


def test_sketch_error_falls_like_one_over_sqrt_r(tiny_bert):
    batch = tiny_bert.tokenize(SENTENCES)
    exact = integrated_gradients(tiny_bert, **batch, steps=4).weights.double().pow(2)
    positions = exact.gt(0)

    def mean_squared_error(probes):
        estimates = [
            integrated_gradients(tiny_bert, **batch, steps=4, mode="sketch", sketch_size=probes, seed=seed).weights.double().pow(2)
            for seed in range(8)
        ]
        return torch.stack([((e - exact) / exact)[positions].pow(2).mean() for e in estimates]).mean().item()

    # independent probes: the variance of the c^2 estimate is sigma^2 / r, so error * sqrt(r) is constant
    ratio = (mean_squared_error(2) * 2) / (mean_squared_error(32) * 32)
    assert 0.4 < ratio < 2.5


def test_orthogonal_sketch_is_exact_at_full_rank(tiny_bert):
    batch = tiny_bert.tokenize(SENTENCES)
    exact = integrated_gradients(tiny_bert, **batch, steps=4)
    full = integrated_gradients(tiny_bert, **batch, steps=4, mode="sketch", sketch_size=tiny_bert.hidden_size, sketch_kind="orthogonal")
    torch.testing.assert_close(full.weights, exact.weights, rtol=1e-5, atol=1e-7)
    half = integrated_gradients(tiny_bert, **batch, steps=4, mode="sketch", sketch_size=tiny_bert.hidden_size // 2, sketch_kind="orthogonal")
    assert not torch.allclose(half.weights, exact.weights, rtol=1e-3)


def test_sketch_completeness_is_exact_for_any_number_of_probes(tiny_bert):
    batch = tiny_bert.tokenize(SENTENCES)
    for steps in (2, 4):  # errors of about 1e-2 and 1e-5: the JVP and the summed IG agree on both
        exact = integrated_gradients(tiny_bert, **batch, steps=steps, quadrature="riemann_trapezoid")
        sketch = integrated_gradients(tiny_bert, **batch, steps=steps, quadrature="riemann_trapezoid", mode="sketch", sketch_size=2)
        torch.testing.assert_close(sketch.completeness_error, exact.completeness_error, rtol=1e-3, atol=1e-6)


def test_exact_shap_equals_brute_force_over_permutations(encoder):
    input_ids = encoder.tokenize(["a man plays guitar"])["input_ids"][0]
    assert 3 <= int((~encoder.special_mask(input_ids)).sum()) <= 6
    torch.testing.assert_close(shapley_values(encoder, input_ids), brute_force_shapley(encoder, input_ids), rtol=1e-4, atol=1e-6)


def test_shapley_coefficients_match_the_factorial_formula():
    p = 4
    coefficients = shapley_coefficients(p)
    for mask, i in itertools.product(range(2**p), range(p)):
        size = bin(mask).count("1")
        if mask >> i & 1:
            expected = math.factorial(size - 1) * math.factorial(p - size) / math.factorial(p)
        else:
            expected = -math.factorial(size) * math.factorial(p - size - 1) / math.factorial(p)
        assert coefficients[mask, i].item() == pytest.approx(expected, rel=1e-12)


def test_permutation_shap_is_efficient_and_converges(tiny_bert):
    input_ids = tiny_bert.tokenize(["the quick brown fox jumps"])["input_ids"][0]
    players = torch.nonzero(~tiny_bert.special_mask(input_ids))[:, 0].tolist()
    exact = shapley_values(tiny_bert, input_ids)
    sampled = shapley_values(tiny_bert, input_ids, max_exact_tokens=0, permutations=200, seed=1)
    total = masked_value(tiny_bert, input_ids, players, range(len(players))) - masked_value(tiny_bert, input_ids, players, [])
    torch.testing.assert_close(sampled.sum(0), total, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(exact.sum(0), total, rtol=1e-4, atol=1e-6)
    assert ((sampled - exact).norm() / exact.norm()).item() < 0.01
    torch.testing.assert_close(sampled, shapley_values(tiny_bert, input_ids, max_exact_tokens=0, permutations=200, seed=1))


def test_shap_weights_of_a_padded_batch(tiny_bert):
    batch = tiny_bert.tokenize(SENTENCES)
    weights = shap_weights(tiny_bert, **batch, sentences=SENTENCES).weights
    sampled = shap_weights(tiny_bert, **batch, sentences=SENTENCES, mode="permutation", permutations=8).weights
    assert sampled.gt(0).eq(weights.gt(0)).all() and not torch.allclose(sampled, weights)
    for b, sentence in enumerate(SENTENCES):
        alone = tiny_bert.tokenize([sentence])["input_ids"][0]
        expected = shapley_values(tiny_bert, alone).norm(dim=1)
        keep = ~tiny_bert.special_mask(batch["input_ids"][b])
        torch.testing.assert_close(weights[b][keep], expected)
        assert weights[b][~keep].eq(0).all()


def test_unit_weights_normalise_over_each_sentence():
    position_weights = torch.tensor([[0.0, 3.0, 4.0, 2.0, 0.0], [0.0, 1.0, 0.0, 0.0, 0.0]])
    unit_of_position = torch.tensor([[-1, 0, 0, 1, -1], [-1, 2, -1, -1, -1]])  # unit 0 is a two-piece word
    weights, normalised = unit_weights(position_weights, unit_of_position, torch.tensor([0, 0, 1]))
    torch.testing.assert_close(weights, torch.tensor([5.0, 2.0, 1.0], dtype=torch.float64))
    torch.testing.assert_close(normalised, torch.tensor([5 / 3.5, 2 / 3.5, 1.0], dtype=torch.float64))


def test_unknown_shap_mode_and_sketch_kind_are_one_line_errors(tiny_bert):
    batch = tiny_bert.tokenize(SENTENCES)
    with pytest.raises(ValueError, match="unknown shap_mode 'kernel': choose one of exact, permutation, partition"):
        shap_weights(tiny_bert, **batch, sentences=SENTENCES, mode="kernel")
    with pytest.raises(ValueError, match="unknown sketch kind"):
        output_directions("sketch", 8, 2, "gaussian", torch.Generator())


def _additive_game(tokenizer, table: np.ndarray):
    """v(masked sentences) = sum over their non-special tokens of a per-id row: Shapley values are table[id] - table[MASK]."""
    special = set(word_special_ids(tokenizer)) - {tokenizer.mask_token_id}

    def value(sentences: list[str]) -> np.ndarray:
        ids = tokenizer(list(sentences))["input_ids"]
        return np.stack([table[[i for i in row if i not in special]].sum(0) for row in ids])

    return value


def test_partition_shap_is_shapley_on_an_additive_game(tiny_bert):
    tokenizer = tiny_bert.tokenizer
    table = np.random.default_rng(0).normal(size=(tokenizer.vocab_size, 3))
    sentence = "the quick brown fox jumps over the lazy dog"  # whole-word tokens: masking never re-splits a word
    ids = tokenizer(sentence)["input_ids"]
    phi = owen_values(_additive_game(tokenizer, table), tokenizer, sentence, max_evals=2000)
    expected = table[ids] - table[tokenizer.mask_token_id]
    expected[[0, -1]] = 0  # [CLS] and [SEP] are never players
    np.testing.assert_allclose(phi, expected, atol=1e-10)


def test_partition_shap_is_efficient_and_close_to_exact_shapley(tiny_bert):
    sentence = "a man plays the guitar"
    input_ids = tiny_bert.tokenize([sentence])["input_ids"][0]
    players = torch.nonzero(~tiny_bert.special_mask(input_ids))[:, 0].tolist()
    exact = shapley_values(tiny_bert, input_ids)

    def encode(masked):
        with torch.no_grad():
            return tiny_bert.eval().encode(list(masked)).double().numpy()

    owen = torch.from_numpy(owen_values(encode, tiny_bert.tokenizer, sentence, max_evals=2000))
    total = masked_value(tiny_bert, input_ids, players, range(len(players))) - masked_value(tiny_bert, input_ids, players, [])
    torch.testing.assert_close(owen.sum(0), total, rtol=1e-4, atol=1e-6)  # Owen values are efficient
    owen_weights, exact_weights = owen[players].norm(dim=1), exact.norm(dim=1)
    # a coalition structure changes the weights of a non-additive game, but not by much
    assert ((owen_weights - exact_weights).norm() / exact_weights.norm()).item() < 0.25
    assert np.corrcoef(owen_weights, exact_weights)[0, 1] > 0.8
    batch = tiny_bert.tokenize([sentence])
    weights = shap_weights(tiny_bert, **batch, sentences=[sentence], mode="partition", max_evals=2000).weights[0]
    torch.testing.assert_close(weights[players], owen_weights)


def test_completeness_along_the_directions_is_free_and_exact_when_they_span_the_outputs(tiny_bert, tmp_path):
    from ctrain.models.encoder import load_encoder
    from ctrain.models.export import save_sentence_transformer

    save_sentence_transformer(tiny_bert, tmp_path / "saved", "cos")
    tiny_bert = load_encoder(str(tmp_path / "saved")).eval()  # as a user loads a model: from a directory
    batch = tiny_bert.tokenize(SENTENCES)
    path = integrated_gradients(tiny_bert, **batch, steps=2, mode="sketch", sketch_size=2)
    spanning = integrated_gradients(
        tiny_bert, **batch, steps=2, mode="sketch", sketch_size=tiny_bert.hidden_size, sketch_kind="orthogonal", completeness="directions"
    )  # fmt: skip
    torch.testing.assert_close(spanning.completeness_error, path.completeness_error, rtol=1e-3, atol=1e-6)
    few = integrated_gradients(tiny_bert, **batch, steps=2, mode="sketch", sketch_size=4, sketch_kind="orthogonal", completeness="directions")
    torch.testing.assert_close(few.weights, integrated_gradients(tiny_bert, **batch, steps=2, mode="sketch", sketch_size=4, sketch_kind="orthogonal").weights)
    ratio = few.completeness_error / path.completeness_error  # a random projection of the same residual: same order
    assert bool(((ratio > 0.1) & (ratio < 10)).all()), ratio
    with pytest.raises(ValueError, match="unknown completeness check 'jvp'"):
        integrated_gradients(tiny_bert, **batch, steps=2, completeness="jvp")
