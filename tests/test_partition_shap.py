"""The native PartitionSHAP recursion (ctrain.probes.weighting.partition) against the shap library it reimplements."""

import numpy as np
import pytest
import torch

from ctrain.models.encoder import attribution_mode, load_encoder
from ctrain.probes.weighting.partition import TextGame, batched_owen_values, length_grouped_encoder, text_masker
from ctrain.probes.weighting.shapley import owen_values, shap_weights
from ctrain.probes.weighting import KURITA2023_WEIGHTING

SENTENCES = [
    "a man plays the guitar.",
    "The quick brown fox jumps over the lazy dog, doesn't it?",
    "Obama's approval ratings fell sharply in 2011 (after the debt-ceiling fight).",
    "",  # no players but the special tokens
    "A woman is slicing an onion into tiny pieces while the children watch from the doorway of the kitchen.",
]


@pytest.fixture(scope="module", params=["tiny-bert", "tiny-roberta", "tiny-mpnet"])
def encoder(request):
    return load_encoder(request.param).eval()


def library_encode(encoder, batch_size=256):
    """The value function ``shap_weights`` hands the library: ``SentenceEncoder.encode`` of the masked strings."""

    def encode(masked):
        with attribution_mode(encoder), torch.no_grad():
            return encoder.encode(list(masked), batch_size=batch_size).double().cpu().numpy()

    return encode


def test_masked_strings_are_the_maskers(encoder):
    masker = text_masker(encoder.tokenizer)
    rng = np.random.default_rng(0)
    for sentence in SENTENCES:
        game = TextGame.from_masker(masker, sentence)
        assert game.players == len(encoder.tokenizer(sentence)["input_ids"])
        for _ in range(50):
            mask = rng.random(game.players) < rng.random()
            bits = sum(1 << i for i in range(game.players) if mask[i])
            assert game.masked_string(bits) == masker(mask, sentence)[0][0]


def nonadditive_game(tokenizer, seed=0):
    """A deterministic non-additive value function of the masked strings, computed row by row in float64
    (so its outputs do not depend on how the strings are batched)."""
    rng = np.random.default_rng(seed)
    table, mix = rng.normal(size=(tokenizer.vocab_size + 8, 6)), rng.normal(size=(6, 5))

    def value(sentences):
        ids = tokenizer(list(sentences))["input_ids"]
        rows = []
        for row in ids:
            vectors = table[row] * np.linspace(1.0, 2.0, len(row))[:, None]  # position-dependent
            rows.append(np.tanh(vectors.sum(0) @ mix) * np.exp(-0.1 * len(row)))
        return np.stack(rows)

    return value


@pytest.mark.parametrize(("max_evals", "batch_size"), [(500, 256), (40, 6), (17, 4), (60, 1)])
def test_the_recursion_equals_the_librarys(encoder, max_evals, batch_size):
    """Same strings, tree, heap order, tie-breaking draws and budget: equal to float64 rounding, small budgets included."""
    value = nonadditive_game(encoder.tokenizer)
    for seed, sentence in enumerate(SENTENCES):
        np.random.seed(seed)
        reference = owen_values(value, encoder.tokenizer, sentence, max_evals, batch_size)
        np.random.seed(seed)
        (phi,) = batched_owen_values(value, encoder.tokenizer, [sentence], max_evals, batch_size, tie_breaks="global")
        np.testing.assert_allclose(phi, reference, rtol=0, atol=1e-12)


def test_seeded_tie_breaks_are_deterministic_and_equal_the_library_when_the_budget_suffices(encoder):
    value = nonadditive_game(encoder.tokenizer)
    ours = batched_owen_values(value, encoder.tokenizer, SENTENCES, 5000, 256, seeds=[7] * len(SENTENCES))
    again = batched_owen_values(value, encoder.tokenizer, SENTENCES[::-1], 5000, 256, seeds=[3] * len(SENTENCES))[::-1]
    for sentence, phi, phi_again in zip(SENTENCES, ours, again):
        np.testing.assert_allclose(phi, owen_values(value, encoder.tokenizer, sentence, 5000, 256), rtol=0, atol=1e-12)
        np.testing.assert_allclose(phi, phi_again, rtol=0, atol=1e-12)
    short = batched_owen_values(value, encoder.tokenizer, SENTENCES, 40, 6, seeds=[1] * len(SENTENCES))
    assert all(np.array_equal(a, b) for a, b in zip(short, batched_owen_values(value, encoder.tokenizer, SENTENCES, 40, 6, seeds=[1] * len(SENTENCES))))


