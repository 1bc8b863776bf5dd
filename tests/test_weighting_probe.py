"""The probe runner end to end on tiny models: metrics, records, side effects, theorem fits, plots."""

import copy
import json
from dataclasses import asdict
import math

import numpy as np
import pytest
import torch

from ctrain.data.sources import read_sts_b
from ctrain.models.encoder import load_encoder
from ctrain.probes.weighting import (
    FIT_KEYS,
    THEOREM_KEYS,
    BatchProgress,
    BatchStore,
    WeightingConfig,
    token_statistics,
    weigh_batch,
    weighting_probe,
)
from ctrain.probes.weighting.ig import integrated_gradients
from ctrain.probes.weighting.theorem import theorem_regressions, vectors_per_unit
from ctrain.reporting.weighting_plots import (
    plot_sentence_weights,
    plot_weight_vs_information,
)

SENTENCES = [row[0] for row in read_sts_b("dev")[:12]]
FAST = dict(steps=4, batch_size=4, min_count=2, dkl_repeats=2)


@pytest.fixture(scope="module")
def result(tiny_bert):
    return weighting_probe(tiny_bert, SENTENCES, WeightingConfig(**FAST))


def test_metrics_are_flat_floats_under_their_documented_keys(result):
    ig_fits = [keys for (method, _), keys in FIT_KEYS.items() if method == "ig"]
    expected = {key for keys in [*ig_fits, *THEOREM_KEYS.values()] for key in keys.names()}
    expected |= {"weighting/num_sentences", "weighting/num_units", "weighting/kl_include_self", "weighting/theorem_input_half_norm_mean"}
    expected |= {"weighting/ig_completeness_error_mean", "weighting/ig_completeness_error_max", "weighting/ig_completeness_error_n"}
    expected |= {"weighting/ig_completeness_over_tol_share", "weighting/ig_evaluations_mean", "weighting/ig_evaluations_max"}
    assert set(result.metrics) == expected
    assert all(isinstance(value, float) for value in result.metrics.values())
    assert result.metrics["weighting/ig_completeness_error_n"] == len(SENTENCES)
    assert result.metrics["weighting/ig_completeness_error_mean"] < 1e-3
    assert result.metrics["weighting/kl_include_self"] == 1.0
    eligible = (result.units.count >= 2) & np.isfinite(result.units.kl)
    assert result.metrics["weighting/ig_kl_n"] == eligible.sum() > 10


def test_every_key_is_written_out_in_the_docs():
    from pathlib import Path

    docs = (Path(__file__).parents[1] / "docs" / "metrics.md").read_text()
    keys = [key for keys in [*FIT_KEYS.values(), *THEOREM_KEYS.values()] for key in keys.names()]
    missing = [key for key in keys if f"`{key}`" not in docs]
    assert not missing, missing


def test_config_rejects_unknown_choices_in_one_line():
    with pytest.raises(ValueError, match="unknown ig_mode 'fast': choose one of exact, sketch"):
        WeightingConfig(ig_mode="fast")
    with pytest.raises(ValueError, match="methods must be"):
        WeightingConfig(methods=("lime",))
    with pytest.raises(ValueError, match="shap_batch_size must be >= 1 or null"):
        WeightingConfig(shap_batch_size=0)


def test_kl_choice_follows_the_config(tiny_bert, result):
    without_self = weighting_probe(tiny_bert, SENTENCES, WeightingConfig(**FAST, include_self=False, theorem=False))
    assert without_self.metrics["weighting/kl_include_self"] == 0.0
    np.testing.assert_array_equal(without_self.units.weights["ig"], result.units.weights["ig"])
    assert not np.array_equal(without_self.units.kl, result.units.kl, equal_nan=True)
    statistics = token_statistics(tiny_bert.tokenizer, SENTENCES, dkl_repeats=2, include_self=False)
    np.testing.assert_array_equal(without_self.units.kl, statistics.kl[statistics.index(without_self.units.token.tolist())])


