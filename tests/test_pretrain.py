"""MLM pre-training (masking statistics, loss going down, the saved model as a contrastive start) and the offline corpus."""

import csv
import json
from pathlib import Path

import pytest
import torch
import yaml
from helpers import ctrain_in_fork

from ctrain.cli import main
from ctrain.data.corpus import (
    build_corpus,
    held_out_sentences,
    normalise,
    split_sentences,
    wikitext_paragraphs,
)
from ctrain.data.sources import read_sts_b
from ctrain.keys import STS_DEV, STS_TEST
from ctrain.data.mlm import (
    IGNORE_INDEX,
    MaskedLMCollator,
    PackedRowsCollator,
    mask_tokens,
    pack_sentences,
    word_start_positions,
)
from ctrain.models.encoder import EncoderConfig, load_encoder, word_special_ids
from ctrain.probes.sts import StsEvaluator
from ctrain.models.tokenizers import load_tokenizer
from ctrain.training.module import ContrastiveModule
from ctrain.training.pretrain import WALL_SECONDS, MaskedLMModule

ROOT = Path(__file__).resolve().parents[1]
MASK_ID, VOCAB = 4, 1000


def toy_batch(rows: int = 16, length: int = 24) -> tuple[torch.Tensor, torch.Tensor]:
    """Ids 10.. for words, 1 = [CLS] at 0, 2 = [SEP] after the words, 0 = pad after it; row r has length - r % 6 tokens."""
    input_ids = torch.zeros(rows, length, dtype=torch.long)
    maskable = torch.zeros(rows, length, dtype=torch.bool)
    for row in range(rows):
        words = length - 2 - row % 6
        input_ids[row, 0], input_ids[row, words + 1] = 1, 2
        input_ids[row, 1 : words + 1] = torch.arange(10, 10 + words)
        maskable[row, 1 : words + 1] = True
    return input_ids, maskable


def test_token_masking_rates_and_80_10_10_split():
    input_ids, maskable = toy_batch()
    word_start = torch.arange(input_ids.shape[1]).expand_as(input_ids)
    generator = torch.Generator().manual_seed(0)
    chosen_total, as_mask, as_random, unchanged = 0, 0, 0, 0
    draws = 400
    for _ in range(draws):
        masked, labels = mask_tokens(input_ids, maskable, word_start, mask_token_id=MASK_ID, vocab_size=VOCAB, generator=generator)
        chosen = labels != IGNORE_INDEX
        assert not chosen[~maskable].any(), "a special or pad token was chosen"
        assert torch.equal(labels[chosen], input_ids[chosen])
        assert torch.equal(masked[~chosen], input_ids[~chosen]), "an unchosen token was changed"
        chosen_total += int(chosen.sum())
        as_mask += int((masked[chosen] == MASK_ID).sum())
        unchanged += int((masked[chosen] == input_ids[chosen]).sum())
        as_random += int(((masked[chosen] != MASK_ID) & (masked[chosen] != input_ids[chosen])).sum())
    rate = chosen_total / (draws * int(maskable.sum()))
    assert abs(rate - 0.15) < 0.005  # ~46k Bernoulli(0.15) draws: sd 0.0017
    assert abs(as_mask / chosen_total - 0.8) < 0.015
    # 10% random tokens, of which 1/VOCAB happen to be the original (they count as unchanged)
    assert abs(as_random / chosen_total - 0.1 * (1 - 1 / VOCAB)) < 0.01
    assert abs(unchanged / chosen_total - 0.1 * (1 + 1 / VOCAB)) < 0.01


