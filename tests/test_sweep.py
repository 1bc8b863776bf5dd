"""Sweep files and `ctrain sweep` / `ctrain report`, through the commands users run."""

import contextlib
import csv
import io
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from ctrain.cli import main
from ctrain.reporting.report import compare_labels, config_value, read_run, seed_band, seed_groups
from ctrain.sweeps import _run_one, parse_run_label, plan_runs, read_sweep, run_label, threads_per_run

ROOT = Path(__file__).resolve().parent.parent
SWEEP_FILES = sorted((ROOT / "sweeps").glob("*.yaml"))


def test_gpu_sweeps_use_the_published_simcse_config_and_each_has_a_cpu_twin():
    names = {path.stem for path in SWEEP_FILES}
    for name in ("temperature", "temperature_decades", "batch_size", "pooling_similarity"):
        assert {name, f"{name}_cpu"} <= names
        assert "configs/simcse_bert_unsup.yaml" in read_sweep(ROOT / "sweeps" / f"{name}.yaml")["command"]
    assert plan_runs(read_sweep(ROOT / "sweeps" / "temperature.yaml")) == [{"model.temperature": t} for t in (0.025, 0.05, 0.1)]


TINY_COMMAND = [
    "ctrain", "fit",
    "--config", str(ROOT / "configs" / "demo.yaml"),
    "--config", str(ROOT / "tests" / "tiny_probes.yaml"),
    "--data.batch_size=8", "--data.max_examples=96", "--data.max_eval_pairs=200", "--trainer.max_steps=4", "--trainer.val_check_interval=2",
    "--trainer.log_every_n_steps=1", "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
    "${args}",
]  # fmt: skip




def _one_core() -> None:
    """Pins a sweep to one core, as a cluster's CPU pinning would (threads_per_run reads the affinity): under xdist
    the other core runs the other worker, and two torch threads a run on one free core made each run 2-3x slower."""
    cores = sorted(os.sched_getaffinity(0))
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0")[2:])
    os.sched_setaffinity(0, {cores[worker % len(cores)]})


@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory):
    """A two-run temperature sweep run by `ctrain sweep`, then one run marked unfinished and the sweep run again."""
    work = tmp_path_factory.mktemp("sweep")
    sweep_file = work / "tiny.yaml"
    sweep_file.write_text(yaml.safe_dump({"program": "ctrain", "method": "grid", "parameters": {"model.temperature": {"values": [0.05, 0.5]}}, "command": TINY_COMMAND}))
    command = [sys.executable, "-m", "ctrain.cli", "sweep", str(sweep_file), "--out", str(work / "out")]
    first = subprocess.Popen(command, cwd=work, stdout=subprocess.PIPE, text=True, start_new_session=True, preexec_fn=_one_core)
    checkpoint = work / "out" / "runs" / "temperature=0.5" / "checkpoints" / "last.ckpt"
    while not checkpoint.exists() and first.poll() is None:
        time.sleep(0.1)
    os.killpg(first.pid, signal.SIGKILL)  # the machine went down during the second run
    first_output = first.communicate()[0]
    assert "[1/2] temperature=0.05: ran, finished" in first_output, first_output
    # The rest in this process (its runs are still fresh interpreters): only the first sweep had to be killable.
    second = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(second):
        patch.chdir(work)
        main(["sweep", str(sweep_file), "--out", str(work / "out"), "--parallel", "2"])
        main(["report", str(work / "out")])
    return work / "out", first_output, second.getvalue()


def test_sweep_runs_every_setting_and_resumes_only_the_unfinished(tiny_sweep):
    sweep_dir, first, second = tiny_sweep
    assert "[2/2]" not in first
    assert "temperature=0.05: already finished" in second and "temperature=0.5: resumed, finished" in second
    with (sweep_dir / "summary.csv").open() as handle:
        rows = {row["run"]: row for row in csv.DictReader(handle)}
    assert set(rows) == {"temperature=0.05", "temperature=0.5"}
    assert all(row["status"] == "finished" and row["last_step"] == "4" and float(row["sts_test_final"]) > 0 for row in rows.values())
    assert float(rows["temperature=0.05"]["seconds"]) > 0  # a skipped run keeps the time it took
    for run in rows:
        run_dir = sweep_dir / "runs" / run
        assert (run_dir / "model_final" / "README.md").exists()
        assert config_value(yaml.safe_load((run_dir / "config.yaml").read_text()), "model.temperature") == float(run.split("=")[1])


