"""Every shipped sweep file under `ctrain sweep --dry_run`, the sweep runner's command building and sampling,
and the report's reading of a run (examples seen, probe rows); nothing here trains."""

import json
import shlex
import sys
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
import yaml

from ctrain.cli import main
from helpers import covering_runs
from ctrain.keys import EXAMPLES_SEEN
from ctrain.reporting.report import config_value, metric_families, read_run
from ctrain.sweeps import fit_command, plan_runs, read_sweep

ROOT = Path(__file__).resolve().parent.parent
SWEEP_FILES = sorted((ROOT / "sweeps").glob("*.yaml"))


def _leaves(tree: dict, prefix: str = "") -> list[tuple[str, object]]:
    """(dotted key, value) of every leaf of a nested mapping."""
    pairs = []
    for name, value in tree.items():
        pairs += _leaves(value, f"{prefix}{name}.") if isinstance(value, dict) else [(f"{prefix}{name}", value)]
    return pairs


def _dry_run(capsys, sweep_file: Path, out: Path) -> list[tuple[str, Path, list[str]]]:
    """(label, directory, command) of every run `ctrain sweep FILE --dry_run` plans."""
    main(["sweep", str(sweep_file), "--out", str(out), "--dry_run"])
    lines = capsys.readouterr().out.splitlines()
    runs = []
    for index, line in enumerate(lines):
        if line.startswith("run "):
            directory, command = lines[index + 1], lines[index + 2]
            assert directory.startswith("  directory: ") and command.startswith("  command: "), lines
            runs.append((line[4:], Path(directory.split(": ", 1)[1]), shlex.split(command.split(": ", 1)[1])))
    return runs


def _csv_log_dir(printed: dict) -> Path:
    """Where the run's CSV logger writes (ctrain fit puts save_dir under --trainer.default_root_dir)."""
    trainer = printed["trainer"]
    loggers = trainer["logger"] if isinstance(trainer["logger"], list) else [trainer["logger"]]
    assert len(loggers) == 1 and loggers[0]["class_path"].endswith("RunCSVLogger"), loggers
    init = loggers[0]["init_args"]
    return Path(trainer.get("default_root_dir") or init["save_dir"]) / init["name"] / str(init["version"])


@pytest.mark.parametrize("sweep_file", SWEEP_FILES, ids=lambda path: path.name)
def test_every_sweep_file_puts_each_run_in_its_directory(sweep_file, tmp_path, capsys, monkeypatch):
    """Run from outside the repository: --config paths are found from the sweep file's repository root. Each swept
    value of each parameter (one run brings each) is checked in the run's printed config: every swept parameter is a
    config key, and a key that a swept --config file also sets takes the swept value."""
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    runs = _dry_run(capsys, sweep_file, out)
    planned = plan_runs(read_sweep(sweep_file))
    assert len(runs) == len(planned) and not out.exists()  # a dry run writes nothing
    assert len({directory for _, directory, _ in runs}) == len(runs)  # a directory per run
    for index in covering_runs(planned):
        (label, directory, command), settings = runs[index], planned[index]
        assert directory == out / "runs" / label
        assert command[:3] == [sys.executable, "-m", "ctrain.cli"] and command[3] == ("pretrain" if "pretrain" in read_sweep(sweep_file)["command"] else "fit")
        with pytest.raises(SystemExit) as exit_code:
            main([*command[3:], "--print_config"])
        assert exit_code.value.code in (0, None), capsys.readouterr().err
        printed = yaml.safe_load(capsys.readouterr().out)
        assert _csv_log_dir(printed) == directory, (sweep_file.name, label)
        for key, value in settings.items():
            if key == "config":  # LightningCLI's own --config: every value the file sets is in the printed config
                for name, expected in _leaves(yaml.safe_load((ROOT / value).read_text())):
                    assert config_value(printed, name) == settings.get(name, expected), (value, name)
            else:
                assert config_value(printed, key) == value, key


def test_a_command_that_adds_a_logger_is_refused(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"program": "ctrain", "method": "grid", "parameters": {"model.temperature": {"values": [0.1]}},
                                   "command": ["ctrain", "fit", "--trainer.logger+=WandbLogger", "${args}"]}))
    with pytest.raises(ValueError, match="callbacks/wandb.yaml"):
        read_sweep(bad)


def test_random_sweep_draws_by_the_probabilities():
    spec = {"method": "random", "parameters": {"model.pooling": {"values": ["mean", "cls"], "probabilities": [0.9, 0.1]}}}
    counts = Counter(run["model.pooling"] for run in plan_runs(spec, count=1000, seed=0))
    assert 850 < counts["mean"] < 950 and counts["mean"] + counts["cls"] == 1000


@pytest.mark.parametrize("probabilities", [[0.9], [0.5, 0.4], [1.2, -0.2], "0.5"])
def test_bad_probabilities_are_refused(probabilities, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"method": "random", "parameters": {"model.pooling": {"values": ["mean", "cls"], "probabilities": probabilities}}}))
    with pytest.raises(ValueError, match="probabilit"):
        read_sweep(bad)