def test_whole_word_masking_chooses_all_pieces_of_a_word_together():
    input_ids, maskable = toy_batch(rows=16, length=24)
    # words of two pieces: positions (1, 2), (3, 4), ...: word_start is the odd position of each pair
    positions = torch.arange(24)
    word_start = torch.where(positions % 2 == 0, positions - 1, positions).clamp_min(0).expand_as(input_ids).clone()
    word_start[~maskable] = positions.expand_as(input_ids)[~maskable]
    generator = torch.Generator().manual_seed(1)
    chosen_words, words = 0, 0
    for _ in range(300):
        _, labels = mask_tokens(input_ids, maskable, word_start, mask_token_id=MASK_ID, vocab_size=VOCAB, generator=generator)
        chosen = labels != IGNORE_INDEX
        first = maskable & (word_start == positions)  # first piece of each word
        second = maskable & ~first
        partners = chosen.gather(1, word_start)
        assert torch.equal(chosen[second], partners[second]), "a word was split by the masking"
        chosen_words += int(chosen[first].sum())
        words += int(first.sum())
    assert abs(chosen_words / words - 0.15) < 0.01


def test_word_start_positions_by_hand():
    assert word_start_positions([None, 0, 0, 1, 2, 2, 2, None, None]) == [0, 1, 1, 3, 4, 4, 4, 7, 8]


def test_collator_marks_specials_pad_and_word_pieces():
    tokenizer = load_tokenizer("bert-uncased")
    batch = MaskedLMCollator(tokenizer, 32, whole_word_masking=True, special_ids=word_special_ids(tokenizer))(["tokenization is fun", "hi"])
    ids = batch["input_ids"]
    tokens = tokenizer.convert_ids_to_tokens(ids[0].tolist())
    assert tokens == ["[CLS]", "token", "##ization", "is", "fun", "[SEP]"]
    assert batch["word_start"][0].tolist() == [0, 1, 1, 3, 4, 5]
    assert batch["maskable"].tolist() == [[False, True, True, True, True, False], [False, True, False, False, False, False]]


def test_token_masking_makes_every_token_its_own_word():
    """`whole_word_masking: false`, one sentence a row or packed: word starts are the positions themselves."""
    tokenizer = load_tokenizer("bert-uncased")
    sentences = ["tokenization is fun", "hi"]
    one_a_row = MaskedLMCollator(tokenizer, 32, whole_word_masking=False, special_ids=word_special_ids(tokenizer))(sentences)
    packed = PackedRowsCollator(tokenizer, whole_word_masking=False, special_ids=word_special_ids(tokenizer))(pack_sentences(tokenizer, sentences, 6))
    for batch in (one_a_row, packed):
        assert batch["word_start"].tolist() == [list(range(batch["input_ids"].shape[1]))] * len(batch["input_ids"])
    assert one_a_row["maskable"].tolist() == MaskedLMCollator(tokenizer, 32, whole_word_masking=True, special_ids=word_special_ids(tokenizer))(sentences)["maskable"].tolist()


def test_packed_rows_by_hand():
    tokenizer = load_tokenizer("bert-uncased")
    rows = pack_sentences(tokenizer, ["tokenization is fun", "hi there", "unbelievable tokenization again"], 6)
    assert [tokenizer.convert_ids_to_tokens(ids) for ids, _ in rows] == [
        ["[CLS]", "token", "##ization", "is", "fun", "[SEP]"],
        ["[CLS]", "hi", "there", "[SEP]", "unbelievable", "token"],
        ["[CLS]", "##ization", "again", "[SEP]"],  # the word split between rows is a word in each
    ]
    assert [starts for _, starts in rows] == [[0, 1, 1, 3, 4, 5], [0, 1, 2, 3, 4, 5], [0, 1, 2, 3]]
    batch = PackedRowsCollator(tokenizer, whole_word_masking=True, special_ids=word_special_ids(tokenizer))(rows)
    assert batch["attention_mask"].tolist()[2] == [1, 1, 1, 1, 0, 0] and batch["input_ids"][2, 4:].tolist() == [0, 0]
    assert batch["maskable"].tolist()[1] == [False, True, True, False, True, True]


