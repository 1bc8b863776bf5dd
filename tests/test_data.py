"""Data sources, the resumable sampler and the collator."""

import copy
import math
from pathlib import Path

import pytest
import torch

from ctrain.data.datamodule import Collator, ContrastiveDataModule, EpochSampler
from ctrain.data.sources import (
    load_examples,
    load_nli_pairs,
    normalise,
    read_sts_b,
    sts_b_examples,
)


def test_sts_b_splits_and_extra_fields():
    sizes = {split: len(read_sts_b(split)) for split in ("train", "dev", "test")}
    assert sizes == {"train": 5749, "dev": 1500, "test": 1379}
    first = read_sts_b("dev")[0]
    assert first == ("A man with a hard hat is dancing.", "A man wearing a hard hat is dancing.", 5.0)
    # Rows with trailing source fields keep the sentences of columns 6 and 7.
    rows = read_sts_b("train")
    row = next(r for r in rows if r[0] == "Driver backs into stroller with child, drives off")
    assert row[1] == "Driver backs into mom, stroller with child then drives off" and row[2] == 4.0
    assert all(0.0 <= score <= 5.0 for _, _, score in rows)


def test_sts_b_training_defaults():
    pairs = sts_b_examples(supervised=True)
    assert pairs and all(len(p) == 2 for p in pairs)
    sentences = sts_b_examples(supervised=False)
    assert len(sentences) == len({s for s, in sentences})


@pytest.mark.parametrize("supervised, total, overlapping", [(False, 10566, 471), (True, 1406, 139)])
def test_sts_b_training_leaves_out_dev_and_test_sentences(supervised, total, overlapping):
    """The figures of the issue (and the docstring): STS-B train repeats that many dev/test sentences after
    normalisation; the default leaves out exactly those examples, data.keep_eval_overlap keeps everything."""
    evaluated = {normalise(s) for split in ("dev", "test") for row in read_sts_b(split) for s in row[:2]}
    everything = sts_b_examples(supervised, keep_eval_overlap=True)
    overlap = [example for example in everything if evaluated & {normalise(text) for text in example}]
    assert (len(everything), len(overlap)) == (total, overlapping)
    module = ContrastiveDataModule(train="sts-b", supervised=supervised)
    module.load_training_examples(world_size=1)
    assert module.examples == [example for example in everything if example not in overlap]
    assert not evaluated & {normalise(text) for example in module.examples for text in example}
    keeping = ContrastiveDataModule(train="sts-b", supervised=supervised, keep_eval_overlap=True)
    keeping.load_training_examples(world_size=1)
    assert keeping.examples == everything


def test_file_sources(tmp_path):
    (tmp_path / "a.txt").write_text("one\n\ntwo\n")
    assert load_examples(str(tmp_path / "a.txt"), None) == [("one",), ("two",)]
    (tmp_path / "b.csv").write_text("sent0,sent1,hard_neg\na,b,c\nd,e,f\n")
    assert load_examples(str(tmp_path / "b.csv"), ["sent0", "sent1", "hard_neg"]) == [("a", "b", "c"), ("d", "e", "f")]
    (tmp_path / "c.jsonl").write_text('{"text": "x"}\n{"text": "y"}\n')
    assert load_examples(str(tmp_path / "c.jsonl"), ["text"]) == [("x",), ("y",)]


@pytest.mark.parametrize(
    "content, message",
    [(None, "does not exist"), (b"", "is empty"), (b"good\n\xff\xfebad\n", "line 2 is not valid UTF-8")],
)
def test_bad_files_give_one_line_errors(tmp_path, content, message):
    path = tmp_path / "data.txt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises((ValueError, FileNotFoundError), match=message) as error:
        load_examples(str(path), None)
    assert "\n" not in str(error.value)


def test_missing_columns(tmp_path):
    (tmp_path / "b.csv").write_text("x,y\n1,2\n")
    with pytest.raises(ValueError, match=r"columns \['sent0'\] not in"):
        load_examples(str(tmp_path / "b.csv"), ["sent0"])


def test_too_few_examples_for_a_batch(tmp_path):
    (tmp_path / "a.txt").write_text("one\ntwo\n")
    module = ContrastiveDataModule(train=str(tmp_path / "a.txt"), batch_size=4)
    with pytest.raises(ValueError, match="fewer than one global batch"):
        module.load_training_examples(world_size=1)


