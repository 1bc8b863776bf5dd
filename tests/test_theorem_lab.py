"""The Theorem-1 lab: the bag-of-embeddings encoder, every switch of configs/theorem_lab/, the SGNS control on a
planted-topic corpus, the theorem measurements against a direct computation, and a random start that redraws
every weight of a loaded model."""

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import yaml
from jsonargparse import ArgumentParser
from scipy import stats

from ctrain.cli.fit import run_cli
from ctrain.data.datamodule import ContrastiveDataModule
from ctrain.models.encoder import EncoderConfig, load_encoder
from ctrain.models.export import save_sentence_transformer
from ctrain.probes.weighting import token_statistics
from ctrain.probes.weighting import THEOREM_KEYS, WeightingConfig, weighting_probe
from ctrain.probes.weighting.lab_peer import train_word2vec
from ctrain.training.losses import sgns_loss
from ctrain.training.module import ContrastiveModule
from ctrain.training.objectives import sgns_pairs
from helpers import TOY_SENTENCES

ROOT = Path(__file__).resolve().parents[1]
LAB = ROOT / "configs" / "theorem_lab"
TOY = TOY_SENTENCES * 4


def _exact_model_settings(*overlays: dict) -> dict:
    """configs/theorem_lab.yaml's model settings with `overlays` layered on, as LightningCLI layers config files."""
    settings = yaml.safe_load((ROOT / "configs" / "theorem_lab.yaml").read_text())["model"]
    for overlay in overlays:
        settings = _layered(settings, overlay)
    return settings


def _layered(base: dict, overlay: dict) -> dict:
    """Nested settings merged key by key; a value that names a class (class_path) or a short name replaces the old one."""
    merged = dict(base)
    for key, value in overlay.items():
        nested = isinstance(value, dict) and isinstance(base.get(key), dict) and "class_path" not in value
        merged[key] = _layered(base[key], value) if nested else value
    return merged


def _module(settings: dict) -> ContrastiveModule:
    """The module a config's `model:` settings make, parsed and instantiated as LightningCLI does."""
    parser = ArgumentParser()
    parser.add_class_arguments(ContrastiveModule, "model")
    return parser.instantiate(parser.parse_object({"model": settings})).model


def _fit(corpus: Path, steps: int, model: dict, batch_size: int = 16) -> tuple[ContrastiveModule, float]:
    """`steps` optimizer steps of the module on a text file, no validation or outputs; the last training loss."""
    pl.seed_everything(0, verbose=False)
    module = _module(model)
    data = ContrastiveDataModule(train=str(corpus), batch_size=batch_size, max_length=32)
    trainer = pl.Trainer(
        max_steps=steps, limit_val_batches=0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, use_distributed_sampler=False, accelerator="cpu",
    )  # fmt: skip
    trainer.fit(module, datamodule=data)
    return module, float(trainer.callback_metrics["train/loss"])


@pytest.fixture(scope="module")
def toy_corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("toy") / "toy.txt"
    path.write_text("\n".join(TOY) + "\n")
    return path


def test_bag_encoder_is_the_mean_of_its_token_rows_and_survives_saving(tmp_path):
    encoder = load_encoder("bag-bert", tiny_hidden_size=16)
    batch = encoder.tokenize(["the cat sleeps", "a man"])
    assert not encoder.special_mask(batch["input_ids"][batch["attention_mask"].bool()]).any()  # no [CLS]/[SEP]
    rows = encoder.word_embeddings(batch["input_ids"])
    mask = batch["attention_mask"].unsqueeze(-1).float()
    torch.testing.assert_close(encoder(**batch), (rows * mask).sum(1) / mask.sum(1))
    assert encoder.num_layers == 0 and encoder.embedding_size == 16
    save_sentence_transformer(encoder, tmp_path / "bag", "dot")
    reloaded = load_encoder(str(tmp_path / "bag"))
    assert torch.equal(
        reloaded.tokenize(["the cat sleeps"])["input_ids"],
        encoder.tokenize(["the cat sleeps"])["input_ids"],
    )
    torch.testing.assert_close(reloaded.encode(["the cat sleeps"]), encoder.encode(["the cat sleeps"]))
    layered = load_encoder("bag-bert", tiny_hidden_size=16, bag_layers=2)
    assert layered.num_layers == 2 and len(layered.token_states(**batch, output_hidden_states=True).hidden_states) == 3