@pytest.mark.parametrize("tokenizer_name", ["bert-uncased", "byte-level-bpe"])
def test_packing_keeps_every_token_once_in_order_in_full_rows(tokenizer_name):
    """Brute force on 300 STS-B train sentences: the rows, their [CLS] dropped, are the sentences' tokens each followed
    by [SEP]; every row but the last is full; each token's word start is the first position in its row of its word."""
    tokenizer = load_tokenizer(tokenizer_name)
    sentences = [row[0] for row in read_sts_b("train")[:300]]
    rows = pack_sentences(tokenizer, sentences, 32)
    encoded = tokenizer(sentences, add_special_tokens=False)
    expected_ids, expected_words = [], []
    for index, ids in enumerate(encoded["input_ids"]):
        expected_ids += ids + [tokenizer.sep_token_id]
        expected_words += [None if word is None else (index, word) for word in encoded.word_ids(index)] + [None]
    assert [token for ids, _ in rows for token in ids[1:]] == expected_ids
    assert all(ids[0] == tokenizer.cls_token_id for ids, _ in rows)
    assert {len(ids) for ids, _ in rows[:-1]} == {32} and 1 < len(rows[-1][0]) <= 32
    flat = iter(expected_words)
    for _, starts in rows:
        words = [None] + [next(flat) for _ in starts[1:]]
        for position, word in enumerate(words):
            first = position if word is None else words.index(word)
            assert starts[position] == first
    batch = PackedRowsCollator(tokenizer, whole_word_masking=True, special_ids=word_special_ids(tokenizer))(rows[:8])
    assert batch["attention_mask"].all() and not batch["maskable"][:, 0].any()
    assert int(batch["maskable"].sum()) == sum(1 for ids, _ in rows[:8] for token in ids[1:] if token != tokenizer.sep_token_id)


def test_wall_seconds_go_on_across_a_resume():
    module = MaskedLMModule(hidden_size=16, num_layers=1)
    module.on_load_checkpoint({WALL_SECONDS: 100.0})
    module.on_fit_start()
    assert 100.0 <= module.wall_seconds() < 101.0
    checkpoint = {}
    module.on_save_checkpoint(checkpoint)
    assert checkpoint[WALL_SECONDS] >= 100.0


def tiny_corpus(path: Path) -> Path:
    subjects, verbs, objects = ["the cat", "a dog", "the man", "my friend"], ["eats", "sees", "likes", "finds"], ["fish", "bread", "a ball", "the park"]
    lines = [f"{s} {v} {o} ." for s in subjects for v in verbs for o in objects]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def pretrained_run(tmp_path_factory):
    """A 40-step pre-training of a one-layer BERT on 64 sentences, through the `ctrain pretrain` CLI with the config's
    corpus BPE and packed rows (16 sentences held out leave 11 rows of 32 tokens: batches of 8)."""
    root = tmp_path_factory.mktemp("pretrain")
    corpus = tiny_corpus(root / "tiny.txt")
    export = root / "vanilla"
    main([
        "pretrain", "--config", str(ROOT / "configs" / "pretrain_bert_cpu.yaml"),
        "--model.tokenizer", f"bpe:{corpus}", "--model.hidden_size", "32", "--model.num_layers", "1",
        "--model.learning_rate", "5e-3", "--model.mlm_probability", "0.3", "--data.train", str(corpus),
        "--data.val_size", "16", "--data.batch_size", "8",
        "--trainer.max_steps", "40", "--trainer.val_check_interval", "40", "--trainer.log_every_n_steps", "5",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--trainer.logger.init_args.save_dir", str(root / "runs"), "--outputs.export_dir", str(export),
    ])  # fmt: skip
    return root, export


def test_pretraining_reduces_the_held_out_loss(pretrained_run):
    root, _ = pretrained_run
    with (root / "runs" / "pretrain_bert_cpu" / "version_0" / "metrics.csv").open() as handle:
        held_out = [float(row["val/mlm_loss"]) for row in csv.DictReader(handle) if row["val/mlm_loss"]]
    assert len(held_out) == 2  # step 0 and the end
    assert held_out[-1] < held_out[0] - 1.0, held_out