def test_progress_reports_every_batch_and_the_token_lengths_to_come(tiny_bert):
    calls = []
    weighting_probe(tiny_bert, SENTENCES[:7], WeightingConfig(**FAST, theorem=False), progress=calls.append)
    assert [(c.done, c.total, c.batch, c.reused) for c in calls] == [(4, 7, 0, False), (7, 7, 1, False)]
    lengths = sorted(len(ids) for ids in tiny_bert.tokenizer(SENTENCES[:7])["input_ids"])
    assert calls[0].lengths == calls[1].lengths == (lengths[3], lengths[6])  # shortest first: each batch's longest


def test_records_cover_every_sentence_with_normalised_weights(result):
    units = result.units
    assert np.unique(units.sentence).tolist() == list(range(len(SENTENCES)))
    for sentence in range(len(SENTENCES)):
        assert np.mean(units.weights["ig"][units.sentence == sentence]) == pytest.approx(1.0, rel=1e-12)
    first = units.token[units.sentence == 0].tolist()
    assert first == [t for t in load_encoder("tiny-bert").tokenizer.tokenize(SENTENCES[0])]


def test_json_is_strict_and_unrounded(result):
    payload = json.loads(result.to_json())
    assert payload["metrics"]["weighting/ig_kl_r2"] == result.metrics["weighting/ig_kl_r2"]
    assert payload["records"][0]["weights"]["ig"] == result.units.weights["ig"][0]
    assert len(payload["records"]) == len(result.units) and set(payload["records"][0]) == {
        "sentence", "token", "weights", "kl", "dkl", "self_information", "count"
    }
    assert payload["config"]["steps"] == 4


def test_precomputed_statistics_give_the_same_metrics(tiny_bert, result):
    statistics = token_statistics(tiny_bert.tokenizer, SENTENCES, dkl_repeats=2)
    again = weighting_probe(tiny_bert, SENTENCES, WeightingConfig(**FAST), statistics=statistics)
    assert again.metrics == result.metrics
    with pytest.raises(ValueError, match="units"):
        weighting_probe(tiny_bert, SENTENCES, WeightingConfig(**FAST, units="words"), statistics=statistics)


def test_batch_size_does_not_change_the_weights(tiny_bert, result):
    other = weighting_probe(tiny_bert, SENTENCES, WeightingConfig(**{**FAST, "batch_size": 5}))
    np.testing.assert_allclose(other.units.weights["ig"], result.units.weights["ig"], rtol=1e-4)


def test_probe_leaves_model_grads_rng_and_mode_alone(tiny_bert):
    tiny_bert.train()
    parameters = list(tiny_bert.parameters())
    parameters[0].grad = torch.full_like(parameters[0], 0.5)
    rng = torch.get_rng_state()
    config = WeightingConfig(**FAST, methods=("ig", "shap"), ig_mode="sketch", sketch_size=8, shap_max_exact_tokens=3, shap_permutations=4)
    first = weighting_probe(tiny_bert, SENTENCES[:6], config)
    assert tiny_bert.training
    assert torch.equal(torch.get_rng_state(), rng)
    assert torch.equal(parameters[0].grad, torch.full_like(parameters[0], 0.5))
    assert all(p.grad is None for p in parameters[1:])
    parameters[0].grad = None
    assert weighting_probe(tiny_bert, SENTENCES[:6], config).metrics == first.metrics  # seeded
    assert {"weighting/shap_kl_r2", "weighting/shap_dkl_n", "weighting/shap_selfinfo_beta"} <= set(first.metrics)


def test_low_precision_models_are_probed_in_fp32_and_restored():
    encoder = load_encoder("tiny-bert").eval()
    batch = encoder.tokenize(SENTENCES[:2])
    reference = integrated_gradients(encoder, **batch, steps=4).weights
    encoder.to(torch.bfloat16)
    before = [p.detach().clone() for p in encoder.parameters()]
    weights = integrated_gradients(encoder, **batch, steps=4).weights
    assert all(p.dtype == torch.bfloat16 and torch.equal(p, q) for p, q in zip(encoder.parameters(), before))
    assert weights.dtype == torch.float32 and weights.shape == reference.shape


