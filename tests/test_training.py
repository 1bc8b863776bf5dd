"""End-to-end runs of `ctrain fit` on a tiny encoder: outputs, determinism, kill -9 and resume, bad input."""

import contextlib
import csv
import io
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import yaml
from helpers import QUICK_FIT, ctrain_in_fork, quick_probes_preset

from ctrain.cli import main
from ctrain.models.encoder import EncoderConfig
from ctrain.training.module import ContrastiveModule

ROOT = Path(__file__).resolve().parents[1]
QUICK = QUICK_FIT


def _run_args(save_dir: Path, *extra: str) -> list[str]:
    return ["fit", *QUICK, "--trainer.logger.init_args.save_dir", str(save_dir), *extra]


def _metrics(run_dir: Path) -> list[dict]:
    with (run_dir / "metrics.csv").open() as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory) -> tuple[Path, str]:
    """One run of QUICK and what it printed, read by every test that compares against the plain run (outputs,
    seeding, resume, probes)."""
    save_dir = tmp_path_factory.mktemp("quick")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        main(_run_args(save_dir))
    return save_dir / "demo" / "version_0", printed.getvalue()


def test_fit_writes_the_run_directory(quick_run):
    """6 steps, validation every 4: the run also validates at step 6, and the final model's card and the closing
    summary give the final model's STS-B dev with its step, the best model's with the best checkpoint's."""
    run_dir, printed = quick_run
    for name in ("config.yaml", "metrics.csv", "checkpoints/last.ckpt", "checkpoints/best.ckpt", "model_final", "model_best"):
        assert (run_dir / name).exists(), name
    rows = _metrics(run_dir)
    sts = {int(r["step"]): float(r["val/stsb_spearman"]) for r in rows if r["val/stsb_spearman"]}
    assert list(sts) == [0, 4, 6]
    assert sum(1 for r in rows if r["train/loss"]) == 6
    best_step = max((4, 6), key=lambda step: (sts[step], -step))  # the checkpoint keeps the first of equal scores
    final_card, best_card = ((run_dir / name / "README.md").read_text() for name in ("model_final", "model_best"))
    assert f"| STS-B dev Spearman x100 | {sts[6]:.2f} (model at step 6) |" in final_card
    assert f"| STS-B dev Spearman x100 | {sts[best_step]:.2f} (model at step {best_step}) |" in best_card
    assert f"(model at step {best_step}) |" in best_card.split("STS-B test")[1]
    assert f"at start: {sts[0]:.2f} (step 0)" in printed
    assert f"at end:   {sts[6]:.2f} (step 6)" in printed
    assert f"best:     {sts[best_step]:.2f} (step {best_step})" in printed

    from sentence_transformers import SentenceTransformer

    from ctrain.models.encoder import load_encoder

    final = SentenceTransformer(str(run_dir / "model_final"), device="cpu")
    ours = load_encoder(str(run_dir / "model_final"))
    assert abs(final.encode(["a test"]) - ours.encode(["a test"]).numpy()).max() < 1e-5


def test_same_seed_same_metrics(quick_run, tmp_path):
    main(_run_args(tmp_path))
    assert _metrics(tmp_path / "demo" / "version_0") == _metrics(quick_run[0])


ACCUMULATE_2 = (
    "--trainer.accumulate_grad_batches", "2", "--trainer.max_steps", "4", "--trainer.val_check_interval", "2",
    "--data.max_eval_pairs", "32",
)  # fmt: skip


@pytest.mark.parametrize("extra, kill_at", [((), 5), (ACCUMULATE_2, 3)], ids=["one_batch_a_step", "accumulate_2"])
def test_killed_run_resumes_to_the_same_metrics(quick_run, tmp_path, extra, kill_at):
    whole = quick_run[0] if not extra else tmp_path / "whole" / "demo" / "version_0"
    if extra:
        main(_run_args(tmp_path / "whole", *extra))
    log = tmp_path / "crash.log"
    killed = ctrain_in_fork([*_run_args(tmp_path / "crash", *extra), "--trainer.callbacks", "helpers.KillAtStep", "--trainer.callbacks.step", str(kill_at)], log)
    assert killed == -9, log.read_text()[-2000:]
    run_dir = tmp_path / "crash" / "demo" / "version_0"
    assert not (run_dir / "model_final").exists()
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())  # as an older ctrain wrote it: a since-removed option
    saved["outputs"] = {**(saved.get("outputs") or {}), "max_seq_length": 128}
    (run_dir / "config.yaml").write_text(yaml.safe_dump(saved))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        main(["fit", "--resume", str(run_dir), "--trainer.callbacks=[]", "--trainer.enable_progress_bar", "false"])
    assert _metrics(run_dir) == _metrics(whole)
    assert not [w for w in caught if "not resumable" in str(w.message)]  # the sampler skips what was trained