def test_saved_model_is_a_contrastive_start_that_trains_with_dropout(pretrained_run):

    _, export = pretrained_run
    assert (export / "config.json").exists() and (export / "tokenizer.json").exists()
    module = ContrastiveModule(encoder=EncoderConfig(str(export), pooling="cls_mlp", mlp_only_train=True))
    assert type(module.encoder.backbone).__name__ == "BertModel" and module.encoder.hidden_size == 32
    module.eval()  # whatever left it in eval mode, the training step puts dropout back on
    batch = module.encoder.tokenize(["the cat eats fish .", "a dog sees the park ."])
    module.on_train_batch_start(batch, 0)
    assert module.encoder.training and module.encoder.backbone.training
    first, second = module(**batch), module(**batch)
    assert not torch.allclose(first, second), "two dropout views are identical: dropout is off"


def test_continued_pretraining_is_the_control_arm_from_the_same_start(pretrained_run, tmp_path):
    """`model.init_from` goes on training a saved masked LM (the vanilla start) under the MLM objective, with the
    control config: step 0 measures exactly the encoder `ctrain fit` loads from that start (STS-B dev, probes), the
    run trains, and the start's directory is left as it was."""
    root, export = pretrained_run
    weights = sorted(export.glob("*.safetensors"))
    before = {path.name: path.read_bytes() for path in weights}
    main([
        "pretrain", "--config", str(ROOT / "configs" / "pretrain_bert_cpu.yaml"),
        "--config", str(ROOT / "configs" / "pretrain_continued_cpu.yaml"), "--config", str(ROOT / "tests" / "tiny_probes.yaml"),
        "--model.init_from", str(export), "--model.learning_rate", "5e-3", "--data.train", str(root / "tiny.txt"),
        "--data.val_size", "16", "--data.batch_size", "16", "--trainer.max_steps", "4", "--trainer.val_check_interval", "4",
        "--trainer.log_every_n_steps", "1", "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--trainer.logger.init_args.save_dir", str(tmp_path),
    ])  # fmt: skip
    run_dir = tmp_path / "mlm_continued_cpu" / "version_0"
    with (run_dir / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    sts = {int(row["step"]): float(row[STS_DEV]) for row in rows if row.get(STS_DEV)}
    vanilla = load_encoder(str(export), pooling="mean")
    assert set(sts) == {0, 4}
    assert sts[0] == pytest.approx(StsEvaluator(read_sts_b("dev"))(vanilla)[0], abs=1e-5)  # logged as float32
    probed = {json.loads(line)["step"] for line in (run_dir / "probes" / "weighting.jsonl").read_text().splitlines()}
    assert {0, 4} <= probed and any(row.get("geometry/anisotropy/layer_1") for row in rows)
    assert sum(1 for row in rows if row.get("train/mlm_loss")) == 4
    assert {path.name: path.read_bytes() for path in weights} == before  # the start is not overwritten
    trained = load_encoder(str(run_dir / "model_final"), pooling="mean")
    assert not torch.equal(trained.backbone.embeddings.word_embeddings.weight, vanilla.backbone.embeddings.word_embeddings.weight)
    final_test = [float(row[STS_TEST]) for row in rows if row.get(STS_TEST)]  # the end point, as a fit run logs it
    assert final_test == [pytest.approx(StsEvaluator(read_sts_b("test"))(trained)[0], abs=1e-5)]


def test_gpu_config_packs_rows_of_its_length_and_trains_on_a_cpu(tmp_path):
    """configs/pretrain_bert_gpu.yaml with its device, precision and size turned down: packed rows of 128 tokens
    train, and the held-out loss is measured on single sentences."""
    corpus = tiny_corpus(tmp_path / "tiny.txt")
    main([
        "pretrain", "--config", str(ROOT / "configs" / "pretrain_bert_gpu.yaml"), "--trainer.accelerator", "cpu",
        "--trainer.precision", "32-true", "--model.hidden_size", "32", "--model.num_layers", "1", "--data.train", str(corpus),
        "--data.val_size", "16", "--data.batch_size", "2", "--trainer.max_steps", "2", "--trainer.val_check_interval", "2",
        "--trainer.log_every_n_steps", "1",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"), "--outputs.export_dir", str(tmp_path / "start"),
    ])  # fmt: skip
    module = MaskedLMModule(init_from=str(tmp_path / "start"), max_length=128)
    rows = module.pack(tiny_corpus(tmp_path / "again.txt").read_text().splitlines())
    assert {len(ids) for ids, _ in rows[:-1]} == {128}
    with (tmp_path / "runs" / "pretrain_bert_gpu" / "version_0" / "metrics.csv").open() as handle:
        logged = list(csv.DictReader(handle))
    assert sum(1 for row in logged if row["train/mlm_loss"]) == 2 and sum(1 for row in logged if row["val/mlm_loss"]) == 2


def test_init_from_a_directory_without_a_model_is_a_one_line_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="has no config.json: give a `ctrain pretrain` export"):
        MaskedLMModule(init_from=str(tmp_path))