def _switches() -> list[str]:
    return sorted(path.stem for path in LAB.glob("*.yaml"))


@pytest.mark.parametrize("switch", _switches())
def test_every_lab_switch_trains_a_few_steps(switch, toy_corpus):
    overlay = yaml.safe_load((LAB / f"{switch}.yaml").read_text())
    model = _exact_model_settings({"encoder": {"tiny_hidden_size": 16}}, overlay.get("model", {}))
    encoder = model["encoder"]
    before = load_encoder(encoder["name"], tiny_hidden_size=16, bag_layers=encoder.get("bag_layers", 0),
                          embedding_init_std=encoder.get("embedding_init_std")).word_embeddings.weight.detach().clone()  # fmt: skip
    module, loss = _fit(toy_corpus, 3, model)
    assert math.isfinite(loss) and loss > 0
    assert not torch.equal(module.encoder.word_embeddings.weight.detach(), before)


def test_positive_views_split_words_and_keep_special_tokens():
    module = ContrastiveModule(encoder=EncoderConfig("tiny-bert"), positives="halves")
    batch = module.encoder.tokenize(["a man is playing a guitar on the stage", "hello"])
    ids, mask = module._positive_views(batch["input_ids"], batch["attention_mask"])
    words = ~module.encoder.special_mask(batch["input_ids"]) & batch["attention_mask"].bool()
    first, second = mask.bool().chunk(2)
    assert torch.equal((first & second & words)[0], torch.zeros_like(words[0]))  # disjoint halves
    assert torch.equal((first | second)[0], batch["attention_mask"][0].bool())  # together the whole sentence
    assert torch.equal(first[1], second[1])  # one word: its own positive
    specials = module.encoder.special_mask(batch["input_ids"]) & batch["attention_mask"].bool()
    assert (first & specials).sum() == (second & specials).sum() == specials.sum()
    module.hparams.positives, module.hparams.token_dropout = "token_dropout", 0.5
    _, dropped = module._positive_views(batch["input_ids"], batch["attention_mask"])
    kept = dropped.bool().chunk(2)[0]
    assert (kept & words).sum() < words.sum() and torch.equal(kept & specials, specials)
    assert torch.equal(ids, batch["input_ids"].repeat(2, 1))


def test_sgns_loss_is_word2vecs():
    rng = np.random.default_rng(0)
    u, v, n = (
        rng.normal(size=(5, 3)),
        rng.normal(size=(5, 3)),
        rng.normal(size=(5, 2, 3)),
    )
    log_sigmoid = lambda x: -np.log1p(np.exp(-x))
    direct = -(log_sigmoid((u * v).sum(1)) + log_sigmoid(-np.einsum("pd,pkd->pk", u, n)).sum(1)).mean()
    assert float(sgns_loss(*(torch.from_numpy(a) for a in (u, v, n)))) == pytest.approx(direct, rel=1e-6)


@pytest.mark.parametrize("self_pairs", [True, False])
def test_sgns_pairs_are_every_ordered_pair_of_a_sentences_words(self_pairs):
    """The pairs SGNS trains on (and the lab's word2vec replica without a position's pair with itself), by brute force."""
    words = torch.tensor([[False, True, True, True, False], [False, True, False, True, True], [False, False, False, False, False]])
    expected = [
        (s, i, j) for s in range(3) for i in range(5) for j in range(5) if words[s, i] and words[s, j] and (self_pairs or i != j)
    ]  # fmt: skip
    assert list(zip(*(index.tolist() for index in sgns_pairs(words, self_pairs)))) == expected


