"""The objectives beyond InfoNCE in ContrastiveModule: DiffCSE's generator and discriminator, and short
offline runs of each objective on a saved-and-reloaded tiny encoder with the probes on."""

import csv
from pathlib import Path

import pytest
import torch
from helpers import quick_probes_preset
from safetensors.torch import load_file

from ctrain.cli.fit import run_cli
from ctrain.models.encoder import EncoderConfig, load_encoder
from ctrain.training.module import ContrastiveModule
from ctrain.training.objectives import DiffCSE, ObjectiveInputs

ROOT = Path(__file__).resolve().parents[1]
NLI_FILE = ROOT / "tests" / "data" / "nli_synthetic.csv"
SENTENCES = ["a man is playing a guitar on the stage", "the cat sleeps", "two dogs run in a green field"]


@pytest.fixture(scope="module")
def saved_encoder(tmp_path_factory):
    """A tiny BERT saved with save_pretrained and its tokenizer: a model as a user would pass it."""
    path = tmp_path_factory.mktemp("encoder")
    encoder = load_encoder("tiny-bert")
    encoder.backbone.save_pretrained(path)
    encoder.tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def saved_generator(tmp_path_factory):
    """A tiny random masked LM with the encoder's (BERT uncased) vocabulary."""
    from transformers import BertConfig, BertForMaskedLM

    path = tmp_path_factory.mktemp("generator")
    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    BertForMaskedLM(config).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def diffcse_module(saved_encoder, saved_generator):
    return ContrastiveModule(encoder=EncoderConfig(saved_encoder), objective=DiffCSE(generator=saved_generator, mask_ratio=0.5))


def _detection_loss(module, input_ids, attention_mask, embeddings):
    inputs = ObjectiveInputs(input_ids, attention_mask, embeddings, None, 0, module.encoder)
    return module.objective.detection_loss(inputs)


def _tokens(module):
    batch = module.encoder.tokenizer(SENTENCES, padding=True, return_tensors="pt")
    return batch["input_ids"], batch["attention_mask"]


def test_generator_edits_only_words_and_never_refills_special_tokens(diffcse_module):
    input_ids, attention_mask = _tokens(diffcse_module)
    words = ~diffcse_module.encoder.special_mask(input_ids) & attention_mask.bool()
    generator = diffcse_module.objective.generator
    edited = generator.corrupt(input_ids, attention_mask, words, 0.99, torch.Generator().manual_seed(0))
    changed = edited != input_ids
    assert changed.any() and not (changed & ~words).any()
    assert not torch.isin(edited[changed], torch.tensor(diffcse_module.encoder.tokenizer.all_special_ids)).any()
    again = generator.corrupt(input_ids, attention_mask, words, 0.99, torch.Generator().manual_seed(0))
    assert torch.equal(edited, again)
    assert not generator.model.training and not any(p.requires_grad for p in generator.model.parameters())


def test_discriminator_loss_scores_words_only(diffcse_module, monkeypatch):
    """The loss sees the non-special, non-pad tokens as scored, and special tokens are never labelled replaced."""
    import ctrain.training.objectives

    seen = {}
    original = ctrain.training.objectives.replaced_token_detection_loss

    def spy(logits, replaced, scored):
        seen.update(replaced=replaced, scored=scored)
        return original(logits, replaced, scored)

    monkeypatch.setattr(ctrain.training.objectives, "replaced_token_detection_loss", spy)
    input_ids, attention_mask = _tokens(diffcse_module)
    _detection_loss(diffcse_module, input_ids, attention_mask, diffcse_module(input_ids, attention_mask))
    tokenizer = diffcse_module.encoder.tokenizer
    specials = torch.isin(input_ids, torch.tensor([tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id]))
    assert torch.equal(seen["scored"], ~specials)
    assert (attention_mask == 0).any()  # the batch really has padding
    assert not (seen["replaced"] & ~seen["scored"]).any()


def test_discriminator_gradient_reaches_the_encoder_through_the_sentence_embedding(diffcse_module):
    input_ids, attention_mask = _tokens(diffcse_module)
    encoder_parameters = list(diffcse_module.encoder.parameters())

    diffcse_module.zero_grad()
    embeddings = diffcse_module(input_ids, attention_mask)
    embeddings.retain_grad()
    _detection_loss(diffcse_module, input_ids, attention_mask, embeddings).backward()
    assert embeddings.grad.abs().sum() > 0
    assert sum(float(p.grad.abs().sum()) for p in encoder_parameters if p.grad is not None) > 0

    diffcse_module.zero_grad()
    detached = diffcse_module(input_ids, attention_mask).detach()
    _detection_loss(diffcse_module, input_ids, attention_mask, detached).backward()
    assert all(p.grad is None or not p.grad.any() for p in encoder_parameters)  # the embedding is the only path
    assert any(p.grad is not None and p.grad.any() for p in diffcse_module.objective.discriminator.parameters())