def test_equals_the_library_with_its_own_batches(encoder):
    """The library as ``shap_weights`` runs it (``encode``, padded batches of up to 256 strings): equal to float32
    rounding of the model's outputs (sentences whose recursion fits the budget, so no tie decides anything)."""
    ours = batched_owen_values(length_grouped_encoder(encoder), encoder.tokenizer, SENTENCES, 500, 256)
    for sentence, phi in zip(SENTENCES, ours):
        reference = owen_values(library_encode(encoder), encoder.tokenizer, sentence, 500, 256)
        np.testing.assert_allclose(phi, reference, rtol=0, atol=1e-6)


def library_with_its_defaults(value_function, tokenizer, sentence, max_evals, seed):
    """``shap.PartitionExplainer`` on ``shap.maskers.Text(tokenizer)`` as the paper called it: no batch size given
    (``"auto"``), ties drawn from NumPy's global RNG seeded with ``seed``."""
    import shap

    np.random.seed(seed)
    explainer = shap.PartitionExplainer(value_function, shap.maskers.Text(tokenizer))
    return explainer([sentence], max_evals=max_evals, silent=True).values[0]


def native_with_the_setups_batch(value_function, tokenizer, sentence, max_evals, seed):
    """The native recursion at the kurita2023 setup's ``shap_batch_size``, ties drawn as the library draws them."""
    np.random.seed(seed)
    batch = KURITA2023_WEIGHTING.shap_batch_size
    return batched_owen_values(value_function, tokenizer, [sentence], max_evals, batch, tie_breaks="global")[0]


def test_the_setups_batch_is_the_librarys_default_where_the_budget_runs_out(encoder):
    """A 100-evaluation budget runs out on the long sentences, where the batch decides which nodes get expanded: the
    setup's native recursion equals ``PartitionExplainer`` called with its defaults; batch 256 does not."""
    native_values, library_values = length_grouped_encoder(encoder), library_encode(encoder)
    changed_by_batch = 0
    for seed, sentence in enumerate(SENTENCES):
        reference = library_with_its_defaults(library_values, encoder.tokenizer, sentence, 100, seed)
        phi = native_with_the_setups_batch(native_values, encoder.tokenizer, sentence, 100, seed)
        np.testing.assert_allclose(phi, reference, rtol=0, atol=1e-6)
        np.random.seed(seed)
        np.testing.assert_allclose(owen_values(library_values, encoder.tokenizer, sentence, 100), reference, rtol=0, atol=1e-6)
        np.random.seed(seed)
        (wide,) = batched_owen_values(native_values, encoder.tokenizer, [sentence], 100, 256, tie_breaks="global")
        changed_by_batch += np.abs(wide - reference).max() > 0.01 * np.abs(reference).max()
    assert changed_by_batch >= 1  # the budget binds: the comparison above tells the batches apart


def test_is_shapley_on_an_additive_game(tiny_bert):
    tokenizer = tiny_bert.tokenizer
    table = np.random.default_rng(0).normal(size=(tokenizer.vocab_size, 3))
    special = set(tokenizer.all_special_ids) - {tokenizer.mask_token_id}  # MASK counts: v(empty) = sum of MASK rows

    def value(sentences):
        ids = tokenizer(list(sentences))["input_ids"]
        return np.stack([table[[i for i in row if i not in special]].sum(0) for row in ids])

    sentences = ["the quick brown fox jumps over the lazy dog", "a man plays guitar"]
    for sentence, phi in zip(sentences, batched_owen_values(value, tokenizer, sentences, max_evals=2000)):
        ids = tokenizer(sentence)["input_ids"]
        expected = table[ids] - table[tokenizer.mask_token_id]
        expected[[0, -1]] = 0
        np.testing.assert_allclose(phi, expected, atol=1e-10)


