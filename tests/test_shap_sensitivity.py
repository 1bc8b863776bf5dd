"""benchmarks/studies/shap_sensitivity.py: every variant runs, each changes only what it says (its --toy mode)."""

import json

import pytest

from ctrain.models.encoder import load_encoder
from ctrain.probes.weighting.partition import text_masker
from ctrain.probes.weighting import FIT_KEYS
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