def test_pretrain_configs_parse(capsys):
    for config in sorted((ROOT / "configs").glob("pretrain_*.yaml")):
        with pytest.raises(SystemExit) as exit_code:
            main(["pretrain", "--config", str(config), "--print_config"])
        assert exit_code.value.code in (0, None)
        printed = yaml.safe_load(capsys.readouterr().out)
        assert printed["model"]["mlm_probability"] == 0.15


def test_normalise_and_sentence_split_by_hand():
    assert normalise("  A Man, is PLAYING  a guitar!! ") == "a man is playing a guitar"
    assert split_sentences('He left. "Why?" she asked. It was 5 p.m. in May.') == ["He left.", '"Why?" she asked.', "It was 5 p.m. in May."]


def test_wikitext_stripping_by_hand():
    page = (
        "{{Infobox|name={{nested}}}}'''Albedo''' is the [[reflection|reflectivity]] of a [[surface]].<ref>Smith</ref>\n"
        "[[File:x.png|thumb|a [[caption]]]]\n== History ==\n* a list item\n\nIt is measured from 0 to 1."
    )
    assert wikitext_paragraphs(page) == ["Albedo is the reflectivity of a surface.", "It is measured from 0 to 1."]


@pytest.fixture(scope="module")
def corpus_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    return [build_corpus(str(root / name)) and root / name for name in ("a", "b")]


def test_corpus_is_deterministic(corpus_dirs):
    first, second = corpus_dirs
    for name in ("all.txt", "wikipedia.txt", "news.txt", "stsb_train.txt", "manifest.json"):
        assert (first / name).read_bytes() == (second / name).read_bytes(), name


def test_corpus_excludes_every_sts_b_dev_and_test_sentence(corpus_dirs):
    from ctrain.data.sources import read_sts_b

    lines = (corpus_dirs[0] / "all.txt").read_text().splitlines()
    normalised = {normalise(line) for line in lines}
    held_out = held_out_sentences()
    assert len(held_out) > 5000  # both splits' sentences were read
    assert not normalised & held_out
    assert len(normalised) == len(lines), "duplicates left in the corpus"
    # the exclusion did remove something: STS-B train repeats some dev/test sentences
    train = {normalise(s) for row in read_sts_b("train") for s in row[:2]}
    assert train & held_out


