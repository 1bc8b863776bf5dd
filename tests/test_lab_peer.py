"""The lab's peer probe measures what the lab measures; benchmarks/lab/lab_peer.py trains what ctrain trains."""

import math

import numpy as np
import pytest
import torch

from ctrain.probes.weighting.lab_peer import LabProbe, gensim_rows, lab_training_tokens, train_word2vec
from helpers import load_benchmark


@pytest.fixture(scope="module")
def lab_peer():
    return load_benchmark("lab/lab_peer.py")


@pytest.fixture(scope="module")
def probe():
    return LabProbe()


def test_fits_are_the_lab_probes(probe):
    """LabProbe.fits of a bag's rows equals weighting_probe's theorem_input fits with callbacks/theorem_lab.yaml's config."""
    from ctrain.models.encoder import load_encoder
    from ctrain.probes.weighting import WeightingConfig, weighting_probe

    encoder = load_encoder("bag-bert", tiny_hidden_size=64, seed=3, embedding_init_std=0.01)
    with torch.no_grad():  # rows whose norm grows with frequency, so that the fits are not all noise
        counts = torch.zeros(len(encoder.tokenizer))
        ids = encoder.tokenizer(probe.sentences)["input_ids"]
        counts.index_add_(0, torch.tensor([t for s in ids for t in s]), torch.ones(sum(map(len, ids))))
        encoder.word_embeddings.weight.mul_(1 + counts.sqrt().unsqueeze(1))
    config = WeightingConfig(ig_mode="sketch", sketch_size=8, sketch_kind="orthogonal", steps=16, max_length=32, batch_size=64)
    metrics = weighting_probe(encoder, probe.sentences, config, statistics=probe.statistics).metrics
    fits = probe.fits(encoder.word_embeddings.weight)
    for quantity, key in (("kl", "theorem_input"), ("dkl", "theorem_input_dkl"), ("selfinfo", "theorem_input_selfinfo")):
        fit = fits[quantity]
        assert fit.n == metrics[f"weighting/{key}_n"] == 1234
        for name in ("slope", "r2", "spearman"):
            assert getattr(fit, name) == pytest.approx(metrics[f"weighting/{key}_{name}"], rel=1e-9, abs=1e-12)


def test_nan_rows_leave_the_fit(probe):
    table = torch.randn(len(probe.tokenizer), 64, dtype=torch.float64)
    table[probe.tokenizer.convert_tokens_to_ids(probe.statistics.types[int(probe.types[0])])] = math.nan
    assert probe.fits(table)["kl"].n == 1233


def test_training_tokens_are_the_lab_batches(probe):
    """The tokens word2vec trains on are the word positions of ctrain's training batches, in order."""
    from ctrain.data.datamodule import Collator
    from ctrain.models.encoder import load_encoder

    sentences, tokens = lab_training_tokens(probe.tokenizer)
    assert len(sentences) == 10566 and sum(map(len, tokens)) == 132841
    encoder = load_encoder("bag-bert")
    batch = Collator(encoder.tokenizer, 32)([(s,) for s in sentences[:200]])
    words = ~encoder.special_mask(batch["input_ids"]) & batch["attention_mask"].bool()
    for row, (ids, keep) in enumerate(zip(batch["input_ids"], words)):
        assert encoder.tokenizer.convert_ids_to_tokens(ids[keep].tolist()) == tokens[row]
    assert not {"[CLS]", "[SEP]", "[PAD]", "[MASK]"} & {t for sentence in tokens for t in sentence}


def test_replica_is_ctrains_sgns(lab_peer, tmp_path):
    """Three steps of the replica give the very rows ctrain's Lightning run of the lab's sgns setting gives."""
    import pytorch_lightning as pl

    from ctrain.data.datamodule import ContrastiveDataModule
    from ctrain.models.encoder import EncoderConfig
    from ctrain.training.module import ContrastiveModule

    pl.seed_everything(42, verbose=False)
    module = ContrastiveModule(
        encoder=EncoderConfig("bag-bert", tiny_hidden_size=64, bag_layers=0, embedding_init_std=0.01, pooling="mean", normalize=False),
        similarity="dot", temperature=1.0, objective="sgns", optimizer="sgd", learning_rate=100.0, schedule="constant",
    )  # fmt: skip
    data = ContrastiveDataModule(train="sts-b", keep_eval_overlap=True, batch_size=64, max_length=32)  # the lab keeps all of STS-B train
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, max_steps=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, limit_val_batches=0, default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(module, datamodule=data)
    for step, words, contexts, loss in lab_peer.replica_steps(lab_peer.Replica(steps=3)):
        pass
    assert step == 3 and math.isfinite(loss)
    torch.testing.assert_close(words, module.encoder.word_embeddings.weight, rtol=0, atol=0)
    torch.testing.assert_close(contexts, module.objective.context_embeddings.weight, rtol=0, atol=0)


def test_word2vec_rows_land_on_their_tokens(probe):
    pytest.importorskip("gensim.models")
    _, tokens = lab_training_tokens(probe.tokenizer)
    model = train_word2vec(tokens[:500], width=64, epochs=1, negative=5, ns_exponent=1.0, min_count=5, seed=42)
    table = gensim_rows(model, probe.tokenizer, model.wv.vectors)
    the = probe.tokenizer.convert_tokens_to_ids("the")
    np.testing.assert_array_equal(table[the].numpy(), model.wv["the"].astype(np.float64))
    assert int(torch.isfinite(table[:, 0]).sum()) == len(model.wv)
    assert probe.fits(table)["kl"].n < 1234


def test_plot_puts_a_run_beside_word2vec_epoch_by_epoch(lab_peer, probe, tmp_path, monkeypatch):
    """`plot`: every probed step of a run (but step 0) at step / steps-per-epoch, and word2vec's snapshot fits."""
    run = tmp_path / "config=exact"
    run.mkdir()
    names = ("weighting/theorem_input", "weighting/theorem_input_dkl", "weighting/theorem_input_selfinfo")
    header = ["step", *(f"{n}_{k}" for n in names for k in ("slope", "r2", "spearman", "n"))]
    lines = [",".join(header)] + [
        ",".join([str(step), *(f"{value}" for _ in names for value in (-0.5 * i, 0.1 * i, -0.2 * i, 100))])
        for i, step in enumerate((0, 165, 330))
    ]
    (run / "metrics.csv").write_text("\n".join(lines) + "\n")
    monkeypatch.setattr(lab_peer, "LabProbe", lambda: probe)
    args = lab_peer.argparse.Namespace(
        runs=[str(run)], out=str(tmp_path / "plot.png"), epochs=1, negative=1, ns_exponent=1.0, min_count=5, alpha=0.025, min_alpha=0.0001
    )  # fmt: skip
    lab_peer.cmd_plot(args)
    import csv

    rows = list(csv.DictReader((tmp_path / "plot.csv").open()))
    peer = "word2vec (gensim, ns_exponent 1.0)"
    assert [(r["run"], r["epoch"], r["step"]) for r in rows] == [(peer, "1", "165"), ("config=exact", "1", "165"), ("config=exact", "2", "330")]
    spearman = "weighting/theorem_input_spearman"  # ctrain's metric names: `ctrain report --reference` reads the file
    assert float(rows[2][spearman]) == -0.4 and -1 <= float(rows[0][spearman]) <= 1
    assert (tmp_path / "plot.png").stat().st_size > 0