def test_sweep_report_has_a_curve_per_run_and_a_table(tiny_sweep):
    sweep_dir, _, _ = tiny_sweep
    page = (sweep_dir / "report" / "report.html").read_text()
    figures = sorted((sweep_dir / "report").glob("*.png"))
    assert {"val_stsb_spearman.png", "geometry_anisotropy_4.png", "weighting_IG_on_KL_w.png"} <= {path.name for path in figures}
    assert page.count("<img ") == len(figures) and "data:image/png;base64," in page
    assert "http" not in page.replace("http-equiv", "")  # nothing fetched: opens from disk
    assert "temperature=0.05" in page and "temperature=0.5" in page and "<table>" in page


def test_run_report_draws_every_family(tiny_sweep, tmp_path):
    run_dir = tiny_sweep[0] / "runs" / "temperature=0.05"
    main(["report", str(run_dir), "--out", str(tmp_path), "--x", "examples", "--probe_sentences", "8"])
    names = {path.stem for path in tmp_path.glob("*.png")}
    assert {"val_stsb_spearman", "train_loss", "weighting_fits", "geometry_anisotropy", "geometry_intra_similarity"} <= names
    assert {"ig_vs_kl", "ig_sentences"} <= {path.stem for path in tmp_path.glob("final_probe/*.png")}  # the final scatter and bars


def test_report_compares_runs_a_curve_each(tiny_sweep, tmp_path):
    runs = tiny_sweep[0] / "runs"
    main(["report", str(runs / "temperature=0.05"), "--compare", f"[{runs / 'temperature=0.5'}]", "--out", str(tmp_path)])
    figure = tmp_path / "val_stsb_spearman.png"
    assert figure.exists() and (tmp_path / "geometry_anisotropy_4.png").exists()
    page = (tmp_path / "report.html").read_text()
    assert "2 runs compared" in page and "runs/temperature=0.05)" in page and "runs/temperature=0.5)" in page