TOPICS = [
    ["apple", "banana", "cherry"],
    ["guitar", "piano", "violin"],
    ["soccer", "tennis", "hockey"],
    ["river", "mountain", "forest"],
]
COMMON = ["the", "and", "of", "with", "from", "very", "also", "then"]


def test_sgns_control_orders_planted_types_by_their_kl(tmp_path):
    """Sentences of one topic: 3 of its words (each pins the topic down: high KL) among 5 common words spread over all
    topics (low KL). SGNS must give every planted topic word a larger norm than every common word, as gensim's
    word2vec (skip-gram, negative sampling from unigram^1, whole-sentence window) does on the same sentences."""
    rng = np.random.default_rng(0)
    sentences = [
        " ".join(rng.permutation(list(rng.choice(TOPICS[rng.integers(4)], 3)) + list(rng.choice(COMMON, 5)))) for _ in range(640)
    ]
    corpus = tmp_path / "topics.txt"
    corpus.write_text("\n".join(sentences) + "\n")
    model = _exact_model_settings({"objective": "sgns", "encoder": {"tiny_hidden_size": 16}})
    module, _ = _fit(corpus, 200, model, batch_size=32)
    encoder = module.encoder
    statistics = token_statistics(encoder.tokenizer, sentences, dkl_repeats=1)
    topic_words = [word for topic in TOPICS for word in topic]
    kl = {word: statistics.kl[statistics.types.index(word)] for word in topic_words + COMMON}
    assert min(kl[w] for w in topic_words) > max(kl[w] for w in COMMON)  # the corpus plants what the test says
    ids = encoder.tokenizer.convert_tokens_to_ids(topic_words + COMMON)
    half_norm = 0.5 * encoder.word_embeddings.weight[ids].detach().double().pow(2).sum(1).numpy()
    norms = dict(zip(topic_words + COMMON, half_norm))
    assert min(norms[w] for w in topic_words) > max(norms[w] for w in COMMON), norms
    pytest.importorskip("gensim.models")
    word2vec = train_word2vec([sentence.split() for sentence in sentences], width=16, epochs=20, negative=1, ns_exponent=1.0, min_count=1, seed=0)
    peer = {word: 0.5 * float(np.sum(word2vec.wv[word] ** 2)) for word in topic_words + COMMON}
    assert min(peer[w] for w in topic_words) > max(peer[w] for w in COMMON), peer