def test_diffcse_bad_settings_are_one_line(saved_encoder, tmp_path):
    from transformers import BertConfig, BertForMaskedLM

    with pytest.raises(ValueError, match="the diffcse objective needs its generator"):
        ContrastiveModule(encoder=EncoderConfig(saved_encoder), objective="diffcse")
    small = BertConfig(vocab_size=100, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8)
    BertForMaskedLM(small).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="model.objective.init_args.generator .* predicts 100 tokens but the encoder's tokenizer has 30522") as error:
        ContrastiveModule(encoder=EncoderConfig(saved_encoder), objective=DiffCSE(generator=str(tmp_path)))
    assert "\n" not in str(error.value)
    with pytest.raises(OSError, match="model.objective.init_args.generator") as error:
        ContrastiveModule(encoder=EncoderConfig(saved_encoder), objective=DiffCSE(generator=str(tmp_path / "missing")))
    assert "\n" not in str(error.value)
    with pytest.raises(ValueError, match="unknown model.objective 'simclr'"):
        ContrastiveModule(encoder=EncoderConfig(saved_encoder), objective="simclr")


def _fit(save_dir: Path, encoder: str, *extra: str):
    save_dir.mkdir(parents=True, exist_ok=True)
    preset = quick_probes_preset(save_dir / "probes.yaml", every_n_steps=4, weighting_sentences=16, geometry_sentences=32)
    cli = run_cli([
        "fit", "--config", str(ROOT / "configs" / "demo.yaml"), "--config", str(preset),
        "--model.encoder.name", encoder, "--data.batch_size", "8", "--data.max_examples", "64",
        "--data.max_eval_pairs", "64", "--trainer.max_steps", "4", "--trainer.val_check_interval", "4", "--trainer.limit_val_batches", "2",
        "--trainer.log_every_n_steps", "1", "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false", "--trainer.logger.init_args.save_dir", str(save_dir), *extra,
    ])  # fmt: skip
    run_dir = save_dir / "demo" / "version_0"
    with (run_dir / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert sum(1 for r in rows if r["train/loss"]) == 4
    assert sorted({int(r["step"]) for r in rows if r.get("weighting/ig_kl_r2")}) == [0, 4]
    assert sorted({int(r["step"]) for r in rows if r.get("geometry/anisotropy/layer_2")}) == [0, 4]
    return cli, run_dir, rows


def _exported_weights(model_dir: Path) -> set[str]:
    """Weight names of an exported model, less BERT's unused next-sentence pooler that sentence-transformers adds."""
    names = {name for path in model_dir.rglob("*.safetensors") for name in load_file(path)}
    return {name for name in names if not name.startswith("pooler.")}


def _assert_only_the_encoder_is_exported(run_dir: Path, saved_encoder: str, head_prefix: str) -> None:
    encoder_weights = set(load_encoder(saved_encoder).backbone.state_dict())
    for name in ("model_final", "model_best"):
        assert _exported_weights(run_dir / name) == encoder_weights, name
        assert load_encoder(str(run_dir / name)).encode(SENTENCES).shape == (3, 64)
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    assert any(key.startswith(head_prefix) for key in state)  # kept for resuming, never exported


def test_symmetric_infonce_trains(tmp_path, saved_encoder):
    """On NLI-labelled data an unlabelled objective trains on the entailment pairs."""
    _, run_dir, rows = _fit(
        tmp_path, saved_encoder, "--model.objective", "symmetric_infonce", "--data.train", str(NLI_FILE),
        "--data.supervised", "true", "--data.columns", "[premise, hypothesis]", "--data.label_column", "label",
    )  # fmt: skip
    assert all(float(r["train/loss"]) > 0 for r in rows if r["train/loss"])
    assert (run_dir / "model_final" / "modules.json").exists()


def test_nli_classifier_trains_and_exports_no_classifier(tmp_path, saved_encoder):
    cli, run_dir, rows = _fit(
        tmp_path, saved_encoder, "--model.objective", "nli_classifier", "--data.train", str(NLI_FILE),
        "--data.supervised", "true", "--data.columns", "[premise, hypothesis]", "--data.label_column", "label",
    )  # fmt: skip
    first = next(float(r["train/loss"]) for r in rows if r["train/loss"])
    assert first == pytest.approx(torch.log(torch.tensor(3.0)).item(), abs=0.3)  # a fresh classifier: about log 3
    _assert_only_the_encoder_is_exported(run_dir, saved_encoder, "objective.classifier.")


def test_diffcse_trains_with_a_frozen_generator_out_of_the_module(tmp_path, saved_encoder, saved_generator):
    cli, run_dir, rows = _fit(
        tmp_path, saved_encoder, "--model.objective", "DiffCSE", "--model.objective.generator", saved_generator
    )
    assert sum(1 for r in rows if r["train/rtd_loss"]) == 4
    generator = cli.model.objective.generator.model
    # Lightning's train() at fit start and the encoder's at every step would have switched a registered child.
    assert all(module is not generator for module in cli.model.modules())
    assert not generator.training and not any(p.requires_grad for p in generator.parameters())
    _assert_only_the_encoder_is_exported(run_dir, saved_encoder, "objective.discriminator.")
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    assert not any("generator" in key for key in state)


def test_discriminator_starts_as_a_copy_of_the_loaded_encoder(tmp_path, saved_generator):
    """DiffCSE's code copies the pretrained encoder's weights into the discriminator; a copy, not the same tensors.
    The saved encoder is drawn with another seed than the run's, so a fresh random discriminator cannot match it."""
    trained = load_encoder("tiny-bert", seed=7)
    trained.backbone.save_pretrained(tmp_path)
    trained.tokenizer.save_pretrained(tmp_path)
    module = ContrastiveModule(encoder=EncoderConfig(str(tmp_path)), objective=DiffCSE(generator=saved_generator))
    encoder = module.encoder.backbone
    discriminator = module.objective.discriminator.backbone
    for name, value in discriminator.state_dict().items():
        assert torch.equal(value, encoder.state_dict()[name]), name
    assert all(a.data_ptr() != b.data_ptr() for a, b in zip(discriminator.parameters(), encoder.parameters()))


def test_edit_mask_is_drawn_apart_from_the_positive_views(saved_encoder, saved_generator, monkeypatch):
    """With token_dropout positives, DiffCSE's edit mask must still pick mask_ratio of the words the views kept:
    drawn from the same seed as the views' keep mask, it picked only those whose draw fell in [drop, ratio)."""
    from ctrain.training.diffcse import FrozenGenerator

    module = ContrastiveModule(
        encoder=EncoderConfig(saved_encoder), objective=DiffCSE(generator=saved_generator, mask_ratio=0.3),
        positives="token_dropout", token_dropout=0.1,
    )  # fmt: skip
    shares = []
    original = FrozenGenerator.corrupt

    def recording(self, input_ids, attention_mask, editable, mask_ratio, rng):
        draws = torch.rand(input_ids.shape, generator=torch.Generator().set_state(rng.get_state()))
        shares.append(float(((draws < mask_ratio) & editable).sum() / editable.sum()))
        return original(self, input_ids, attention_mask, editable, mask_ratio, rng)

    monkeypatch.setattr(FrozenGenerator, "corrupt", recording)
    sentences = [" ".join(["a man is playing a guitar on the stage while two dogs run in a green field"] * 3)] * 16
    batch = module.encoder.tokenize(sentences)
    module.training_step({**batch, "num_views": torch.tensor(1), "truncated": torch.zeros(16)}, 0)
    assert shares[0] == pytest.approx(0.3, abs=0.03)


def _brute_force_info_nce(anchors, positives, similarity, temperature):
    """-mean_i log softmax_j(sim(a_i, p_j) / T)[i], written out row by row."""
    if similarity == "cos":
        anchors, positives = torch.nn.functional.normalize(anchors, dim=-1), torch.nn.functional.normalize(positives, dim=-1)
    losses = []
    for i in range(len(anchors)):
        logits = torch.stack([anchors[i] @ positive for positive in positives]) / temperature
        losses.append(-(logits[i] - torch.logsumexp(logits, 0)))
    return torch.stack(losses).mean()


@pytest.mark.parametrize(("objective", "similarity", "temperature"), [("infonce", "dot", 0.5), ("infonce", "cos", 0.2), ("logistic", "dot", 2.0)])
def test_an_objective_on_similarity_logits_owns_the_models_similarity_and_temperature(saved_encoder, objective, similarity, temperature):
    module = ContrastiveModule(encoder=EncoderConfig(saved_encoder), objective=objective, similarity=similarity, temperature=temperature)
    assert (module.objective.similarity, module.objective.temperature) == (similarity, temperature)
    if objective == "infonce":  # the loss the step computes reads the objective's own settings
        anchors, positives = torch.randn(4, 8, generator=torch.Generator().manual_seed(0)).double().chunk(2)
        input_ids, attention_mask = _tokens(module)
        inputs = ObjectiveInputs(input_ids, attention_mask, None, (anchors, positives), 0, module.encoder)
        loss, _ = module.objective(inputs)
        assert loss.item() == pytest.approx(_brute_force_info_nce(anchors, positives, similarity, temperature).item(), rel=1e-5)


def test_objectives_without_similarity_logits_take_neither_setting(saved_encoder):
    from dataclasses import fields

    assert not {"similarity", "temperature"} & {field.name for field in fields(ObjectiveInputs)}  # no copy per step
    for objective in ("sgns", "nli_classifier"):
        module = ContrastiveModule(encoder=EncoderConfig(saved_encoder), objective=objective, similarity="dot", temperature=1.0)
        assert not hasattr(module.objective, "similarity") and not hasattr(module.objective, "temperature")
