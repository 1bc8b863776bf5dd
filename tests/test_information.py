"""Token statistics (docs/metrics.md, "Information of a token type") against values computed by hand on toy corpora."""

import math

import numpy as np
import pytest
import torch

from ctrain.probes.weighting.information import kl_information, segment, token_statistics

TOY = ["a b c", "a b", "c c d", "a"]  # every word is one BERT token


def test_probability_and_self_information_by_hand(tiny_bert):
    stats = token_statistics(tiny_bert.tokenizer, TOY)
    assert stats.types == ("a", "b", "c", "d")
    assert stats.counts.tolist() == [3, 2, 3, 1] and stats.total == 9
    np.testing.assert_allclose(stats.probability, [3 / 9, 2 / 9, 3 / 9, 1 / 9], rtol=1e-15)
    np.testing.assert_allclose(stats.self_information, -np.log([3 / 9, 2 / 9, 3 / 9, 1 / 9]), rtol=1e-15)


def test_kl_without_the_occurrence_itself_by_hand(tiny_bert):
    stats = token_statistics(tiny_bert.tokenizer, TOY, include_self=False)
    # a: contexts b, c | b  -> q(b) = 2/3, q(c) = 1/3
    # b: contexts a, c | a  -> q(a) = 2/3, q(c) = 1/3
    # c: a, b | c, d | c, d -> q = (1/6, 1/6, 2/6, 2/6)
    # d: c, c               -> q(c) = 1
    expected = [
        2 / 3 * math.log((2 / 3) / (2 / 9)) + 1 / 3 * math.log((1 / 3) / (3 / 9)),
        2 / 3 * math.log((2 / 3) / (3 / 9)) + 1 / 3 * math.log((1 / 3) / (3 / 9)),
        1 / 6 * math.log((1 / 6) / (3 / 9)) + 1 / 6 * math.log((1 / 6) / (2 / 9))
        + 1 / 3 * math.log((1 / 3) / (3 / 9)) + 1 / 3 * math.log((1 / 3) / (1 / 9)),
        math.log(1 / (3 / 9)),
    ]  # fmt: skip
    np.testing.assert_allclose(stats.kl, expected, rtol=1e-12)


def test_kl_counts_the_occurrence_itself_by_default(tiny_bert):
    stats = token_statistics(tiny_bert.tokenizer, TOY)
    # a: a, b, c | a, b | a -> q = (3/6, 2/6, 1/6, 0)
    expected_a = 1 / 2 * math.log((1 / 2) / (3 / 9)) + 1 / 3 * math.log((1 / 3) / (2 / 9)) + 1 / 6 * math.log((1 / 6) / (3 / 9))
    assert stats.kl[0] == pytest.approx(expected_a, rel=1e-12)
    # d: d, c, c -> q = (0, 0, 2/3, 1/3)
    assert stats.kl[3] == pytest.approx(2 / 3 * math.log((2 / 3) / (3 / 9)) + 1 / 3 * math.log((1 / 3) / (1 / 9)), rel=1e-12)


def test_type_without_context_has_nan_kl():
    kl = kl_information(np.array([0, 0, 1]), np.array([0, 1, 2]), 3, include_self=False)
    assert math.isnan(kl[2]) and np.isfinite(kl[:2]).all()


def test_dkl_against_the_expectation_over_all_shuffles(tiny_bert):
    # Tokens {a, a, b, c} in two sentences of two: the 3 pairings are equally likely.
    # {a b}{a c} (2 of 3): KL(a) = KL(b) = KL(c) = log 2.  {a a}{b c}: KL(a) = log 2, KL(b) = KL(c) = log 4.
    stats = token_statistics(tiny_bert.tokenizer, ["a b", "a c"], include_self=False, dkl_repeats=2000, seed=3)
    np.testing.assert_allclose(stats.kl, [math.log(2)] * 3, rtol=1e-12)
    assert stats.dkl[0] == pytest.approx(0.0, abs=1e-12)  # log 2 in every shuffle
    standard_error = math.log(2) * math.sqrt(2 / 9) / math.sqrt(2000)
    np.testing.assert_allclose(stats.kl_shuffled[1:], 4 / 3 * math.log(2), atol=5 * standard_error)
    np.testing.assert_array_equal(stats.dkl, stats.kl - stats.kl_shuffled)


def test_dkl_is_seeded_and_leaves_the_global_rng_alone(tiny_bert):
    state = np.random.get_state()[1].copy()
    first = token_statistics(tiny_bert.tokenizer, TOY * 3, dkl_repeats=4, seed=7)
    again = token_statistics(tiny_bert.tokenizer, TOY * 3, dkl_repeats=4, seed=7)
    other = token_statistics(tiny_bert.tokenizer, TOY * 3, dkl_repeats=4, seed=8)
    np.testing.assert_array_equal(first.dkl, again.dkl)
    assert not np.array_equal(first.dkl, other.dkl)
    np.testing.assert_array_equal(np.random.get_state()[1], state)


def test_special_tokens_are_never_types_but_unknown_words_are(tiny_bert):
    seg = segment(tiny_bert.tokenizer, ["a [MASK] b \u2603\u2603", "c"])  # snowmen are out of BERT's vocabulary
    assert seg.unit_types == ["a", "b", "[UNK]", "c"]
    assert seg.unit_sentence.tolist() == [0, 0, 0, 1]
    # exactly the positions the encoder (and so the IG baseline and SHAP) treats as non-special
    torch.testing.assert_close(seg.unit_of_position.ge(0), ~tiny_bert.special_mask(seg.input_ids))


def test_words_merge_subwords():
    from ctrain.models.encoder import load_encoder

    tokenizer = load_encoder("tiny-roberta").tokenizer
    sentences = ["unbelievable song", "A song, unbelievable"]
    tokens = segment(tokenizer, sentences, "tokens")
    words = segment(tokenizer, sentences, "words")
    assert tokens.num_units > words.num_units
    assert words.unit_types == ["unbelievable", "song", "A", "song", ",", "unbelievable"]
    stats = token_statistics(tokenizer, sentences, units="words")
    assert dict(zip(stats.types, stats.counts.tolist())) == {",": 1, "A": 1, "song": 2, "unbelievable": 2}
    # every position of a word points at the same unit, in reading order
    positions = words.unit_of_position[0]
    assert positions[positions.ge(0)].tolist() == sorted(positions[positions.ge(0)].tolist())


def test_truncation_matches_the_probe_inputs(tiny_bert):
    stats = token_statistics(tiny_bert.tokenizer, ["a b c d e f"], max_length=4)
    assert stats.types == ("a", "b")