@pytest.mark.parametrize("pack", ["false", "true"])
def test_killed_pretraining_resumes_to_the_same_metrics(tmp_path, pack):
    """Killed at step 6 and resumed: the same metrics as the run that was not killed, one sentence a row or packed
    rows; the wall time is logged at every validation and grows."""
    corpus = tiny_corpus(tmp_path / "tiny.txt")

    def run_args(save_dir: Path) -> list[str]:
        return [
            "pretrain", "--config", str(ROOT / "configs" / "pretrain_bert_cpu.yaml"),
            "--model.tokenizer", f"bpe:{corpus}", "--model.hidden_size", "16", "--model.num_layers", "1", "--data.train", str(corpus),
            "--data.val_size", "8", "--data.batch_size", "8", "--data.pack", pack, "--trainer.max_steps", "8",
            "--trainer.val_check_interval", "4",
            "--trainer.log_every_n_steps", "1", "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
            "--trainer.logger.init_args.save_dir", str(save_dir), "--outputs.export_dir", str(save_dir / "model"),
        ]  # fmt: skip

    def metrics(save_dir: Path) -> list[dict]:
        with (save_dir / "pretrain_bert_cpu" / "version_0" / "metrics.csv").open() as handle:
            return [{key: value for key, value in row.items() if key != WALL_SECONDS} for row in csv.DictReader(handle)]

    def wall_seconds(save_dir: Path) -> list[float]:
        with (save_dir / "pretrain_bert_cpu" / "version_0" / "metrics.csv").open() as handle:
            return [float(row[WALL_SECONDS]) for row in csv.DictReader(handle) if row[WALL_SECONDS]]

    main(run_args(tmp_path / "whole"))
    log = tmp_path / "crash.log"
    killed = ctrain_in_fork([*run_args(tmp_path / "crash"), "--trainer.callbacks", "helpers.KillAtStep", "--trainer.callbacks.step", "6"], log)
    assert killed == -9, log.read_text()[-2000:]
    run_dir = tmp_path / "crash" / "pretrain_bert_cpu" / "version_0"
    main(["pretrain", "--resume", str(run_dir), "--trainer.callbacks=[]", "--trainer.enable_progress_bar", "false"])
    assert metrics(tmp_path / "crash") == metrics(tmp_path / "whole")
    assert sum(1 for row in metrics(tmp_path / "whole") if row["train/mlm_loss"]) == 8
    for save_dir in ("whole", "crash"):
        seconds = wall_seconds(tmp_path / save_dir)
        assert len(seconds) == 3 and seconds == sorted(seconds) and seconds[0] < seconds[-1], seconds


def test_missing_corpus_and_unknown_key_are_one_line_errors(tmp_path, capsys):
    config = str(ROOT / "configs" / "pretrain_bert_cpu.yaml")
    save = ["--trainer.logger.init_args.save_dir", str(tmp_path)]
    for extra, expected in (
        (["--model.tokenizer", "bert-uncased", "--data.train", str(tmp_path / "missing.txt")], "missing.txt' does not exist: fix the path in data.train"),
        (["--model.tokenizer", f"bpe:{tmp_path / 'no_corpus.txt'}"], "no_corpus.txt' to train a BPE on; build it with ctrain corpus"),
        (["--model.not_a_key", "8"], "ctrain pretrain --help lists the keys"),
    ):
        with pytest.raises(SystemExit) as exit_code:
            main(["pretrain", "--config", config, *save, *extra])
        assert exit_code.value.code == 2
        error = capsys.readouterr().err.strip()
        assert expected in error and len(error.splitlines()) == 1, error


def test_roberta_shaped_pretraining_saves_a_start_that_trains(tmp_path):
    """RoBERTa shape with a byte-level BPE trained on the pre-training corpus (`bpe:FILE`): loss goes down, the
    export loads as RobertaModel with padding-aware position ids, and trains with dropout."""

    export, corpus = tmp_path / "vanilla_roberta", tiny_corpus(tmp_path / "tiny.txt")
    main([
        "pretrain", "--config", str(ROOT / "configs" / "pretrain_bert_cpu.yaml"),
        "--model.architecture", "roberta", "--model.tokenizer", f"bpe:{corpus}",
        "--model.hidden_size", "32", "--model.num_layers", "1", "--model.learning_rate", "5e-3",
        "--model.mlm_probability", "0.3", "--model.whole_word_masking", "false",
        "--data.train", str(corpus), "--data.val_size", "16", "--data.batch_size", "8",
        "--trainer.max_steps", "40", "--trainer.val_check_interval", "40", "--trainer.log_every_n_steps", "5",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"), "--outputs.export_dir", str(export),
    ])  # fmt: skip
    vocabulary = load_tokenizer(str(export)).get_vocab()
    assert {"Ġfriend", "Ġbread", "Ġpark"} <= set(vocabulary) and len(vocabulary) < 4000  # the corpus's words, its size
    with (tmp_path / "runs" / "pretrain_bert_cpu" / "version_0" / "metrics.csv").open() as handle:
        held_out = [float(row["val/mlm_loss"]) for row in csv.DictReader(handle) if row["val/mlm_loss"]]
    assert held_out[-1] < held_out[0] - 1.0, held_out
    module = ContrastiveModule(encoder=EncoderConfig(str(export), pooling="mean"))
    assert type(module.encoder.backbone).__name__ == "RobertaModel" and module.encoder.hidden_size == 32
    batch = module.encoder.tokenize(["the cat eats fish .", "a dog ."])
    padding_idx = module.encoder.backbone.config.pad_token_id
    positions = module.encoder.position_ids(batch["input_ids"])
    assert positions[1][batch["attention_mask"][1].bool()].tolist() == list(range(padding_idx + 1, padding_idx + 1 + int(batch["attention_mask"][1].sum())))
    module.on_train_batch_start(batch, 0)
    assert not torch.allclose(module(**batch), module(**batch)), "two dropout views are identical: dropout is off"