@pytest.mark.parametrize("name", ["tiny-roberta", "tiny-mpnet"])
def test_word_units_on_other_architectures(name):
    encoder = load_encoder(name)
    result = weighting_probe(encoder, SENTENCES, WeightingConfig(**FAST, units="words"))
    assert result.metrics["weighting/ig_completeness_error_mean"] < 1e-3
    assert result.metrics["weighting/ig_kl_n"] > 10 and math.isfinite(result.metrics["weighting/ig_kl_r2"])
    assert all(" " not in token for token in result.units.token)


def test_theorem_fits_recover_an_exact_relation():
    rng = np.random.default_rng(0)
    kl = rng.uniform(0.5, 3.0, size=6)
    directions = rng.normal(size=(6, 8))
    rows = directions / np.linalg.norm(directions, axis=1, keepdims=True) * np.sqrt(2 * kl)[:, None]  # 0.5||w||^2 = KL
    types = np.array([0, 1, 2, 3, 4, 5, 0, 1, 2, 3])
    vectors = torch.from_numpy(rows[types])
    fits = theorem_regressions(vectors, vectors, types, kl)
    for name in ("input", "last", "last_type"):
        assert fits[name].slope == pytest.approx(1.0, abs=1e-9) and fits[name].r2 == pytest.approx(1.0, abs=1e-9)
        assert fits[name].intercept == pytest.approx(0.0, abs=1e-9)
    assert fits["input"].n == fits["last_type"].n == 6 and fits["last"].n == 10
    # averaging vectors vs averaging norms differs once occurrences of a type differ
    noisy = vectors + torch.from_numpy(rng.normal(scale=0.3, size=vectors.shape))
    by_vectors = theorem_regressions(vectors, noisy, types, kl, "vectors")["last_type"]
    by_norms = theorem_regressions(vectors, noisy, types, kl, "norms")["last_type"]
    assert by_vectors.slope != pytest.approx(by_norms.slope)


def test_vectors_per_unit_sum_or_average_a_words_positions():
    states = torch.arange(12.0).view(1, 4, 3)
    unit_of_position = torch.tensor([[-1, 0, 0, 1]])
    torch.testing.assert_close(vectors_per_unit(states, unit_of_position, 2), torch.tensor([[9.0, 11, 13], [9, 10, 11]], dtype=torch.float64))
    torch.testing.assert_close(vectors_per_unit(states, unit_of_position, 2, "mean")[0], torch.tensor([4.5, 5.5, 6.5], dtype=torch.float64))


def test_plots_are_written_atomically(result, tmp_path):
    scatter = plot_weight_vs_information(result, tmp_path / "ig_kl.png")
    bars = plot_sentence_weights(result, tmp_path / "sentences.png", sentences=3)
    for path in (scatter, bars):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ig_kl.png", "sentences.png"]


def test_callback_takes_the_config_whole_and_records_it(tiny_bert, monkeypatch):
    from types import SimpleNamespace

    from ctrain.callbacks import WordWeightingProbe, probes
    from ctrain.callbacks.probes import statistics_hash

    config = WeightingConfig(**FAST, include_self=False, theorem=False)
    callback = WordWeightingProbe(num_sentences=5, config=config)
    assert callback.config is config and WordWeightingProbe().config == WeightingConfig()
    callback.sentences = callback.load_sentences()
    assert len(callback.sentences) == 5 and callback.sentences == WordWeightingProbe(num_sentences=5, config=config).load_sentences()
    metrics, record = callback.measure(SimpleNamespace(encoder=tiny_bert))
    assert metrics["weighting/kl_include_self"] == 0.0 and record["config"]["include_self"] is False
    assert callback.statistics.num_sentences == 3000  # statistics over the whole split, both columns
    assert record["statistics_sha256"] == statistics_hash(callback.statistics)
    hashed = []
    monkeypatch.setattr(probes, "statistics_hash", lambda statistics: hashed.append(statistics) or "rehashed")
    _, again = callback.measure(SimpleNamespace(encoder=tiny_bert))
    assert hashed == [] and again["statistics_sha256"] == record["statistics_sha256"]  # hashed once, with the statistics