def test_micro_batches_of_an_accumulated_step_draw_their_own_seeds(tmp_path):
    """accumulate_grad_batches 2: the two micro-batches of a step seed dropout, the positives and the objective apart;
    the first keeps the seeds of a run without accumulation (dropout: seed + STEP_STRIDE x step + rank)."""
    from helpers import RecordSeeds

    from ctrain.cli.fit import run_cli
    from ctrain.runtime import STEP_STRIDE, step_seed

    cli = run_cli(_run_args(
        tmp_path, "--trainer.accumulate_grad_batches", "2", "--trainer.max_steps", "2", "--trainer.val_check_interval", "2",
        "--model.positives", "token_dropout", "--data.max_eval_pairs", "16", "--trainer.callbacks+=helpers.RecordSeeds",
    ))  # fmt: skip
    seeds = next(c for c in cli.trainer.callbacks if isinstance(c, RecordSeeds)).seeds
    assert [step for step, *_ in seeds] == [0, 0, 1, 1]
    for first, second in zip(seeds[::2], seeds[1::2]):
        step = first[0]
        assert all(a != b for a, b in zip(first[1:], second[1:])), (first, second)
        assert first[1:] == (42 + STEP_STRIDE * step, step_seed(step, 0, "positives"), step_seed(step, 0, "objective"))
    assert len({seed for _, *draws in seeds for seed in draws}) == 12  # no seed used twice


def test_micro_batch_0_keeps_the_seeds_of_runs_without_accumulation(monkeypatch):
    """Micro-batch 0 is seeded from (seed, step, rank) alone: runs without accumulation keep their recorded results."""
    import numpy as np

    from ctrain.runtime import STEP_STRIDE, STREAMS, step_seed

    monkeypatch.setenv("PL_GLOBAL_SEED", "5")  # what seed_everything exports
    for step, rank in ((0, 0), (7, 1), (12345, 3)):
        assert step_seed(step, rank) == step_seed(step, rank, "dropout", 0) == 5 + STEP_STRIDE * step + rank
        for index, stream in enumerate(STREAMS[1:], 1):
            entropy = np.random.SeedSequence([5, step, rank, index]).generate_state(1, dtype=np.uint64)[0]
            assert step_seed(step, rank, stream, 0) == int(entropy >> 1)
            assert step_seed(step, rank, stream, 1) != step_seed(step, rank, stream, 0)