@pytest.mark.parametrize("command", [None, ["${env}", "${interpreter}", "${program}", "${args}"], ["ctrain", "${args}"]])
def test_a_sweep_without_fit_runs_ctrain_fit(command):
    spec = {"program": "ctrain", "method": "grid", "parameters": {"model.temperature": {"values": [0.1]}}}
    if command is not None:
        spec["command"] = command
    assert fit_command(spec, {"model.temperature": 0.1}) == [sys.executable, "-m", "ctrain.cli", "fit", "--model.temperature=0.1"]


def test_config_paths_resolve_against_the_repository_root_only_when_missing_here(tmp_path, monkeypatch):
    spec = read_sweep(ROOT / "sweeps" / "theorem_lab.yaml")
    settings = {"config": "configs/theorem_lab/exact.yaml"}
    monkeypatch.chdir(tmp_path)
    command = fit_command(spec, settings, ROOT / "sweeps" / "theorem_lab.yaml")
    assert f"{ROOT}/configs/theorem_lab.yaml" in command and f"--config={ROOT}/configs/theorem_lab/exact.yaml" in command
    (tmp_path / "configs" / "theorem_lab").mkdir(parents=True)
    (tmp_path / "configs" / "theorem_lab" / "exact.yaml").write_text("{}\n")  # a file here wins
    assert "--config=configs/theorem_lab/exact.yaml" in fit_command(spec, settings, ROOT / "sweeps" / "theorem_lab.yaml")


@pytest.mark.parametrize("command", ["sweep", "report", "probe", "corpus", "pretrain"])
def test_subcommand_usage_names_the_subcommand(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    assert capsys.readouterr().out.startswith(f"usage: ctrain {command} ")


def _run_dir(tmp_path: Path, devices, metrics: list[dict], probes: list[dict]) -> Path:
    run_dir = tmp_path / "run"
    (run_dir / "probes").mkdir(parents=True)
    config = {"data": {"batch_size": 16}, "trainer": {"devices": devices, "num_nodes": 2, "accumulate_grad_batches": 2}}
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    pd.DataFrame(metrics).to_csv(run_dir / "metrics.csv", index=False)
    (run_dir / "probes" / "geometry.jsonl").write_text("".join(json.dumps(record) + "\n" for record in probes))
    return run_dir


@pytest.mark.parametrize("devices", ["auto", -1])
def test_examples_seen_is_read_from_metrics_csv(devices, tmp_path):
    """16 per device x 2 devices x 2 nodes x 2 accumulation = 64 per step, logged; the config alone can't say so."""
    metrics = [{"step": step, EXAMPLES_SEEN: step * 64, "val/stsb_spearman": 50 + step} for step in (0, 10, 20)]
    probes = [{"step": step, "metrics": {"anisotropy/layer_4": 0.5}} for step in (0, 10, 20, 30)]  # 30: not in metrics.csv yet
    frame = read_run(_run_dir(tmp_path, devices, metrics, probes))
    assert frame["step"].tolist() == [0, 10, 20, 30]
    assert frame["examples"].tolist() == [0, 640, 1280, 1920]


def test_probe_rows_missing_from_metrics_csv_are_drawn(tmp_path):
    """A crashed run: metrics.csv was last written at step 20, the probes' files have step 30 too."""
    metrics = [{"step": step, EXAMPLES_SEEN: step * 64, "geometry/anisotropy/layer_4": 0.1 * step} for step in (0, 10, 20)]
    probes = [{"step": step, "metrics": {"anisotropy/layer_4": 9.0 if step < 30 else 0.7}} for step in (0, 10, 20, 30)]
    frame = read_run(_run_dir(tmp_path, 1, metrics, probes)).set_index("step")
    assert frame["geometry/anisotropy/layer_4"].tolist() == pytest.approx([0.0, 1.0, 2.0, 0.7])  # metrics.csv wins where both have it


def test_weighting_steps_only_the_probe_file_has_reach_the_report(tmp_path):
    """The weighting probe writes full keys (`weighting/ig_kl_r2`) to its jsonl: read back under the same name as in
    metrics.csv (not `weighting/weighting/...`) and drawn, for a step metrics.csv has not flushed yet."""
    metrics = [{"step": step, EXAMPLES_SEEN: step * 64, "weighting/ig_kl_r2": 0.1 * step} for step in (0, 10)]
    run_dir = _run_dir(tmp_path, 1, metrics, [])
    records = [{"step": step, "metrics": {"weighting/ig_kl_r2": 0.5, "weighting/ig_kl_beta": -0.25}} for step in (10, 20)]
    (run_dir / "probes" / "weighting.jsonl").write_text("".join(json.dumps(record) + "\n" for record in records))
    frame = read_run(run_dir).set_index("step")
    assert frame["weighting/ig_kl_r2"].tolist() == pytest.approx([0.0, 1.0, 0.5])  # metrics.csv wins where both have it
    assert frame["weighting/ig_kl_beta"].tolist()[1:] == [-0.25, -0.25]
    assert not [column for column in frame.columns if column.startswith("weighting/weighting/")]
    assert "weighting/ig_kl_r2" in str(metric_families(frame.columns))