def test_theorem_measurements_equal_a_direct_computation():
    encoder = load_encoder("bag-bert", tiny_hidden_size=8, bag_layers=1, embedding_init_std=1.0)
    config = WeightingConfig(
        ig_mode="sketch",
        sketch_size=2,
        steps=4,
        min_count=2,
        dkl_repeats=1,
        batch_size=5,
    )
    result = weighting_probe(encoder, TOY[:8], config)
    statistics = token_statistics(encoder.tokenizer, TOY[:8], dkl_repeats=1)
    eligible = [i for i, name in enumerate(statistics.types) if statistics.counts[i] >= 2]
    ids = encoder.tokenizer.convert_tokens_to_ids([statistics.types[i] for i in eligible])
    rows = 0.5 * encoder.word_embeddings.weight[ids].detach().double().pow(2).sum(1).numpy()
    quantities = {
        "kl": statistics.kl,
        "dkl": statistics.dkl,
        "selfinfo": statistics.self_information,
    }
    for quantity, values in quantities.items():
        x = values[eligible]
        slope, intercept = np.polyfit(x, rows, 1)
        keys = THEOREM_KEYS["input", quantity]
        assert result.metrics[keys.slope] == pytest.approx(slope, rel=1e-6)
        assert result.metrics[keys.intercept] == pytest.approx(intercept, rel=1e-6, abs=1e-9)
        assert result.metrics[keys.r2] == pytest.approx(np.corrcoef(x, rows)[0, 1] ** 2, rel=1e-6)
        assert result.metrics[keys.spearman] == pytest.approx(stats.spearmanr(x, rows).statistic, rel=1e-9)
        assert result.metrics[keys.n] == len(eligible)
    assert result.metrics["weighting/theorem_input_half_norm_mean"] == pytest.approx(rows.mean(), rel=1e-9)
    # last-layer states, one point per occurrence: the states of the probe's own forward pass
    batch = encoder.tokenize(TOY[:8])
    with torch.no_grad():
        states = encoder.eval().token_states(**batch).last_hidden_state
    valid = batch["attention_mask"].bool()
    names = encoder.tokenizer.convert_ids_to_tokens(batch["input_ids"][valid].tolist())
    kept = np.array([statistics.counts[statistics.types.index(name)] >= 2 for name in names])
    norms = 0.5 * states[valid].double().pow(2).sum(1).numpy()[kept]
    x = np.array([statistics.kl[statistics.types.index(name)] for name in names])[kept]
    keys = THEOREM_KEYS["last", "kl"]
    assert result.metrics[keys.slope] == pytest.approx(np.polyfit(x, norms, 1)[0], rel=1e-5)
    assert result.metrics[keys.spearman] == pytest.approx(stats.spearmanr(x, norms).statistic, rel=1e-6)


@pytest.mark.parametrize("name", ["tiny-bert", "bag-bert"])
def test_a_random_start_redraws_every_weight_of_a_saved_model(name, tmp_path):
    trained = load_encoder(name, tiny_hidden_size=16, bag_layers=1)
    with torch.no_grad():  # as after training: no weight left at its initial value (LayerNorm at 1, biases at 0)
        for parameter in trained.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))
    save_sentence_transformer(trained, tmp_path / "model")
    saved = dict(trained.backbone.named_parameters())
    loaded = load_encoder(str(tmp_path / "model"))
    assert all(torch.equal(p, saved[n]) for n, p in loaded.backbone.named_parameters())
    redrawn = dict(load_encoder(str(tmp_path / "model"), reinitialize=True).backbone.named_parameters())
    assert redrawn.keys() == saved.keys()
    unchanged = [n for n, p in redrawn.items() if torch.equal(p, saved[n])]
    assert not unchanged, unchanged


def test_initial_embedding_scale_is_the_std_of_the_rows():
    for std in (0.01, 1.0):
        rows = load_encoder("bag-bert", embedding_init_std=std).word_embeddings.weight
        assert float(rows.std()) == pytest.approx(std, rel=0.01)
    with pytest.raises(ValueError, match="embedding_init_std must be positive"):
        load_encoder("bag-bert", embedding_init_std=0.0)