def test_non_finite_loss_stops_with_step_and_cause(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(_run_args(tmp_path, "--model.similarity", "dot", "--model.temperature", "1e-38"))
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert "at step 0" in message and "dot similarity with temperature" in message


def test_unknown_key_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(_run_args(tmp_path, "--model.not_a_key", "1"))
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("ctrain: error: unrecognized arguments: --model.not_a_key")


def test_probe_callbacks_do_not_change_training(quick_run, tmp_path):
    preset = quick_probes_preset(tmp_path / "probes.yaml", every_n_steps=3, weighting_sentences=8, geometry_sentences=40)
    main(_run_args(tmp_path / "probed", "--config", str(preset)))
    plain = _metrics(quick_run[0])
    probed = _metrics(tmp_path / "probed" / "demo" / "version_0")
    columns = ("step", "train/loss", "val/stsb_spearman")
    def training(rows: list[dict]) -> list[tuple]:
        return [tuple(r[c] for c in columns) for r in rows if r["train/loss"] or r["val/stsb_spearman"]]

    assert training(probed) == training(plain)
    probe_steps = sorted({int(r["step"]) for r in probed if r.get("weighting/ig_kl_r2")})
    assert probe_steps == [0, 3, 6]  # every 3 steps, the last among them (max_steps 6)
    assert sorted({int(r["step"]) for r in probed if r.get("geometry/anisotropy/layer_2")}) == [0, 3, 6]
    assert (tmp_path / "probed" / "demo" / "version_0" / "probes" / "weighting.jsonl").read_text().count("\n") == 3


def test_ddp_on_cpu_matches_one_process_on_the_global_batch(tmp_path):
    """2 gloo processes x batch 4 == 1 process x batch 8 (dropout off so both see the same function)."""
    common = ["--model.encoder.dropout", "0", "--data.max_examples", "64", "--trainer.max_steps", "4"]
    main(_run_args(tmp_path / "single", *common, "--data.batch_size", "8"))
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    ddp = subprocess.run(
        [sys.executable, "-m", "ctrain.cli", *_run_args(tmp_path / "ddp", *common, "--data.batch_size", "4"),
         "--trainer.strategy", "ddp", "--trainer.devices", "2"],
        env=environment, capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    single, distributed = (_metrics(tmp_path / name / "demo" / "version_0") for name in ("single", "ddp"))
    losses = [(float(a["train/loss"]), float(b["train/loss"])) for a, b in zip(single, distributed) if a["train/loss"]]
    assert len(losses) == 4
    for one, two in losses:
        assert two == pytest.approx(one, rel=1e-4)
    assert (tmp_path / "ddp" / "demo" / "version_0" / "model_best" / "modules.json").exists()


@pytest.mark.parametrize(
    "encoder", [EncoderConfig("tiny-bert"), EncoderConfig("tiny-roberta"), EncoderConfig("tiny-mpnet"), EncoderConfig("bag-bert", bag_layers=1)],
    ids=lambda config: f"{config.name}-{config.bag_layers}",
)
def test_weight_decay_applies_to_exactly_the_matrices(encoder, tmp_path):
    """Biases and every normalisation scale (the bag's norm1/norm2 too) are never decayed; every matrix is."""
    from ctrain.training.optim import build_optimizer

    module = ContrastiveModule(encoder=encoder, weight_decay=0.01)
    encoder_dir = tmp_path / "saved"  # and the same model saved and loaded back, as users pass it
    module.encoder.backbone.save_pretrained(encoder_dir)
    module.encoder.tokenizer.save_pretrained(encoder_dir)
    for candidate in (module, ContrastiveModule(encoder=EncoderConfig(str(encoder_dir), bag_layers=encoder.bag_layers), weight_decay=0.01)):
        groups = build_optimizer(candidate, 10, 1e-3, weight_decay=0.01)["optimizer"].param_groups
        decayed = {id(p) for group in groups if group["weight_decay"] > 0 for p in group["params"]}
        for name, parameter in candidate.named_parameters():
            assert (id(parameter) in decayed) == (parameter.dim() >= 2), name


def test_probes_measure_the_trained_model_of_a_max_epochs_run(tmp_path):
    """Every hub config trains for max_epochs (max_steps -1): the last step is reached by no schedule, yet probed."""
    main(_run_args(tmp_path, "--config", str(ROOT / "tests" / "tiny_probes.yaml"), "--trainer.max_steps", "-1",
                   "--trainer.max_epochs", "1", "--data.max_examples", "40"))  # fmt: skip
    run_dir = tmp_path / "demo" / "version_0"
    last_step = max(int(row["step"]) for row in _metrics(run_dir))
    assert last_step == 5 and last_step % 2  # 40 examples / 8 a batch; the preset probes every 2 steps
    for probe in ("weighting", "geometry"):
        steps = [json.loads(line)["step"] for line in (run_dir / "probes" / f"{probe}.jsonl").read_text().splitlines()]
        assert steps == [0, 2, 4, 5], probe
    assert any(row["weighting/ig_kl_r2"] for row in _metrics(run_dir) if int(row["step"]) == last_step)


def test_a_seeded_block_draws_from_its_seed_and_leaves_the_runs_generator_where_it_was():
    from ctrain.runtime import seeded

    torch.manual_seed(7)
    expected_after = torch.rand(3)
    torch.manual_seed(7)
    with seeded(123):
        inside = torch.rand(3)
    assert torch.equal(inside, torch.rand(3, generator=torch.Generator().manual_seed(123)))
    assert torch.equal(torch.rand(3), expected_after)