def test_report_compare_draws_seeds_of_one_arm_as_a_band(tiny_sweep, tmp_path):
    # A second seed of temperature=0.05: its config differs in seed_everything and the logger version only.
    runs = tiny_sweep[0] / "runs"
    seed_2 = tmp_path / "runs" / "seed_2"
    shutil.copytree(runs / "temperature=0.05", seed_2, ignore=shutil.ignore_patterns("checkpoints", "model_*", "probes"))
    config = yaml.safe_load((seed_2 / "config.yaml").read_text())
    config["seed_everything"] = 2
    config["trainer"]["logger"]["init_args"]["version"] = "seed_2"
    (seed_2 / "config.yaml").write_text(yaml.safe_dump(config))
    metrics = pd.read_csv(seed_2 / "metrics.csv")
    metrics["val/stsb_spearman"] += 10.0
    metrics.to_csv(seed_2 / "metrics.csv", index=False)

    groups = seed_groups(compare_labels([runs / "temperature=0.05", runs / "temperature=0.5", seed_2]))
    assert sorted(map(len, groups.values())) == [1, 2]
    # The same two seeds as a sweep over seed_everything: a sweep directory stands for its runs, one band, named by the sweep.
    seeds_sweep = tmp_path / "seeds_sweep"
    (seeds_sweep / "runs").mkdir(parents=True)
    (seeds_sweep / "sweep.yaml").write_text(yaml.safe_dump({"method": "grid", "parameters": {"seed_everything": {"values": [1, 2]}}}))
    shutil.copytree(seed_2, seeds_sweep / "runs" / "seed_everything=2")
    shutil.copytree(runs / "temperature=0.05", seeds_sweep / "runs" / "seed_everything=1", ignore=shutil.ignore_patterns("checkpoints", "model_*"))
    labels = compare_labels([seeds_sweep, runs / "temperature=0.5"])
    assert sorted(labels.values())[:2] == ["seeds_sweep: seed_everything=2", "seeds_sweep: seed_everything=42"]  # the configs' seeds
    assert list(seed_groups(labels)) == ["seeds_sweep (2 seeds)", "tiny-bert (runs/temperature=0.5)"]
    frames = [read_run(runs / "temperature=0.05"), read_run(seed_2)]
    band = seed_band(frames).set_index("step")
    sts = pd.concat([frame.set_index("step")["val/stsb_spearman"] for frame in frames], axis=1).dropna()
    assert len(sts) >= 3
    assert np.allclose(band.loc[sts.index, "val/stsb_spearman"], sts.mean(axis=1))
    assert np.allclose(band.loc[sts.index, "val/stsb_spearman_ci_low"], sts.min(axis=1))
    assert np.allclose(band.loc[sts.index, "val/stsb_spearman_ci_high"] - band.loc[sts.index, "val/stsb_spearman_ci_low"], 10.0)

    main(["report", str(runs / "temperature=0.05"), "--compare", f"[{runs / 'temperature=0.5'}, {seed_2}]", "--out", str(tmp_path / "page")])
    page = (tmp_path / "page" / "report.html").read_text()
    assert "3 runs compared, 2 curves" in page and "(runs, 2 seeds)" in page and "runs/temperature=0.5)" in page
    main(["report", str(runs / "temperature=0.05"), "--compare", f"[{seed_2}]", "--seed_bands", "false", "--out", str(tmp_path / "apart")])
    assert "2 runs compared</" in (tmp_path / "apart" / "report.html").read_text()


def test_bad_sweep_file_is_one_line(tmp_path, capsys):
    bad = tmp_path / "bayes.yaml"
    bad.write_text("method: bayes\nparameters: {model.temperature: {values: [0.1]}}\n")
    with pytest.raises(SystemExit):
        main(["sweep", str(bad)])
    message = capsys.readouterr().err.strip()
    assert message.count("\n") == 0 and "runs only under `wandb agent`" in message


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install -y chromium; make setup installs it as root)")
def test_sweep_page_renders_in_headless_chromium(tiny_sweep, tmp_path):
    from browser import render

    sweep_dir, _, _ = tiny_sweep
    page = sweep_dir / "report" / "report.html"
    result = render(CHROMIUM, page, tmp_path / "screenshot.png")
    assert result["images"] == page.read_text().count("<img ") and result["images"] > 0
    assert result["broken_images"] == [], result["broken_images"]
    assert result["console_errors"] == [], result["console_errors"]
    assert (tmp_path / "screenshot.png").stat().st_size > 10_000


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install -y chromium; make setup installs it as root)")
def test_browser_check_sees_a_broken_image_and_a_console_error(tmp_path):
    from browser import render

    page = tmp_path / "bad.html"
    page.write_text('<!DOCTYPE html><html><head><meta charset="utf-8"><title>bad</title></head><body>'
                    '<img src="data:image/png;base64,AAAA" alt="broken"><script>console.error("boom")</script></body></html>')
    result = render(CHROMIUM, page, tmp_path / "bad.png")
    assert result["broken_images"] == ["broken"] and result["console_errors"] == ["boom"]


