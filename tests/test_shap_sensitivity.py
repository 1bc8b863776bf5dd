"""benchmarks/studies/shap_sensitivity.py: every variant runs, each changes only what it says (its --toy mode)."""

import json

import numpy as np
import pytest

from ctrain.models.encoder import load_encoder
from ctrain.probes.weighting.partition import text_masker
from ctrain.probes.weighting import FIT_KEYS
from ctrain.probes.weighting.regression import sentence_draws
from helpers import load_benchmark



@pytest.fixture(scope="module")
def sensitivity():
    return load_benchmark("studies/shap_sensitivity.py")


@pytest.fixture(scope="module")
def toy_rows(sensitivity, tmp_path_factory):
    out = tmp_path_factory.mktemp("sensitivity")
    rows = {row["variant"]: row for row in sensitivity.main(["--toy", "--out", str(out)])}
    return rows, json.loads((out / "shap_sensitivity.json").read_text())


def test_toy_mode_runs_every_variant_and_writes_them(toy_rows):
    rows, written = toy_rows
    assert list(rows) == ["setup", "batch_256", "normalize_on", "include_self_off", "pad_absent", "words", "points_type"]
    assert [row["variant"] for row in written["rows"]] == list(rows)
    assert rows["setup"]["config"]["shap_batch_size"] is None and rows["batch_256"]["config"]["shap_batch_size"] == 256


def test_each_variant_changes_what_it_says(toy_rows):
    rows, _ = toy_rows
    setup = rows["setup"]["metrics"]
    kl, selfinfo = FIT_KEYS["shap", "kl"], FIT_KEYS["shap", "selfinfo"]
    off = rows["include_self_off"]["metrics"]
    assert off[selfinfo.r2] == setup[selfinfo.r2] and off[selfinfo.slope] == setup[selfinfo.slope]  # same weights, same -log P
    assert off[kl.slope] != setup[kl.slope]
    for variant in ("batch_256", "normalize_on", "pad_absent", "words", "points_type"):  # batch_256 too: the toy budget runs out
        assert rows[variant]["metrics"][kl.slope] != setup[kl.slope], variant
    by_type = rows["points_type"]["metrics"]
    assert by_type[kl.n] < setup[kl.n]  # one point per type, fewer than the occurrences


def test_absent_token_lends_the_masker_another_token_and_gives_the_tokenizer_back(sensitivity):
    encoder = load_encoder("tiny-bert")
    original = encoder.tokenizer
    with sensitivity.absent_token(encoder, original.pad_token):
        assert text_masker(encoder.tokenizer).mask_token == original.pad_token
    assert encoder.tokenizer is original and original.mask_token == "[MASK]"


def test_type_point_breakdown_refits_the_estimate_and_counts_the_types_a_resample_keeps(toy_rows):
    rows, written = toy_rows
    by_type = rows["points_type"]
    breakdown, metrics, kl = by_type["type_points"], by_type["metrics"], FIT_KEYS["shap", "kl"]
    every_type = breakdown["by_sentences"][0]
    assert every_type["min_sentences"] == 1 and every_type["types"] == breakdown["types"] == metrics[kl.n]
    assert every_type["r2"] == pytest.approx(metrics[kl.r2]) and every_type["slope"] == pytest.approx(metrics[kl.slope])
    counts = [fit["types"] for fit in breakdown["by_sentences"]]
    assert counts == sorted(counts, reverse=True) and counts[-1] < counts[0]  # the toy has types of one sentence
    assert written["rows"][-1]["type_points"] == breakdown
    assert "setup" in rows and "type_points" not in rows["setup"]


def test_kept_share_is_the_brute_force_share_of_types_with_a_drawn_sentence(sensitivity):
    class Result:  # the two things type_point_breakdown reads of a WeightingResult
        config = type("Config", (), {"bootstrap_resamples": 40, "seed": 3})()

        def occurrences(self, method, quantity):
            types = np.array([7, 7, 9, 4, 9, 2])
            sentence = np.array([0, 1, 1, 2, 3, 3])
            return np.array([1.0, 1.0, 2.0, 0.5, 2.0, 3.0]), np.array([0.3, 0.5, 0.9, 0.1, 0.7, 1.2]), types, sentence

    breakdown = sensitivity.type_point_breakdown(Result(), num_sentences=4)
    _, _, types, sentence = Result().occurrences("shap", "kl")
    kept = [len({t for t, s in zip(types, sentence) if s in set(draw)}) / 4 for draw in sentence_draws(4, 40, 3)]
    assert breakdown["kept_share"] == pytest.approx(np.mean(kept))
    assert [fit["types"] for fit in breakdown["by_sentences"]] == [4, 2, 0]  # 7 and 9 occur in two sentences