def test_exact_setting_runs_from_its_config_and_logs_every_fit(tmp_path):
    """configs/theorem_lab.yaml + callbacks/theorem_lab.yaml through the CLI: probes at steps 0 and 4."""
    probe = yaml.safe_load((ROOT / "callbacks" / "theorem_lab.yaml").read_text())
    probe["trainer"]["callbacks"][0]["init_args"].update(every_n_steps=4, num_sentences=24)
    (tmp_path / "probe.yaml").write_text(yaml.safe_dump(probe))
    run_cli([
        "fit", "--config", str(ROOT / "configs" / "theorem_lab.yaml"), "--config", str(tmp_path / "probe.yaml"),
        "--data.max_examples", "256", "--data.max_eval_pairs", "32", "--trainer.max_steps", "4",
        "--trainer.val_check_interval", "4", "--trainer.log_every_n_steps", "1", "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false", "--trainer.logger.init_args.save_dir", str(tmp_path),
    ])  # fmt: skip
    with (tmp_path / "theorem_lab" / "version_0" / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    probed = [row for row in rows if row.get("weighting/theorem_input_slope")]
    assert [int(row["step"]) for row in probed] == [0, 4]
    for keys in THEOREM_KEYS.values():
        assert all(math.isfinite(float(row[keys.spearman])) for row in probed)


def test_probe_on_the_training_corpus_measures_what_the_run_trained_on(toy_corpus, tmp_path):
    """`split: training`: probe sentences drawn from, and statistics computed over, the run's own training texts."""
    from ctrain.callbacks import WordWeightingProbe
    from ctrain.probes.weighting import token_statistics

    probe = yaml.safe_load((ROOT / "callbacks" / "theorem_lab.yaml").read_text())
    probe["trainer"]["callbacks"][0]["init_args"].update(every_n_steps=2, num_sentences=5, split="training")
    (tmp_path / "probe.yaml").write_text(yaml.safe_dump(probe))
    save_sentence_transformer(load_encoder("bag-bert", tiny_hidden_size=16), tmp_path / "bag", "dot")
    cli = run_cli([
        "fit", "--config", str(ROOT / "configs" / "theorem_lab.yaml"), "--config", str(tmp_path / "probe.yaml"),
        "--model.encoder.name", str(tmp_path / "bag"), "--data.train", str(toy_corpus), "--data.batch_size", "8",
        "--data.max_examples", "12", "--trainer.max_steps", "2", "--trainer.limit_val_batches", "0",
        "--trainer.enable_progress_bar", "false", "--trainer.logger.init_args.save_dir", str(tmp_path),
    ])  # fmt: skip
    (callback,) = [c for c in cli.trainer.callbacks if isinstance(c, WordWeightingProbe)]
    texts = [text for example in cli.datamodule.examples for text in example]
    assert len(texts) == 12 and callback.corpus == texts
    assert len(callback.sentences) == 5 and set(callback.sentences) <= set(texts)
    c = callback.config
    expected = token_statistics(cli.model.encoder.tokenizer, texts, units=c.units, include_self=c.include_self, dkl_repeats=c.dkl_repeats, seed=c.seed, max_length=c.max_length)
    assert callback.statistics.num_sentences == 12 and callback.statistics.types == expected.types
    np.testing.assert_array_equal(callback.statistics.kl, expected.kl)
    with pytest.raises(ValueError, match="split='training'.* needs a run"):
        WordWeightingProbe(split="training").load_sentences()  # outside a run there are no training texts


def test_lab_report_table_and_figures_come_from_the_last_probe():
    import pandas as pd

    from ctrain.reporting import lab_report

    slope, r2 = THEOREM_KEYS["input", "kl"].slope, THEOREM_KEYS["input", "kl"].r2

    def run(final_slope: float) -> pd.DataFrame:
        return pd.DataFrame(
            {"step": [0, 50, 100], "examples": [0, 50, 100], slope: [0.0, float("nan"), final_slope], r2: [0.1, None, 0.5]}
            | {"train/loss": [1.4, 1.3, 1.2]}
        )

    runs = {"config=sgns": run(2.0), "config=exact": run(-0.5)}
    rows = lab_report.table_rows(runs, order=["exact", "sgns"])
    assert [row["setting"] for row in rows] == ["exact", "sgns"]
    assert rows[0]["input rows: slope on KL(w)"] == -0.5 and rows[1]["input rows: R^2 on KL(w)"] == 0.5
    assert rows[0]["final training loss"] == 1.2 and math.isnan(rows[0]["input rows: Spearman on KL(w)"])
    figures = lab_report.figures(runs, "lab", "step")
    assert set(figures) == {"theorem_input_kl_slope", "theorem_input_kl_r2"}
    assert len(figures["theorem_input_kl_r2"].axes[0].lines) == 2
    assert len(figures["theorem_input_kl_slope"].axes[0].lines) == 3  # and the theorem's slope 1, dotted
    assert lab_report.csv_text(rows).splitlines()[0].startswith("setting,last step,")


def test_lab_report_draws_a_setting_over_seeds_as_a_band_beside_a_reference():
    import pandas as pd
    from matplotlib.collections import PolyCollection

    from ctrain.reporting import lab_report

    spearman = THEOREM_KEYS["input", "kl"].spearman

    def run(values: list[float], converged: float = float("nan")) -> pd.DataFrame:
        steps = [0, 100, 200][: len(values)]
        return pd.DataFrame({"step": steps, "examples": steps, spearman: values, "convergence/converged_step": [None] * (len(values) - 1) + [converged],
                             "weighting/theorem_input_half_norm_mean": [0.01 * 10**i for i in range(len(values))]})  # fmt: skip

    runs = {
        "seed_everything=1,config=exact": run([0.0, -0.2, -0.4], converged=200),
        "seed_everything=2,config=exact": run([0.0, -0.4, -0.6]),
        "seed_everything=1,config=sgns": run([0.0, 0.5]),
    }
    peer = pd.DataFrame({"run": "word2vec", "step": [100, 200], "examples": [100, 200], spearman: [0.7, 0.8]})
    drawn = lab_report.figures(runs, "lab", "step", ["exact", "sgns"], {"word2vec": peer})
    assert drawn["theorem_input_half_norm_mean"].axes[0].get_yscale() == "log"  # the norms' growth, a curve per setting
    figure = drawn["theorem_input_kl_spearman"]
    lines = {line.get_label(): line for line in figure.axes[0].lines}
    assert list(lines) == ["exact", "sgns", "word2vec"]
    np.testing.assert_allclose(lines["exact"].get_ydata(), [0.0, -0.3, -0.5])  # the mean over seeds
    (band,) = [c for c in figure.axes[0].collections if isinstance(c, PolyCollection)]  # exact only: sgns has one seed
    assert band.get_paths()[0].vertices[:, 1].min() == pytest.approx(-0.6)  # down to the lowest seed
    assert figure.axes[0].get_xscale() == "linear"  # probes every 100 steps
    long_run = pd.DataFrame({"step": [0, 1, 10, 100, 1000, 10000], "examples": range(6), spearman: [0.0, 0.1, 0.2, 0.3, 0.4, 0.5]})
    assert lab_report.figures({"exact": long_run}, "lab", "step")["theorem_input_kl_spearman"].axes[0].get_xscale() == "symlog"
    rows = lab_report.table_rows(runs, ["exact", "sgns"])
    assert [(row["setting"], row["seed"]) for row in rows] == [("exact", "1"), ("exact", "2"), ("sgns", "1")]
    seeds_only = lab_report.figures({"seed_everything=1": run([0.1, 0.2]), "seed_everything=2": run([0.3, 0.4])}, "lab", "step")
    assert [line.get_label() for line in seeds_only["theorem_input_kl_spearman"].axes[0].lines] == ["all seeds"]
    (summary,) = lab_report.seed_rows(rows)  # sgns has a single seed: no summary row
    assert summary["objective converged"] == "1 of 2"
    assert summary["input rows: Spearman on KL(w)"] == "-0.5 (-0.6, -0.4)"


def test_reference_curves_need_their_step_columns(tmp_path):
    from ctrain.reporting.report import read_references

    good, bad = tmp_path / "peer.csv", tmp_path / "bad.csv"
    good.write_text("run,epoch,step,examples,weighting/theorem_input_spearman\nword2vec,1,165,10560,-0.7\nword2vec,2,330,21120,-0.5\n")
    bad.write_text("run,epoch,weighting/theorem_input_spearman\nword2vec,1,-0.7\n")
    assert list(read_references([str(good)])["word2vec"]["step"]) == [165, 330]
    with pytest.raises(ValueError, match=r"lacks the columns \['examples', 'step'\].*lab_peer.py plot"):
        read_references([str(bad)])
