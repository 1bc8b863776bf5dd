"""A run's record holds together: W&B offline files, resume into the same W&B run and CSV version,
validation and probes at the same steps, and a model card that says what the run was."""

import csv
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from wandb_files import history_and_config

from ctrain.cli import main
from ctrain.callbacks.wandb_run import offline_sync_command

ROOT = Path(__file__).resolve().parent.parent
TINY = [
    "--config", str(ROOT / "configs" / "demo.yaml"),
    "--config", str(ROOT / "tests" / "tiny_probes.yaml"),
    "--data.batch_size", "8",
    "--data.max_examples", "96",
    "--data.max_eval_pairs", "200",
    "--trainer.max_steps", "4",
    "--trainer.val_check_interval", "2",
    "--trainer.log_every_n_steps", "1",
    "--trainer.enable_progress_bar", "false",
    "--trainer.enable_model_summary", "false",
]  # fmt: skip


@pytest.fixture
def no_wandb_credentials(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    empty = tmp_path / "netrc"
    empty.write_text("")
    monkeypatch.setenv("NETRC", str(empty))
    yield
    os.environ.pop("WANDB_MODE", None)  # Lightning's offline switch sets it for the process


def _rows(run_dir: Path) -> list[dict]:
    with (run_dir / "metrics.csv").open() as handle:
        return list(csv.DictReader(handle))


def _wandb_sync_options() -> set[str]:
    """The options that the installed `wandb sync --help` lists (its flags' every spelling)."""
    wandb = Path(sys.executable).parent / "wandb"
    help_text = subprocess.run([str(wandb), "sync", "--help"], capture_output=True, text=True, check=True).stdout
    options = help_text.split("Options:", 1)[1]
    return set(re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", options))


def _unknown_sync_options(command: str) -> set[str]:
    words = shlex.split(command)
    assert words[:2] == ["wandb", "sync"], command
    return {word.split("=", 1)[0] for word in words[2:] if word.startswith("-")} - _wandb_sync_options()


def test_offline_upload_command_uses_only_options_of_the_installed_wandb(tmp_path):
    folders = [tmp_path / "wandb" / f"offline-run-20260101_00000{second}-ab12cd34" for second in (0, 1)]
    for folder in folders:
        folder.mkdir(parents=True)
    command = offline_sync_command(tmp_path)
    assert not _unknown_sync_options(command), f"`wandb sync --help` lists no {_unknown_sync_options(command)}: {command}"
    words = shlex.split(command)
    assert words[words.index("--id") + 1] == "ab12cd34"  # the run both starts wrote
    assert words[-2:] == [str(folder) for folder in folders]  # both starts, the first first, in one command
    assert offline_sync_command(tmp_path / "elsewhere") is None


def test_offline_wandb_run_holds_metrics_both_axes_config_and_figures_and_resumes_in_place(tmp_path, no_wandb_credentials, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    main(["fit", *TINY, "--trainer.default_root_dir", str(tmp_path), "--config", str(ROOT / "callbacks" / "wandb.yaml")])
    run_dir = tmp_path / "demo" / "version_0"
    assert not (tmp_path / "wandb").exists()  # W&B's files are inside the run directory
    (run_file,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    history, config = history_and_config(run_file)

    assert config["model"]["temperature"] == 0.05 and config["trainer"]["max_steps"] == 4  # the whole resolved config
    assert config["seed_everything"] == 42 and config["trainer"]["callbacks"][1]["init_args"]["every_n_steps"] == 2
    assert len(config["git_revision"]) >= 40
    sts = [(row["trainer/global_step"], row["trainer/examples_seen"]) for row in history if "val/stsb_spearman" in row]
    assert sts == [(0, 0), (2, 16), (4, 32)]
    geometry_steps = [row["trainer/global_step"] for row in history if "geometry/anisotropy/layer_4" in row]
    assert geometry_steps == [0, 2, 4]  # the same steps as validation
    images = [row for row in history if any(key.startswith("figures/geometry_anisotropy") for key in row)]
    assert [row["trainer/global_step"] for row in images] == [0, 2, 4]
    assert list(run_file.parent.glob("files/media/images/figures/geometry_anisotropy*.png"))
    weighting_images = [row for row in history if any(key.startswith("figures/weighting_") for key in row)]
    assert [row["trainer/global_step"] for row in weighting_images] == [0, 2, 4]  # read back from probes/weighting.jsonl
    assert list(run_file.parent.glob("files/media/images/figures/weighting_*.png"))

    steps = [int(row["step"]) for row in _rows(run_dir)]
    assert steps == sorted(steps)
    assert {row["step"] for row in _rows(run_dir) if row["val/stsb_spearman"]} == {"0", "2", "4"}
    assert {row["step"] for row in _rows(run_dir) if row.get("geometry/anisotropy/layer_4")} == {"0", "2", "4"}

    card = (run_dir / "model_final" / "README.md").read_text()
    for fact in ("| Base model | tiny-bert |", "| Temperature | 0.05 |", "| Global batch size | 8 |", "| Optimizer steps | 4 |",
                 "| Pooling | mean |", "| Similarity | cos |", "| Objective | infonce |", "| Training data | sts-b"):
        assert fact in card, fact
    test_score = next(row["test/stsb_spearman"] for row in _rows(run_dir) if row["test/stsb_spearman"])
    assert f"| STS-B test Spearman x100 | {float(test_score):.2f} (model at step 4) |" in card
    assert "STS-B dev Spearman x100 | not measured" not in card

    capsys.readouterr()
    main(["fit", "--resume", str(run_dir), "--trainer.max_steps", "6", "--trainer.enable_progress_bar", "false"])
    assert sorted(path.name for path in (tmp_path / "demo").iterdir()) == ["version_0"]  # the same CSV version
    folders = sorted(run_dir.glob("wandb/offline-run-*"))
    assert len({path.name.rsplit("-", 1)[-1] for path in folders}) == 1 and len(folders) == 2  # the same W&B run, resumed
    printed = capsys.readouterr().out  # how to upload both parts as that one run
    (upload,) = (line.split("upload: ", 1)[1] for line in printed.splitlines() if "upload: " in line)
    assert upload == offline_sync_command(run_dir) and not _unknown_sync_options(upload)
    # Lightning keeps last.ckpt from the last new best score (step 2 or 4 here): the rows of the steps it
    # redoes are replaced, the rows measured before it are kept, and the record reads as one run.
    rows = _rows(run_dir)
    assert [row["step"] for row in rows if row["val/stsb_spearman"]] == ["0", "2", "4", "6"]
    assert [row["step"] for row in rows if row["train/loss"]] == [str(step) for step in range(6)]
    assert [row["step"] for row in rows if row.get("geometry/anisotropy/layer_4")] == ["0", "2", "4", "6"]
    assert [row["step"] for row in rows if row["test/stsb_spearman"]] == ["6"]