def test_every_weight_fit_has_a_bootstrap_interval_that_can_be_switched_off(tiny_bert, result):
    for method, quantity in [("ig", "kl"), ("ig", "selfinfo")]:
        keys = FIT_KEYS[method, quantity]
        low, high = result.metrics[keys.r2_ci_low], result.metrics[keys.r2_ci_high]
        assert low <= high and keys.r2_ci_low == f"weighting/{method}_{quantity}_r2_ci_low"
        assert result.metrics[keys.slope_ci_low] <= result.metrics[keys.slope] <= result.metrics[keys.slope_ci_high]
    config = WeightingConfig(**{**asdict(result.config), "bootstrap_resamples": 0})
    off = weighting_probe(tiny_bert, SENTENCES, config)
    assert not [key for key in off.metrics if "_ci_" in key]
    assert {k: v for k, v in result.metrics.items() if "_ci_" not in k} == off.metrics
    with pytest.raises(ValueError, match="confidence"):
        WeightingConfig(confidence=1.0)


def test_demo_preset_measures_the_last_step_on_the_same_inputs_as_step_0(tmp_path):
    """configs/demo.yaml with callbacks/probes.yaml, shrunk to seconds: every weighting record has the same sentences and statistics."""
    from pathlib import Path

    import yaml

    from ctrain.callbacks.probes import sentences_hash, statistics_hash
    from ctrain.cli import main
    from ctrain.probes.sentences import sample_sentences, sts_b_sentences

    root = Path(__file__).resolve().parents[1]
    preset = yaml.safe_load((root / "callbacks" / "probes.yaml").read_text())
    weighting, geometry = preset["trainer"]["callbacks"]
    assert weighting["class_path"] == "ctrain.callbacks.WordWeightingProbe"
    weighting["init_args"].update(every_n_steps=2, num_sentences=4)
    weighting["init_args"]["config"].update(sketch_size=2, steps=2, dkl_repeats=1, bootstrap_resamples=20)
    geometry["init_args"].update(every_n_steps=2)
    geometry["init_args"]["config"].update(num_sentences=40, anisotropy_resamples=1)
    shrunk = tmp_path / "probes.yaml"
    shrunk.write_text(yaml.safe_dump(preset))
    main([
        "fit", "--config", str(root / "configs" / "demo.yaml"), "--config", str(shrunk),
        "--data.batch_size", "8", "--data.max_examples", "64", "--data.max_eval_pairs", "64", "--trainer.max_steps", "4",
        "--trainer.val_check_interval", "4", "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false", "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"),
    ])  # fmt: skip
    (path,) = (tmp_path / "runs").rglob("probes/weighting.jsonl")
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["step"] for r in records] == [0, 2, 4]
    first, last = records[0], records[-1]
    assert first["config"] == last["config"]
    assert first["sentences_sha256"] == last["sentences_sha256"]
    assert first["statistics_sha256"] == last["statistics_sha256"]
    config = WeightingConfig(**first["config"])
    sentences = sample_sentences(sts_b_sentences("dev"), 4, config.seed)
    assert first["sentences_sha256"] == sentences_hash(sentences) != sentences_hash(sentences[::-1])
    statistics = token_statistics(
        load_encoder("tiny-bert").tokenizer, sts_b_sentences("dev"), units=config.units, include_self=config.include_self, dkl_repeats=config.dkl_repeats,
        seed=config.seed, max_length=config.max_length,
    )  # fmt: skip
    assert first["statistics_sha256"] == statistics_hash(statistics)
    assert first["metrics"]["weighting/num_sentences"] == last["metrics"]["weighting/num_sentences"] == 4
    assert "weighting/ig_kl_r2_ci_low" in last["metrics"]


