"""Training and inference through the loading paths users take, not only models built from a config.

A model saved to a directory comes back from `from_pretrained` in eval mode; a
sentence-transformers directory brings Pooling, Dense and Normalize modules; a run's own
export is given back as `model.encoder`. Each path must train with dropout on and give
the same embeddings as `SentenceTransformer` on the same directory.
"""

import csv
import warnings
from pathlib import Path

import pytest
import torch
from helpers import RecordTrainMode

from ctrain.cli.fit import run_cli
from ctrain.models.encoder import load_encoder
from ctrain.models.export import (
    Dense,
    Normalize,
    Pooling,
    Transformer,
    save_sentence_transformer,
)

ROOT = Path(__file__).resolve().parents[1]
SENTENCES = ["A man is playing a guitar.", "Two dogs run in the park.", "The cat sleeps.", "Rain."]


def _plain_directory(tmp_path: Path, architecture: str) -> Path:
    """A Hugging Face directory as a hub model is: backbone and tokenizer, no sentence-transformers files."""
    encoder = load_encoder(f"tiny-{architecture}")
    target = tmp_path / f"plain-{architecture}"
    encoder.backbone.save_pretrained(target)
    encoder.tokenizer.save_pretrained(target)
    return target


def _dense_directory(tmp_path: Path) -> Path:
    """A sentence-transformers model with mean pooling, a ReLU Dense to 32 dims and Normalize."""
    from sentence_transformers import SentenceTransformer

    transformer = Transformer(str(_plain_directory(tmp_path, "bert")), max_seq_length=64)
    torch.manual_seed(0)
    modules = [transformer, Pooling(64, pooling_mode="mean"), Dense(64, 32, activation_function=torch.nn.ReLU()), Normalize()]
    target = tmp_path / "dense-st"
    SentenceTransformer(modules=modules, device="cpu").save(str(target))
    return target


def _fit(tmp_path: Path, encoder: str, *extra: str, steps: int = 3, batch_size: int = 8) -> tuple[Path, list[bool], list]:
    """`ctrain fit`, a few steps of unsupervised SimCSE: (run directory, train mode per step, warnings raised)."""
    args = [
        "fit", "--config", str(ROOT / "configs" / "demo.yaml"),
        "--model.encoder.name", encoder, "--model.encoder.pooling", "null",
        "--data.batch_size", str(batch_size), "--data.max_examples", str(batch_size * steps),
        "--trainer.max_steps", str(steps), "--trainer.val_check_interval", str(steps),
        "--trainer.log_every_n_steps", "1", "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false", "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"),
        "--data.max_eval_pairs", "64", "--trainer.callbacks+=helpers.RecordTrainMode", *extra,
    ]  # fmt: skip
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cli = run_cli(args)
    recorder = next(c for c in cli.trainer.callbacks if isinstance(c, RecordTrainMode))
    return Path(cli.trainer.log_dir), recorder.all_training, caught


def _positive_cosines(run_dir: Path) -> list[float]:
    with (run_dir / "metrics.csv").open() as handle:
        return [float(row["train/positive_cosine"]) for row in csv.DictReader(handle) if row["train/positive_cosine"]]


def _assert_trained_with_dropout(run_dir: Path, all_training: list[bool], caught: list, steps: int = 3) -> None:
    assert all_training == [True] * steps  # every module, in every step
    cosines = _positive_cosines(run_dir)
    # The two views differ (dropout ran) yet stay one sentence: close, not unrelated.
    assert len(cosines) == steps and all(0.5 < c < 1 - 1e-4 for c in cosines), cosines
    assert not [w for w in caught if "eval mode" in str(w.message)]


def _assert_matches_sentence_transformers(path: Path, atol: float = 1e-5) -> torch.Tensor:
    """Our encoder's embeddings of SENTENCES (they equal SentenceTransformer's on the same directory)."""
    from sentence_transformers import SentenceTransformer

    reference = torch.as_tensor(SentenceTransformer(str(path), device="cpu").encode(SENTENCES))
    ours = load_encoder(str(path)).encode(SENTENCES)
    torch.testing.assert_close(ours, reference, atol=atol, rtol=0)
    return ours


def test_half_precision_checkpoint_loads_in_float32(tmp_path):
    """The optimizer needs float32 weights; mixed precision belongs to the trainer, not the checkpoint."""
    source = load_encoder("tiny-bert")
    source.backbone.half().save_pretrained(tmp_path / "half")
    source.tokenizer.save_pretrained(tmp_path / "half")
    assert {p.dtype for p in load_encoder(str(tmp_path / "half")).parameters()} == {torch.float32}


def test_loaded_encoder_is_in_train_mode():
    assert all(module.training for module in load_encoder("all-MiniLM-L6-v2").modules())


@pytest.mark.parametrize("architecture", ["bert", "roberta", "mpnet"])
def test_saved_directory_trains_with_dropout_and_exports(tmp_path, architecture):
    run_dir, all_training, caught = _fit(tmp_path, str(_plain_directory(tmp_path, architecture)))
    _assert_trained_with_dropout(run_dir, all_training, caught)
    _assert_matches_sentence_transformers(run_dir / "model_final")


def test_run_export_given_back_as_encoder_trains_with_dropout(tmp_path):
    first, _, _ = _fit(tmp_path / "first", "tiny-bert", "--model.encoder.pooling", "cls_mlp")
    run_dir, all_training, caught = _fit(tmp_path / "second", str(first / "model_final"))
    _assert_trained_with_dropout(run_dir, all_training, caught)
    _assert_matches_sentence_transformers(run_dir / "model_final")


