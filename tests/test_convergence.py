"""The convergence check: the plateau test on sequences with a known answer, and the callback through `ctrain fit`
on a saved-and-reloaded bag (the lab's encoder), against a direct evaluation of the objective."""

import csv
import math
from pathlib import Path

import pytest
import torch

from ctrain.callbacks import ObjectiveConvergence
from ctrain.cli.fit import run_cli
from ctrain.models.encoder import load_encoder
from ctrain.models.export import save_sentence_transformer
from ctrain.runtime import step_seed
from ctrain.callbacks.convergence import has_converged, relative_range
from helpers import TOY_SENTENCES

ROOT = Path(__file__).resolve().parents[1]
TOY = TOY_SENTENCES * 8


def test_relative_range_is_the_spread_over_the_mean_of_the_window():
    assert relative_range([9.0, 1.0, 0.5, 0.25], 3) == pytest.approx(0.75 / (1.75 / 3))
    assert relative_range([1.0, 2.0], 3) == math.inf  # not enough evaluations yet
    assert relative_range([0.0, 0.0], 2) == 0.0 and relative_range([-1.0, 1.0], 2) == math.inf


def test_has_converged_sees_a_plateau_and_not_an_oscillation_or_a_slow_fall():
    plateau = [10.0 * 0.5**k + 1.0 for k in range(30)]
    assert has_converged(plateau, 5, 1e-6) and not has_converged(plateau[:8], 5, 1e-2)
    assert not has_converged([1.0, 2.0, 1.0, 2.0, 1.0], 5, 0.5)  # the ends agree, the range does not
    falling = [100.0 - k for k in range(10)]  # 1% a step: 4% over a window of 5
    assert not has_converged(falling, 5, 0.04) and has_converged(falling, 5, 0.05)
    with pytest.raises(ValueError, match="window"):
        has_converged([1.0], 1, 0.1)


TOY_RATE = "10"  # SGD on 16-sentence batches of the toy corpus: the lab's rate of 30 (chosen on STS-B) diverges here


@pytest.fixture(scope="module")
def lab_inputs(tmp_path_factory) -> tuple[Path, Path]:
    """A toy corpus and a 16-wide bag encoder saved as a sentence-transformers directory (loaded back by path)."""
    root = tmp_path_factory.mktemp("convergence")
    corpus = root / "toy.txt"
    corpus.write_text("\n".join(TOY) + "\n")
    save_sentence_transformer(load_encoder("bag-bert", tiny_hidden_size=16, embedding_init_std=0.01), root / "bag", "dot")
    return corpus, root / "bag"


def _lab_run(corpus: Path, bag: Path, out: Path, objective: str, tolerance: float, stop: bool, max_steps: int = 40):
    """(metrics.csv, the CLI) of a lab run with the convergence preset at small sizes."""
    cli = run_cli(["fit",
        "--config", str(ROOT / "configs" / "theorem_lab.yaml"), "--config", str(ROOT / "callbacks" / "convergence.yaml"),
        "--model.encoder.name", str(bag), "--model.objective", objective, "--data.train", str(corpus),
        "--data.batch_size", "16", "--model.learning_rate", TOY_RATE, "--trainer.max_steps", str(max_steps), "--trainer.limit_val_batches", "0",
        "--trainer.log_every_n_steps", "5",
        "--trainer.enable_progress_bar", "false", "--trainer.logger.init_args.save_dir", str(out),
        "--trainer.callbacks.init_args.every_n_steps", "5", "--trainer.callbacks.init_args.num_batches", "2",
        "--trainer.callbacks.init_args.window", "3", "--trainer.callbacks.init_args.tolerance", str(tolerance),
        "--trainer.callbacks.init_args.stop", str(stop).lower(),
    ])  # fmt: skip
    return out / "theorem_lab" / "version_0" / "metrics.csv", cli


def _column(path: Path, key: str) -> dict[int, float]:
    with path.open() as handle:
        return {int(row["step"]): float(row[key]) for row in csv.DictReader(handle) if row.get(key)}