def test_weighting_figures_shade_the_interval_where_its_columns_exist():
    import pandas as pd

    from ctrain.reporting.report import run_figures

    frame = pd.DataFrame({
        "step": [0, 100, 200], "examples": [0, 3200, 6400],
        "weighting/ig_kl_r2": [0.1, 0.2, 0.3], "weighting/ig_kl_r2_ci_low": [0.05, 0.15, 0.25],
        "weighting/ig_kl_r2_ci_high": [0.15, 0.25, 0.35], "weighting/ig_kl_beta": [1.0, 2.0, 3.0],
    })  # fmt: skip
    figures = run_figures(frame, "run")
    r2_axes, beta_axes = figures["weighting_fits"].axes
    assert len(r2_axes.collections) == 1 and not beta_axes.collections  # a band only where _ci_low/_ci_high exist
    low, high = r2_axes.collections[0].get_paths()[0].vertices[:, 1].min(), r2_axes.collections[0].get_paths()[0].vertices[:, 1].max()
    assert (low, high) == (0.05, 0.35)


def test_every_weighting_curve_has_its_beta_beside_its_r2_in_run_sweep_and_comparison_figures():
    """A negative relation weakening (beta -0.25 -> -0.1) lowers R^2 as a vanishing positive one would: only the beta
    panel beside it tells them apart, with its interval."""
    import pandas as pd

    from ctrain.reporting.report import run_figures, sweep_figures

    frame = pd.DataFrame({
        "step": [0, 100], "examples": [0, 3200], "weighting/ig_kl_r2": [0.68, 0.35], "weighting/shap_selfinfo_r2": [0.3, 0.2],
        "weighting/ig_kl_beta": [-0.25, -0.1], "weighting/ig_kl_beta_ci_low": [-0.3, -0.15], "weighting/ig_kl_beta_ci_high": [-0.2, -0.05],
        "weighting/shap_selfinfo_beta": [0.1, 0.2],
    })  # fmt: skip
    (figure,) = [figure for name, figure in run_figures(frame, "run").items() if name.startswith("weighting")]
    r2_axes, beta_axes = figure.axes
    assert "R^2" in r2_axes.get_ylabel() and "beta" in beta_axes.get_ylabel()
    assert [line.get_label() for line in beta_axes.lines] == [line.get_label() for line in r2_axes.lines] == ["IG on KL(w)", "SHAP on -log P(w)"]
    assert list(beta_axes.lines[0].get_ydata()) == [-0.25, -0.1] and len(beta_axes.collections) == 1
    sweep = sweep_figures({"a": frame, "b": frame.drop(columns=["weighting/ig_kl_beta_ci_low", "weighting/ig_kl_beta_ci_high"])}, "sweep", "step", "run")
    weighting = {name: figure for name, figure in sweep.items() if name.startswith("weighting")}
    assert set(weighting) == {"weighting_IG_on_KL_w", "weighting_SHAP_on_log_P_w"}
    for figure in weighting.values():
        r2_axes, beta_axes = figure.axes
        assert "beta" in beta_axes.get_ylabel() and [line.get_label() for line in beta_axes.lines] == ["a", "b"]
    assert len(weighting["weighting_IG_on_KL_w"].axes[1].collections) == 1  # run a's logged interval, shaded