def test_kept_batches_survive_resuming_with_another_thread_count(tiny_bert, tmp_path):
    """The batches' fingerprint is the weights' bytes: a float sum of them (the old fingerprint) differs between one
    and two threads, which cleared a long probe's batches when it was resumed with another OMP_NUM_THREADS. An
    encoder with the same weights that computes another function (normalisation, SHAP's absent token) reuses none."""
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        BatchStore(tmp_path, tiny_bert, SENTENCES, WeightingConfig(**FAST)).save(0, {"weights": {}, "completeness": None})
        torch.set_num_threads(2)
        assert BatchStore(tmp_path, tiny_bert, SENTENCES, WeightingConfig(**FAST)).load(0) is not None
        changed = copy.deepcopy(tiny_bert)
        with torch.no_grad():
            changed.backbone.embeddings.word_embeddings.weight[5, 3] += 1e-3  # one weight of 2 million
        assert BatchStore(tmp_path, changed, SENTENCES, WeightingConfig(**FAST)).load(0) is None
        BatchStore(tmp_path, tiny_bert, SENTENCES, WeightingConfig(**FAST)).save(0, {"weights": {}, "completeness": None})
        unnormalised = copy.deepcopy(tiny_bert)
        unnormalised.normalize = not tiny_bert.normalize  # the same weights, another function: nothing to reuse
        assert BatchStore(tmp_path, unnormalised, SENTENCES, WeightingConfig(**FAST)).load(0) is None
        BatchStore(tmp_path, tiny_bert, SENTENCES, WeightingConfig(**FAST)).save(0, {"weights": {}, "completeness": None})
        absent = copy.deepcopy(tiny_bert)
        absent.tokenizer.mask_token = absent.tokenizer.pad_token  # SHAP's absent value
        assert BatchStore(tmp_path, absent, SENTENCES, WeightingConfig(**FAST)).load(0) is None
    finally:
        torch.set_num_threads(threads)


def test_an_interrupted_probe_resumes_from_its_kept_batches(tiny_bert, tmp_path):
    """A probe stopped after its first batch weighs only the rest when rerun, and ends equal to an uninterrupted run;
    batches kept for another model are not reused. On a model saved and loaded from a directory."""
    from ctrain.models.export import save_sentence_transformer

    save_sentence_transformer(tiny_bert, tmp_path / "saved", "cos")
    model = load_encoder(str(tmp_path / "saved"))
    config, kept = WeightingConfig(**FAST), tmp_path / "batches"
    uninterrupted = weighting_probe(model, SENTENCES, config)

    def stop_after_first_batch(batch: BatchProgress) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        weighting_probe(model, SENTENCES, config, progress=stop_after_first_batch, resume_dir=kept)
    assert len(list(kept.glob("batch_*.pt"))) == 1
    weighed = []

    def weigh(*args):
        weighed.append(args[3])  # the batch's seed: config.seed + its start
        return weigh_batch(*args)

    calls = []
    resumed = weighting_probe(model, SENTENCES, config, progress=calls.append, resume_dir=kept, weigh=weigh)
    assert weighed == [4, 8]  # batches 2 and 3 of 3; the first came from disk
    assert [c.reused for c in calls] == [True, False, False]
    assert resumed.metrics == uninterrupted.metrics
    assert resumed.to_json() == uninterrupted.to_json()

    weighed.clear()
    refit = WeightingConfig(**{**FAST, "include_self": False, "min_count": 1, "points": "type", "bootstrap_resamples": 20})
    reused = weighting_probe(model, SENTENCES, refit, statistics=refit.statistics(model.tokenizer, SENTENCES), resume_dir=kept, weigh=weigh)
    assert weighed == []  # settings only the fits read: every batch reused, and the fits equal a fresh probe's
    assert reused.to_json() == weighting_probe(model, SENTENCES, refit).to_json()
    weighting_probe(model, SENTENCES, WeightingConfig(**{**FAST, "steps": 6}), resume_dir=kept, weigh=weigh)
    assert weighed == [0, 4, 8]  # a setting the weighing reads: nothing reused

    weighed.clear()
    other = load_encoder("tiny-bert", seed=1)
    weighting_probe(other, SENTENCES, config, resume_dir=kept, weigh=weigh)  # another model's probe: nothing reused
    assert weighed == [0, 4, 8]