@pytest.mark.parametrize(("tolerance", "stopped_at"), [("10", 2), ("1e-9", 10)])
def test_pretraining_stops_when_the_held_out_loss_converges(tmp_path, tolerance, stopped_at):
    """The convergence preset: with a tolerance every window meets, the run ends at its second validation (steps 0
    and 2 of 10); with one none meets, it runs its budget."""
    corpus = tiny_corpus(tmp_path / "tiny.txt")
    main([
        "pretrain", "--config", str(ROOT / "configs" / "pretrain_bert_cpu.yaml"),
        "--config", str(ROOT / "callbacks" / "pretrain_convergence.yaml"),
        "--model.tokenizer", f"bpe:{corpus}", "--model.hidden_size", "16", "--model.num_layers", "1", "--model.warmup", "2",
        "--data.train", str(corpus), "--data.val_size", "8", "--data.batch_size", "8",
        "--trainer.max_steps", "10", "--trainer.val_check_interval", "2", "--trainer.log_every_n_steps", "1",
        "--trainer.callbacks.init_args.window", "2", "--trainer.callbacks.init_args.tolerance", tolerance,
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"), "--outputs.export_dir", str(tmp_path / "model"),
    ])  # fmt: skip
    with (tmp_path / "runs" / "pretrain_bert_cpu" / "version_0" / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    trained = [int(row["step"]) for row in rows if row["train/mlm_loss"]]
    assert max(trained) == stopped_at - 1  # Lightning's step column counts from 0: step k is the (k+1)-th update
    converged = [row["convergence/converged_step"] for row in rows if row.get("convergence/converged_step")]
    assert converged == ([str(stopped_at)] if stopped_at < 10 else [])


def test_make_vanilla_start_composes_the_convergence_stop_with_the_probes(capsys):
    """The Makefile's command for the converged start keeps MetricConvergence: a preset that sets
    `trainer.callbacks:` after `callbacks/pretrain_convergence.yaml` (which appends) would silently drop it."""
    import re

    target = re.search(r"^vanilla-start:.*?\n((?:\t.*\n)+)", (ROOT / "Makefile").read_text(), re.MULTILINE).group(1)
    command = target[target.index("else"):].replace("\\\n", " ")
    configs = re.findall(r"--config (\S+?);?\s", command)
    assert "callbacks/pretrain_convergence.yaml" in configs
    with pytest.raises(SystemExit):
        main(["pretrain", *(word for config in configs for word in ("--config", str(ROOT / config))), "--print_config"])
    callbacks = [entry["class_path"] for entry in yaml.safe_load(capsys.readouterr().out)["trainer"]["callbacks"]]
    assert callbacks == ["ctrain.callbacks.WordWeightingProbe", "ctrain.callbacks.GeometryProbe", "ctrain.callbacks.MetricConvergence"]