@pytest.mark.parametrize("criterion", ["val/stsb_spearman", "val/mlm_loss"])
def test_the_weighting_fits_are_drawn_beside_the_training_criterion_on_a_log_axis_when_asked(criterion, tmp_path):
    """The run's criterion (STS-B dev of `ctrain fit`, the held-out MLM loss of `ctrain pretrain`) is the third panel;
    `--log_x true` puts every x-axis on a symmetric log scale, step 0 included."""
    from ctrain.reporting.figures import log_x_axes
    from ctrain.reporting.report import SCALAR_LABELS, read_run, run_figures, sweep_figures

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    pd.DataFrame({
        "step": [0, 10, 100, 1000], "weighting/ig_kl_r2": [0.0, 0.5, 0.6, 0.4], "weighting/ig_kl_beta": [0.0, -0.3, -0.35, -0.2],
        criterion: [8.3, 6.0, 5.0, 4.9],
    }).to_csv(run_dir / "metrics.csv", index=False)  # fmt: skip
    figure = run_figures(read_run(run_dir), "run")["weighting_fits"]
    assert [axes.get_ylabel() for axes in figure.axes][2] == SCALAR_LABELS[criterion]
    assert list(figure.axes[2].lines[0].get_ydata()) == [8.3, 6.0, 5.0, 4.9]
    log_x_axes([figure])
    assert {axes.get_xscale() for axes in figure.axes} == {"symlog"} and "log scale" in figure.axes[0].get_xlabel()
    main(["report", str(run_dir), "--final_probe", "false", "--log_x", "true"])  # as users run it
    assert (run_dir / "report" / "weighting_fits.png").exists()
    pretrain = read_run(run_dir).assign(**{"val/mlm_loss": [8.0, 7.0, 6.0, 5.0], "val/stsb_spearman": [60.0, 50.0, 45.0, 50.0]})
    pretrain_figure = run_figures(pretrain, "run")["weighting_fits"]
    control = sweep_figures({"simcse": read_run(run_dir), "mlm": pretrain}, "", "step", "run")
    assert pretrain_figure.axes[2].get_ylabel() == "held-out MLM loss"  # a pretrain run's own criterion, not its backbone's STS-B
    if criterion == "val/stsb_spearman":  # beside an MLM control: the criterion both arms log
        assert control["weighting_IG_on_KL_w"].axes[2].get_ylabel() == SCALAR_LABELS["val/stsb_spearman"]


def test_a_pretrain_run_is_titled_by_its_architecture_or_its_start(tmp_path):
    from ctrain.reporting.report import run_title

    run_dir = tmp_path / "pretrain" / "version_0"
    run_dir.mkdir(parents=True)
    model = {"architecture": "roberta", "num_layers": 4, "hidden_size": 128}
    (run_dir / "config.yaml").write_text(yaml.safe_dump({"model": model}))
    assert run_title(run_dir) == "MLM pre-training of roberta, 4 layers x 128, run pretrain/version_0"
    (run_dir / "config.yaml").write_text(yaml.safe_dump({"model": {**model, "init_from": "runs/start"}}))
    assert run_title(run_dir).startswith("runs/start, run ")


def test_parallel_runs_share_the_cores_the_process_may_use(monkeypatch):
    # `taskset -c 1 ctrain sweep ...` beside another job: one core usable, so one thread a run, not cpu_count()'s share.
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {1}, raising=False)
    assert threads_per_run(1) == 1
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    assert (threads_per_run(1), threads_per_run(2), threads_per_run(3), threads_per_run(16)) == (8, 4, 2, 1)


@pytest.mark.parametrize("subcommand", ["fit", "pretrain"])
def test_an_interrupted_run_resumes_with_its_own_subcommand(subcommand, tmp_path, monkeypatch):
    run_dir = tmp_path / "runs" / "seed_everything=1"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"")
    started = []
    monkeypatch.setattr(subprocess, "run", lambda command, **kwargs: started.append(command) or subprocess.CompletedProcess(command, 0))
    command = [sys.executable, "-m", "ctrain.cli", subcommand, "--config", "configs/x.yaml", "--seed_everything=1"]
    assert _run_one(command, run_dir, tmp_path / "log.txt", threads=1)[2] == "resumed"
    assert started == [[sys.executable, "-m", "ctrain.cli", subcommand, "--resume", str(run_dir)]]


def test_a_run_label_reads_back_as_its_swept_values_and_names_colliding_keys_in_full():
    settings = {"model.temperature": 0.05, "data.seed": 3, "model.seed": 4, "config": "callbacks/exact.yaml"}
    label = run_label(settings, list(settings))
    assert label == "model.temperature=0.05,data.seed=3,model.seed=4,config=exact"
    assert parse_run_label(label) == {"model.temperature": "0.05", "data.seed": "3", "model.seed": "4", "config": "exact"}
    assert run_label({"model.temperature": 1 / 3, "seed_everything": 1}, ["model.temperature", "seed_everything"]) == "temperature=0.3333,seed_everything=1"
    assert parse_run_label("exact") == {"config": "exact"}  # a run named by its config file alone
