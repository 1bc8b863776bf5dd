"""SentenceEncoder loading, position ids, and the sentence-transformers export."""

import pytest
import torch

from ctrain.models.encoder import load_encoder
from ctrain.models.export import save_sentence_transformer

SENTENCES = ["A man is playing a guitar.", "Two dogs run.", "The cat sleeps on the warm mat today."]


@pytest.mark.parametrize("name", ["tiny-bert", "tiny-roberta", "tiny-mpnet"])
def test_inputs_embeds_with_explicit_positions_reproduce_forward(name):
    encoder = load_encoder(name).eval()
    batch = encoder.tokenize(SENTENCES)
    direct = encoder(**batch)
    embeds = encoder.word_embeddings(batch["input_ids"])
    via_embeds = encoder(
        inputs_embeds=embeds, attention_mask=batch["attention_mask"], position_ids=encoder.position_ids(batch["input_ids"])
    )
    assert torch.allclose(direct, via_embeds, atol=1e-6)
    special = encoder.special_mask(batch["input_ids"])
    assert special[:, 0].all() and not special[0, 1]


def test_pooling_modes(tiny_bert):
    batch = tiny_bert.tokenize(SENTENCES)
    states = tiny_bert.token_states(**batch).last_hidden_state
    mask = batch["attention_mask"].bool()
    pooled = tiny_bert.pooler(states, batch["attention_mask"])
    for i in range(len(SENTENCES)):
        assert torch.allclose(pooled[i], states[i][mask[i]].mean(0), atol=1e-6)


@pytest.mark.parametrize(
    "pooling, mlp_only_train, normalize, similarity",
    [("mean", False, False, "dot"), ("cls", False, True, "cos"), ("cls_mlp", False, False, "cos"),
     ("cls_mlp", True, False, "cos"), ("max", False, False, "cos")],
)  # fmt: skip
def test_sentence_transformers_export_round_trip(tmp_path, pooling, mlp_only_train, normalize, similarity):
    from sentence_transformers import SentenceTransformer

    encoder = load_encoder("tiny-bert", pooling=pooling, mlp_only_train=mlp_only_train, normalize=normalize).eval()
    save_sentence_transformer(encoder, tmp_path / "model", similarity)
    loaded = SentenceTransformer(str(tmp_path / "model"), device="cpu")
    expected = encoder.encode(SENTENCES)
    assert torch.allclose(torch.as_tensor(loaded.encode(SENTENCES)), expected, atol=1e-5)
    assert loaded.similarity_fn_name == {"cos": "cosine", "dot": "dot"}[similarity]
    # ctrain reads its own export back with the same inference head.
    again = load_encoder(str(tmp_path / "model")).eval()
    # SimCSE's MLP comes back as the Tanh Dense layer it was exported as (none when it was training-only).
    assert again.pooler.mode == ("cls" if pooling == "cls_mlp" else pooling)
    assert len(again.dense) == (pooling == "cls_mlp" and not mlp_only_train)
    assert torch.allclose(again.encode(SENTENCES), expected, atol=1e-5)


def test_offline_minilm_matches_sentence_transformers():
    from sentence_transformers import SentenceTransformer

    from ctrain.assets import minilm_path

    encoder = load_encoder("all-MiniLM-L6-v2")
    assert encoder.pooler.mode == "mean" and encoder.normalize
    reference = SentenceTransformer(str(minilm_path()), device="cpu").encode(SENTENCES)
    assert torch.allclose(encoder.encode(SENTENCES), torch.as_tensor(reference), atol=1e-5)


def test_hub_id_offline_gives_one_line_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OSError, match="pass its local directory as model.encoder.name") as error:
        load_encoder("some-org/not-a-model")
    assert "\n" not in str(error.value)


def test_missing_path_error():
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_encoder("./no/such/model/dir")


def test_encode_batches_by_length_and_keeps_input_order(tiny_bert):
    sentences = ["a b c d e f g h i j k", "a", "a b c", "a b c d e f", "b", "c d e f g h i j k l m n o p", "x y"]
    tiny_bert.train()
    encoded = tiny_bert.encode(sentences, batch_size=3)
    assert tiny_bert.training  # mode restored
    tiny_bert.eval()
    with torch.no_grad():
        one_by_one = torch.cat([tiny_bert(**tiny_bert.tokenize([sentence])) for sentence in sentences])
    torch.testing.assert_close(encoded, one_by_one, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "config, pooling",
    [({"pooling_mode": ["max"]}, "max"), ({"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False}, "cls"),
     ({"pooling_mode_max_tokens": True}, "max"), ({"pooling_mode_mean_tokens": True}, "mean"), ({"pooling_mode": "lasttoken"}, "lasttoken")],
)  # fmt: skip
def test_pooling_of_saved_configs_old_and_new(config, pooling):
    """sentence-transformers >= 6 writes `pooling_mode`, older versions one flag a mode; a mode ctrain lacks is
    handed on as named, for the Pooler's one-line refusal."""
    from ctrain.models.pooling import pooling_of_st_config

    assert pooling_of_st_config(config) == pooling


@pytest.mark.parametrize("mode", ["mean", "cls", "cls_mlp", "max"])
def test_one_pooling_table_both_ways_through_sentence_transformers(mode):
    from ctrain.models.pooling import ST_POOLING_MODES, pooling_of_st_config
    from ctrain.models.st_modules import Pooling

    saved = Pooling(8, pooling_mode=ST_POOLING_MODES[mode]).get_config_dict()
    assert pooling_of_st_config(saved) == ("cls" if mode == "cls_mlp" else mode)  # cls_mlp's MLP is a Dense after it


def test_name_prefixes_are_one_table_parsed_in_one_place():
    import ast
    from pathlib import Path

    from ctrain import assets

    assert assets.split_prefix("tiny-roberta") == (assets.TINY, "roberta")
    assert assets.split_prefix("hub:glue:mrpc") == (assets.HUB, "glue:mrpc")
    assert assets.split_prefix("bpe:data/corpus/all.txt") == (assets.BPE, "data/corpus/all.txt")
    assert assets.split_prefix("runs/tiny-bert/model_final") == ("", "runs/tiny-bert/model_final")
    assert load_encoder("bag-bert").backbone.config.model_type == "ctrain_bag"
    source = Path(assets.__file__).parent
    literals = {
        f"{path.relative_to(source)}: {node.value!r}"
        for path in source.rglob("*.py") if path.name != "assets.py"
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Constant) and node.value in assets.PREFIXES
    }  # fmt: skip
    assert not literals, "a name prefix spelled outside ctrain.assets.PREFIXES"