def test_dense_after_mean_pooling_keeps_its_activation_and_trains(tmp_path):
    directory = _dense_directory(tmp_path)
    encoder = load_encoder(str(directory))
    assert encoder.pooler.mode == "mean" and encoder.normalize and encoder.embedding_size == 32
    assert isinstance(encoder.dense[0].activation_function, torch.nn.ReLU)
    _assert_matches_sentence_transformers(directory)
    # Same computation written out: ReLU(W mean(h) + b), then L2 normalisation.
    batch = encoder.eval().tokenize(SENTENCES)
    with torch.no_grad():
        states = encoder.backbone(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        mean = (states * mask).sum(1) / mask.sum(1)
        linear = encoder.dense[0].linear
        expected = torch.nn.functional.normalize(torch.relu(mean @ linear.weight.T + linear.bias), dim=-1)
        torch.testing.assert_close(encoder(**batch), expected, atol=1e-6, rtol=0)

    run_dir, all_training, caught = _fit(tmp_path, str(directory))
    _assert_trained_with_dropout(run_dir, all_training, caught)
    _assert_matches_sentence_transformers(run_dir / "model_final")
    trained = load_encoder(str(run_dir / "model_final"))
    assert not torch.equal(trained.dense[0].linear.weight, encoder.dense[0].linear.weight)  # the Dense layer trained


@pytest.mark.parametrize("architecture", ["roberta", "mpnet"])
def test_reloaded_position_ids_ignore_padding(tmp_path, architecture):
    """RoBERTa / MPNet derive positions from the ids: a padded batch must embed each sentence as alone."""
    path = tmp_path / "export"
    save_sentence_transformer(load_encoder(f"tiny-{architecture}"), path)
    encoder = load_encoder(str(path)).eval()
    batch = encoder.tokenize(SENTENCES)
    assert (batch["attention_mask"] == 0).any()  # the batch really is padded
    with torch.no_grad():
        together = encoder(**batch)
        alone = torch.cat([encoder(**encoder.tokenize([sentence])) for sentence in SENTENCES])
        backbone_alone = torch.cat(  # the backbone's own position ids, no padding to get wrong
            [encoder.backbone(**encoder.tokenize([sentence])).last_hidden_state.mean(1) for sentence in SENTENCES]
        )
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=0)
    torch.testing.assert_close(alone, backbone_alone, atol=1e-5, rtol=0)
    _assert_matches_sentence_transformers(path)


def test_unsupported_sentence_transformers_module_is_a_one_line_error(tmp_path):
    import json

    directory = _dense_directory(tmp_path)
    modules = json.loads((directory / "modules.json").read_text())
    modules.insert(2, {"idx": 9, "name": "9", "path": "", "type": "sentence_transformers.models.LayerNorm"})
    (directory / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(ValueError, match="cannot train") as error:
        load_encoder(str(directory))
    assert "\n" not in str(error.value)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["all-MiniLM-L6-v2", "all-mpnet-base-v2"])
def test_offline_encoder_trains_with_dropout_and_matches_sentence_transformers(tmp_path, name):
    from ctrain.assets import offline_encoder_path

    before = _assert_matches_sentence_transformers(offline_encoder_path(name))
    # STS-B on 16 pairs: a base-size encoder's validations and test dominate these 3 steps
    extra = ("--data.max_length", "16", "--model.learning_rate", "1e-4", "--data.max_eval_pairs", "16")
    run_dir, all_training, caught = _fit(tmp_path, name, *extra, batch_size=4)
    _assert_trained_with_dropout(run_dir, all_training, caught)
    after = _assert_matches_sentence_transformers(run_dir / "model_final")
    assert (after - before).abs().max() > 1e-4  # the steps changed the model


def test_probes_on_a_reloaded_model_with_a_dense_head(tmp_path):
    """The weighting probe differentiates f(X) after the Dense layer (32 output dims, not the 64 hidden ones)."""
    from reference import brute_force_shapley

    from ctrain.probes.geometry import GeometryConfig, geometry_probe
    from ctrain.probes.weighting.captum_peer import captum_loop_weights
    from ctrain.probes.weighting.ig import integrated_gradients
    from ctrain.probes.weighting.shapley import shapley_values

    encoder = load_encoder(str(_dense_directory(tmp_path))).eval()
    batch = encoder.tokenize(SENTENCES[:2])
    ours = integrated_gradients(encoder, batch["input_ids"], batch["attention_mask"], steps=6)
    reference = captum_loop_weights(encoder, batch["input_ids"], batch["attention_mask"], steps=6)
    torch.testing.assert_close(ours.weights, reference, rtol=1e-4, atol=1e-6)
    ids = encoder.tokenize(["Two dogs run."])["input_ids"][0]
    torch.testing.assert_close(shapley_values(encoder, ids), brute_force_shapley(encoder, ids), rtol=1e-4, atol=1e-6)
    result = geometry_probe(encoder, SENTENCES * 3, GeometryConfig(sentence_level=False))
    last = encoder.num_layers
    assert 0 < result.metrics[f"intra_similarity/layer_{last}"] <= 1 and abs(result.metrics[f"anisotropy/layer_{last}"]) <= 1