def test_wrong_shape_for_supervised(tmp_path):
    (tmp_path / "a.txt").write_text("one\ntwo\nthree\n")
    module = ContrastiveDataModule(train=str(tmp_path / "a.txt"), batch_size=2, supervised=True)
    with pytest.raises(ValueError, match="needs pairs or triplets"):
        module.load_training_examples(world_size=1)


def test_sampler_shards_one_global_batch(monkeypatch):
    single = list(EpochSampler(40, batch_size=8, seed=5))
    shards = []
    for rank in range(2):
        monkeypatch.setattr("ctrain.data.datamodule._world", lambda rank=rank: (2, rank))
        shards.append(list(EpochSampler(40, batch_size=4, seed=5)))
    # Global batch g of the 2-process run is batch g of the 1-process run with batch 8.
    for g in range(len(single) // 8):
        assert shards[0][4 * g : 4 * g + 4] + shards[1][4 * g : 4 * g + 4] == single[8 * g : 8 * g + 8]


def test_sampler_epochs_and_skip():
    sampler = EpochSampler(30, batch_size=4, seed=1)
    epoch0 = list(sampler)
    assert len(epoch0) == len(sampler) == 28 and len(set(epoch0)) == 28
    sampler.set_epoch(1)
    epoch1 = list(sampler)
    assert epoch1 != epoch0
    sampler.skip_batches(3)
    assert list(sampler) == epoch1[12:]
    assert list(sampler) == epoch1  # the skip applies once


def test_collator_truncates_and_counts(tiny_bert):
    collate = Collator(tiny_bert.tokenizer, max_length=6)
    batch = collate([("a b",), ("one two three four five six seven eight",)])
    assert batch["input_ids"].shape == (2, 6)
    assert int(batch["truncated"]) == 1
    assert int(batch["num_views"]) == 1
    assert batch["input_ids"][1, -1].item() == tiny_bert.tokenizer.sep_token_id
    pairs = collate([("a", "b"), ("c", "d")])
    assert pairs["input_ids"].shape[0] == 4 and int(pairs["num_views"]) == 2
    assert torch.equal(pairs["attention_mask"].sum(1), torch.full((4,), 3))



@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("cache_size, remembered", [(10, 3), (2, 2), (0, 0)])
def test_collator_remembers_at_most_cache_size_texts_and_equals_the_tokenizer(tiny_bert, side, cache_size, remembered):
    """A batch built from remembered token ids equals the tokenizer's own padded batch, on either padding side,
    and the collator keeps no more distinct texts than `cache_size`."""
    tokenizer = copy.deepcopy(tiny_bert.tokenizer)
    tokenizer.padding_side = side
    collate = Collator(tokenizer, max_length=6, cache_size=cache_size)
    texts = ["a b", "one two three four five six seven", "c", "a b"]
    expected = tokenizer(texts, padding=True, truncation=True, max_length=6, return_tensors="pt")
    for _ in range(2):  # the second call reads the remembered texts from memory
        batch = collate([(text,) for text in texts])
        assert torch.equal(batch["input_ids"], expected["input_ids"])
        assert torch.equal(batch["attention_mask"], expected["attention_mask"])
        assert int(batch["truncated"]) == 1
    assert len(collate._tokenised) == remembered


@pytest.mark.parametrize(
    "limits, epochs",
    [({"max_steps": 12}, 1), ({"max_steps": 13}, 2), ({"max_steps": 6, "accumulate_grad_batches": 3}, 2),
     ({"max_epochs": 1}, 1), ({"max_epochs": 3, "max_steps": 12}, 1), ({"max_epochs": 3}, 3), ({}, math.inf)],
)  # fmt: skip
def test_training_loader_caches_tokens_only_when_a_text_comes_back(tmp_path, limits, epochs):
    """12 batches an epoch: the epochs a run's loader starts, whichever of max_steps and max_epochs stops it first
    (neither: until stopped); the loader keeps tokens only for a run of more than one."""
    import pytorch_lightning as pl

    from ctrain.data.datamodule import _epochs_to_train

    trainer = pl.Trainer(default_root_dir=tmp_path, logger=False, **limits)
    assert _epochs_to_train(trainer, batches_per_epoch=12) == epochs


@pytest.mark.parametrize("max_steps, cache_size", [(12, 0), (13, 7)])
def test_training_loader_of_one_epoch_keeps_no_tokens(tiny_bert, tmp_path, max_steps, cache_size):
    from types import SimpleNamespace

    (tmp_path / "twelve.txt").write_text("".join(f"sentence number {i}\n" for i in range(12)))
    data = ContrastiveDataModule(train=str(tmp_path / "twelve.txt"), batch_size=1, cache_texts=7)
    data.trainer = SimpleNamespace(
        lightning_module=SimpleNamespace(encoder=tiny_bert), world_size=1, global_step=0,
        accumulate_grad_batches=1, max_epochs=None, max_steps=max_steps,
    )  # fmt: skip
    data.load_training_examples(world_size=1)
    assert data.train_dataloader().collate_fn.cache_size == cache_size


NLI_FILE = Path(__file__).parent / "data" / "nli_synthetic.csv"


def test_nli_pairs_from_names_ids_and_snli_no_gold(tmp_path):
    (tmp_path / "nli.jsonl").write_text(
        '{"p": "a", "h": "b", "y": "Entailment"}\n{"p": "c", "h": "d", "y": 2}\n'
        '{"p": "e", "h": "f", "y": -1}\n{"p": "g", "h": "i", "y": "neutral"}\n'
    )
    pairs, labels = load_nli_pairs(str(tmp_path / "nli.jsonl"), ["p", "h"], "y")
    assert pairs == [("a", "b"), ("c", "d"), ("g", "i")] and labels == [0, 2, 1]
    pairs, labels = load_nli_pairs(str(NLI_FILE), ["premise", "hypothesis"], "label")
    assert len(pairs) == 900 and sorted(set(labels)) == [0, 1, 2] and labels.count(0) == 300


@pytest.mark.parametrize(
    "columns, label_column, message",
    [(["p", "h"], "y", r"row 2 has label 'maybe' in column 'y'"), (["p"], "y", "two sentence columns"), (["p", "h"], "z", r"\['z'\] not in")],
)
def test_bad_nli_data_gives_one_line_errors(tmp_path, columns, label_column, message):
    (tmp_path / "nli.csv").write_text("p,h,y\na,b,contradiction\nc,d,maybe\n")
    with pytest.raises(ValueError, match=message) as error:
        load_nli_pairs(str(tmp_path / "nli.csv"), columns, label_column)
    assert "\n" not in str(error.value)


def test_label_column_needs_supervised_pairs():
    module = ContrastiveDataModule(train=str(NLI_FILE), columns=["premise", "hypothesis"], label_column="label", batch_size=4)
    with pytest.raises(ValueError, match="data.label_column needs data.supervised=true"):
        module.load_training_examples(world_size=1)
    module = ContrastiveDataModule(
        train=str(NLI_FILE), supervised=True, columns=["premise", "hypothesis"], label_column="label", batch_size=4, max_examples=10
    )
    module.load_training_examples(world_size=1)
    assert len(module.examples) == len(module.labels) == 10


def test_labelled_pairs_give_labels_or_entailment_positives():
    module = ContrastiveDataModule(train=str(NLI_FILE), supervised=True, columns=["premise", "hypothesis"], label_column="label", batch_size=4)
    module.trainer = type("FakeTrainer", (), {"world_size": 1})()
    module.load_training_examples(world_size=1)
    labelled = module.training_items(wants_labels=True)
    assert len(labelled) == 900 and labelled[0] == (module.examples[0], module.labels[0])
    positives = module.training_items(wants_labels=False)
    assert len(positives) == 300 and all(module.labels[module.examples.index(pair)] == 0 for pair in positives)


def test_collator_carries_nli_labels(tiny_bert):
    collate = Collator(tiny_bert.tokenizer, max_length=8, labelled=True)
    batch = collate([(("a", "b"), 2), (("c", "d"), 0)])
    assert batch["labels"].tolist() == [2, 0] and batch["input_ids"].shape[0] == 4
    assert "labels" not in Collator(tiny_bert.tokenizer, max_length=8)([("a", "b")])


def test_negative_cache_texts_is_a_one_line_error():
    with pytest.raises(ValueError, match="data.cache_texts must be >= 0"):
        ContrastiveDataModule(cache_texts=-1)