def test_shap_weights_native_mode_equals_partition_mode(tiny_bert):
    sentences = SENTENCES[:3]
    batch = tiny_bert.tokenize(sentences)
    library = shap_weights(tiny_bert, **batch, sentences=sentences, mode="partition").weights
    native = shap_weights(tiny_bert, **batch, sentences=sentences, mode="partition_native").weights
    torch.testing.assert_close(native, library, rtol=0, atol=1e-6)


def test_the_text_masker_is_built_once_per_tokenizer(tiny_bert):
    """Both SHAP paths, over several sentences and calls, share one shap.maskers.Text of the tokenizer."""
    text_masker.cache_clear()
    sentences = SENTENCES[:2]
    batch = tiny_bert.tokenize(sentences)
    for mode in ("partition", "partition_native", "partition"):
        shap_weights(tiny_bert, **batch, sentences=sentences, mode=mode, max_evals=20)
    assert text_masker.cache_info().misses == 1


@pytest.mark.slow
def test_equals_the_library_on_minilm():
    """all-MiniLM-L6-v2 and its tokenizer, the library exactly as ``shap_mode: partition`` runs it, on sentences the
    500-evaluation budget covers: max |phi difference| <= 1e-6. Where the budget runs out: the test below (MiniLM,
    the setup's batch) and test_the_recursion_equals_the_librarys (tiny models, batch 256, the library's tie-breaks)."""
    encoder = load_encoder("all-MiniLM-L6-v2").eval()
    sentences = SENTENCES[1:3]  # punctuation, a contraction, digits (the tiny models run all of SENTENCES)
    ours = batched_owen_values(length_grouped_encoder(encoder), encoder.tokenizer, sentences, 500, 256)
    for sentence, phi in zip(sentences, ours):
        reference = owen_values(library_encode(encoder), encoder.tokenizer, sentence, 500, 256)
        assert np.abs(phi - reference).max() <= 1e-6


@pytest.mark.slow
def test_the_setup_equals_the_library_with_its_defaults_on_long_sts_b_sentences():
    """all-MiniLM-L6-v2 on the first STS-B dev sentence of 27 tokens or more (specials not counted), where the
    500-evaluation budget runs out: the setup's native recursion equals ``PartitionExplainer`` with its defaults
    (max |phi difference| <= 1e-6), and differs from batch 256 by more than rounding."""
    from ctrain.probes.sentences import sts_b_sentences

    encoder = load_encoder("all-MiniLM-L6-v2").eval()
    tokenizer = encoder.tokenizer
    long = [s for s in sts_b_sentences("dev") if len(tokenizer(s, add_special_tokens=False)["input_ids"]) >= 27][:1]
    native_values, library_values = length_grouped_encoder(encoder), library_encode(encoder)
    for seed, sentence in enumerate(long):
        reference = library_with_its_defaults(library_values, tokenizer, sentence, 500, seed)
        phi = native_with_the_setups_batch(native_values, tokenizer, sentence, 500, seed)
        assert np.abs(phi - reference).max() <= 1e-6
        np.random.seed(seed)
        (wide,) = batched_owen_values(native_values, tokenizer, [sentence], 500, 256, tie_breaks="global")
        assert np.abs(wide - reference).max() > 1e-4


def test_weighting_probe_with_native_shap_equals_the_library_path(tiny_bert):
    import dataclasses

    from ctrain.probes.weighting import WeightingConfig, weighting_probe

    sentences = SENTENCES[:3] + ["three dogs run through the snow", "a woman is slicing an onion"]
    config = WeightingConfig(methods=("shap",), shap_mode="partition", batch_size=2, min_count=1, theorem=False)
    library = weighting_probe(tiny_bert, sentences, config)
    native = weighting_probe(tiny_bert, sentences, dataclasses.replace(config, shap_mode="partition_native"))
    np.testing.assert_allclose(
        native.units.weights["shap"], library.units.weights["shap"], rtol=0, atol=1e-6
    )
    assert native.metrics.keys() == library.metrics.keys()
    for key, value in library.metrics.items():
        np.testing.assert_allclose(native.metrics[key], value, rtol=1e-6, atol=1e-9, err_msg=key)