@pytest.mark.parametrize("objective", ["logistic", "sgns"])
def test_the_logged_objective_is_the_objective_on_the_fixed_batches_and_training_is_unchanged(lab_inputs, tmp_path, objective):
    corpus, bag = lab_inputs
    tracked, cli = _lab_run(corpus, bag, tmp_path / "tracked", objective, 1e-9, stop=False, max_steps=20)
    objective_at = _column(tracked, "convergence/objective")
    assert sorted(objective_at) == [0, 5, 10, 15, 20]
    assert objective_at[20] < objective_at[0]  # the lab's SGD lowers its own objective on fixed batches

    # The same number computed directly: the trained weights, the first 2 batches of a new training loader, step 0's draws.
    batches = [batch for batch, _ in zip(cli.datamodule.train_dataloader(), range(2))]
    (check,) = [c for c in cli.trainer.callbacks if isinstance(c, ObjectiveConvergence)]
    assert all(torch.equal(ours["input_ids"], theirs["input_ids"]) for ours, theirs in zip(batches, check.batches))
    cli.model.train()
    with torch.no_grad():
        torch.manual_seed(step_seed(0, 0, "dropout"))
        direct = sum(float(cli.model.objective_value(batch, 0)) for batch in batches) / 2
    assert objective_at[20] == pytest.approx(direct, rel=1e-6)

    # The training loss is the same with the check and without it.
    untracked = tmp_path / "untracked"
    run_cli(["fit",
        "--config", str(ROOT / "configs" / "theorem_lab.yaml"), "--model.encoder.name", str(bag), "--model.objective", objective,
        "--data.train", str(corpus), "--data.batch_size", "16", "--model.learning_rate", TOY_RATE, "--trainer.max_steps", "20", "--trainer.limit_val_batches", "0",
        "--trainer.log_every_n_steps", "5", "--trainer.enable_progress_bar", "false", "--trainer.logger.init_args.save_dir", str(untracked),
    ])  # fmt: skip
    with_check = _column(tracked, "train/loss")
    without = _column(untracked / "theorem_lab" / "version_0" / "metrics.csv", "train/loss")
    assert with_check and with_check == {step: value for step, value in without.items() if step in with_check}


def test_a_converged_run_stops_and_says_when(lab_inputs, tmp_path):
    corpus, bag = lab_inputs
    metrics, _ = _lab_run(corpus, bag, tmp_path / "loose", "logistic", tolerance=10.0, stop=True, max_steps=100)
    assert _column(metrics, "convergence/converged_step") == {10: 10.0}  # window 3, every 5 steps: evaluations 0, 5, 10
    assert max(_column(metrics, "convergence/objective")) == 10  # the last evaluation: the run ended there, not at max_steps
    strict, _ = _lab_run(corpus, bag, tmp_path / "strict", "logistic", tolerance=1e-12, stop=True, max_steps=30)
    assert not _column(strict, "convergence/converged_step") and max(_column(strict, "convergence/objective")) == 30  # ran to the ceiling


def test_bad_settings_are_one_line():
    with pytest.raises(ValueError, match="window must be >= 2"):
        ObjectiveConvergence(window=1)
    with pytest.raises(ValueError, match="every_n_steps"):
        ObjectiveConvergence(every_n_steps=0)


def test_the_report_draws_the_tracked_objective(lab_inputs, tmp_path):
    from ctrain.reporting.report import report

    corpus, bag = lab_inputs
    _lab_run(corpus, bag, tmp_path / "runs", "logistic", tolerance=1e-9, stop=False, max_steps=10)
    run = tmp_path / "runs" / "theorem_lab" / "version_0"
    report(str(run), final_probe=False)
    assert (run / "report" / "convergence_objective.png").stat().st_size > 0


def test_a_resumed_run_tracks_the_same_batches(lab_inputs, tmp_path):
    """Stopped at step 10 and resumed to 20: the tracked objective equals the uninterrupted run's at every check."""
    corpus, bag = lab_inputs
    whole, _ = _lab_run(corpus, bag, tmp_path / "whole", "sgns", tolerance=1e-9, stop=False, max_steps=20)
    first, _ = _lab_run(corpus, bag, tmp_path / "parts", "sgns", tolerance=1e-9, stop=False, max_steps=10)
    run_cli(["fit", "--resume", str(first.parent), "--trainer.max_steps", "20", "--trainer.enable_progress_bar", "false"])
    resumed = _column(first, "convergence/objective")
    assert sorted(resumed) == [0, 5, 10, 15, 20]
    assert resumed == pytest.approx(_column(whole, "convergence/objective"), rel=1e-4)  # training after a resume agrees to ~1e-6
