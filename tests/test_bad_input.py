"""Bad input and faults: each ends in one line that names the problem and the fix, before any work or file, and a
killed, interrupted or concurrent command leaves nothing behind that the next one trips over."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from helpers import QUICK_FIT, ctrain_in_fork, in_fork

from ctrain.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _one_line_error(capsys, args: list[str]) -> str:
    """The message of a command that must fail with one line on stderr."""
    with pytest.raises(SystemExit) as exit_code:
        main(args)
    assert exit_code.value.code not in (0, None)
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err[-3000:]
    return err


def _sweep_file(directory: Path, command: list[str] | None = None) -> Path:
    """A one-run sweep whose run does nothing unless a `command` is given (nothing trains, even if a check is missing)."""
    spec = {"method": "grid", "parameters": {"model.temperature": {"values": [0.05]}}, "command": command or [sys.executable, "-c", "pass", "${args}"]}
    path = directory / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


# ---- ctrain sweep ----


def test_unquoted_macro_in_a_sweep_file_names_the_line_and_the_quoting(tmp_path, capsys):
    path = tmp_path / "slip.yaml"
    path.write_text("method: grid\ncommand: [ctrain, fit, ${args}]\nparameters:\n  model.temperature: {values: [0.05]}\n")
    message = _one_line_error(capsys, ["sweep", str(path), "--dry_run"])
    assert f"'{path}' line 2" in message and '"${args}"' in message


def test_unclosed_bracket_points_at_the_line_that_opened_it(tmp_path, capsys):
    path = tmp_path / "open.yaml"
    path.write_text("method: grid\nparameters:\n  model.temperature: {values: [0.05]\n")
    assert f"'{path}' line 3" in _one_line_error(capsys, ["sweep", str(path), "--dry_run"])


@pytest.mark.parametrize("option", [["--parallel", "0"], ["--count", "0"]])
def test_sweep_counts_are_checked_before_any_file(option, tmp_path, capsys):
    out = tmp_path / "out"
    message = _one_line_error(capsys, ["sweep", str(_sweep_file(tmp_path)), "--out", str(out), *option])
    assert option[0] in message and "at least 1" in message
    assert not out.exists()


@pytest.mark.parametrize("form", [["--dry_run"], ["--dry_run", "true"], ["--dry_run", "yes"], ["--dry_run=true"]])
def test_dry_run_flag_takes_the_older_true_form(form, tmp_path, capsys):
    main(["sweep", str(_sweep_file(tmp_path)), "--out", str(tmp_path / "out"), *form])
    assert "run temperature=0.05" in capsys.readouterr().out
    assert not (tmp_path / "out").exists()


def test_a_second_sweep_on_the_same_folder_stops_at_once(tmp_path):
    """Two processes: the first holds the folder while its run waits; the second must not start that run again."""
    started, release = tmp_path / "started", tmp_path / "release"
    waiting_run = (
        f"import pathlib, time; pathlib.Path({str(started)!r}).open('a').write('x'); release = pathlib.Path({str(release)!r})\n"
        "for _ in range(1200):\n    time.sleep(0.05)\n    if release.exists(): break"
    )
    sweep_file, out = _sweep_file(tmp_path, [sys.executable, "-c", waiting_run, "${args}"]), tmp_path / "out"
    command = [sys.executable, "-m", "ctrain.cli", "sweep", str(sweep_file), "--out", str(out)]
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not started.exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        second = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    finally:
        release.touch()
    first_err = first.communicate(timeout=60)[1]
    assert first.returncode == 0, first_err[-2000:]
    assert second.returncode != 0 and "being run by another ctrain sweep" in second.stderr, second.stdout + second.stderr
    assert started.read_text() == "x"  # the run was started once


# ---- ctrain report, corpus, probe ----


def _cut_run(tmp_path: Path) -> Path:
    """A run directory whose metrics.csv was cut mid-number: the last row's -24.03 is left as -2."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "metrics.csv").write_text("step,val/stsb_spearman\n0,10.5\n4,20.25\n8,-2")
    return run_dir


def test_a_torn_last_line_of_metrics_csv_is_skipped_with_a_warning(tmp_path):
    from ctrain.reporting.report import read_run

    with pytest.warns(UserWarning, match="cut short"):
        frame = read_run(_cut_run(tmp_path))
    assert frame["step"].tolist() == [0, 4] and frame["val/stsb_spearman"].tolist() == [10.5, 20.25]


def test_sweep_summary_skips_a_torn_last_line(tmp_path):
    from ctrain.sweeps import run_summary

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "metrics.csv").write_text("step,val/stsb_spearman,test/stsb_spearman\n4,20.25,\n8,20.5,-2")
    with pytest.warns(UserWarning, match="cut short"):
        summary = run_summary(run_dir)
    assert summary == {"sts_dev_final": "20.25", "last_step": "4"}  # not finished: the torn row is not read


def test_report_of_a_missing_path_says_it_does_not_exist(tmp_path, capsys):
    missing = tmp_path / "runs" / "demo" / "version_7"
    message = _one_line_error(capsys, ["report", str(missing)])
    assert f"'{missing}' does not exist" in message


def test_corpus_to_an_unwritable_path_is_one_line_naming_it(tmp_path, capsys):
    (tmp_path / "a_file").write_text("")
    output = tmp_path / "a_file" / "corpus"
    message = _one_line_error(capsys, ["corpus", "--output", str(output)])
    assert f"--output '{output}'" in message and "Errno" not in message


@pytest.mark.parametrize("option", ["--num_sentences", "--geometry_sentences"])
def test_probe_sentence_counts_are_checked_before_the_model_is_scored(option, tmp_path, capsys):
    out = tmp_path / "probe"
    started = time.perf_counter()
    message = _one_line_error(capsys, ["probe", "tiny-bert", option, "0", "--out", str(out)])
    assert option in message and "at least 1" in message
    assert not out.exists() and time.perf_counter() - started < 30  # STS-B was not scored first


# ---- ctrain fit: settings, checkpoints, resume, interrupts ----

# test_training's tiny run at the 8 steps and 200 pairs these tests' assertions are written for (later keys win)
QUICK = [*QUICK_FIT, "--data.max_eval_pairs", "200", "--trainer.max_steps", "8"]


@pytest.mark.parametrize(
    ("setting", "named"),
    [
        (["--data.batch_size", "0"], "data.batch_size"),
        (["--data.eval_batch_size", "0"], "data.eval_batch_size"),
        (["--model.sts_batch_size", "0"], "model.sts_batch_size"),
        (["--model.learning_rate=-1e-3"], "model.learning_rate"),
        (["--trainer.max_steps", "0"], "trainer.max_steps"),
        (["--data.batch_size", "1"], "data.batch_size"),  # InfoNCE's negatives are the batch's other sentences
    ],
)
def test_a_setting_that_cannot_train_fails_before_any_file(setting, named, tmp_path, capsys):
    message = _one_line_error(capsys, ["fit", *QUICK, "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"), *setting])
    assert named in message
    assert not (tmp_path / "runs").exists()


def test_in_batch_negatives_are_needed_only_without_hard_negatives():
    from ctrain.training.objectives import SGNS, InfoNCE, Logistic

    assert InfoNCE().smallest_global_batch(hard_negatives=False) == 2
    assert InfoNCE().smallest_global_batch(hard_negatives=True) == 1  # the hard negative is a negative
    assert Logistic(num_negatives=3).smallest_global_batch(hard_negatives=False) == 4
    assert SGNS().smallest_global_batch(hard_negatives=False) == 1  # noise words, not other sentences


def _fake_run(tmp_path: Path, checkpoint: bytes, metrics: str = "step,train/loss\n0,1.0\n") -> Path:
    run_dir = tmp_path / "runs" / "demo" / "version_0"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "config.yaml").write_text("trainer: {}\n")
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(checkpoint)
    (run_dir / "checkpoints" / "best.ckpt").write_bytes(checkpoint)
    (run_dir / "metrics.csv").write_text(metrics)
    return run_dir


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_resume_from_a_cut_or_corrupt_checkpoint_is_one_line_naming_it(damage, tmp_path, capsys):
    import io

    import torch

    whole = io.BytesIO()
    torch.save({"global_step": 4, "state_dict": {"w": torch.zeros(256)}}, whole)
    content = whole.getvalue()[: len(whole.getvalue()) // 2] if damage == "truncated" else b"\x00not a checkpoint" * 10
    run_dir = _fake_run(tmp_path, content)
    message = _one_line_error(capsys, ["fit", "--resume", str(run_dir)])
    assert f"'{run_dir / 'checkpoints' / 'last.ckpt'}' is not a readable checkpoint" in message and "best.ckpt" in message


def test_resume_of_a_run_that_set_a_since_removed_option_is_one_line(tmp_path, capsys):
    """An older ctrain's saved option resumes at the value ctrain now always uses (test_training), and otherwise stops."""
    import io

    import torch

    whole = io.BytesIO()
    torch.save({"global_step": 4}, whole)
    run_dir = _fake_run(tmp_path, whole.getvalue())
    (run_dir / "config.yaml").write_text("trainer: {}\noutputs:\n  max_seq_length: 256\n")
    message = _one_line_error(capsys, ["fit", "--resume", str(run_dir)])
    assert "sets outputs.max_seq_length, an option this ctrain no longer has (it always uses 128)" in message


def test_resume_of_a_finished_run_does_nothing_but_say_so(tmp_path, capsys):
    metrics = "step,train/loss,test/stsb_spearman\n0,1.0,\n8,0.5,\n8,,31.5\n"
    run_dir = _fake_run(tmp_path, b"a finished run's checkpoint is not read", metrics)
    before = {path: path.read_bytes() for path in run_dir.rglob("*") if path.is_file()}
    main(["fit", "--resume", str(run_dir)])
    main(["fit", "--resume", str(run_dir), "--trainer.max_steps", "8"])  # the steps it has: still nothing to do
    assert capsys.readouterr().out.count(f"'{run_dir}' finished at step 8; nothing to resume") == 2
    assert {path: path.read_bytes() for path in run_dir.rglob("*") if path.is_file()} == before


def test_a_finished_run_is_extended_only_by_a_larger_max_steps():
    from ctrain.cli.fit import _trains_past

    assert _trains_past(8, ["--trainer.max_steps", "12"]) and _trains_past(8, ["--trainer.max_steps=-1"])
    assert not _trains_past(8, ["--trainer.max_steps", "8"]) and not _trains_past(8, ["--trainer.enable_progress_bar", "false"])


def test_remove_temporaries_takes_only_what_atomic_writes_left(tmp_path):
    from ctrain.fileio import atomic_directory, atomic_write_text, remove_temporaries

    atomic_write_text(tmp_path / "metrics.csv", "step\n")
    with atomic_directory(tmp_path / "model_final") as staged:
        (staged / "weights").write_text("w")
    (tmp_path / ".metrics.csv.k2j4.tmp").write_text("half")  # what kill -9 during the writes above leaves
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / ".last.ckpt.x1y2.tmp").write_bytes(b"half")
    (tmp_path / ".model_final.p9q8.tmp" / "staged").mkdir(parents=True)
    (tmp_path / ".model_final.p9q8.tmp" / "backbone").mkdir()
    assert {path.name for path in remove_temporaries(tmp_path)} == {".metrics.csv.k2j4.tmp", ".last.ckpt.x1y2.tmp", ".model_final.p9q8.tmp"}
    assert sorted(path.relative_to(tmp_path).as_posix() for path in tmp_path.rglob("*")) == ["checkpoints", "metrics.csv", "model_final", "model_final/weights"]


def test_write_csv_atomic_takes_every_key_and_keeps_the_old_file_when_a_row_fails(tmp_path):
    """The one CSV writer of metrics.csv and the sweep summary: header from the rows' keys in first-seen order."""
    import csv

    from ctrain.fileio import write_csv_atomic

    path = tmp_path / "summary.csv"
    write_csv_atomic(path, [{"run": "a", "status": "finished"}, {"run": "b", "sts_dev_final": "50.1"}])
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        assert reader.fieldnames == ["run", "status", "sts_dev_final"]
        assert list(reader)[1] == {"run": "b", "status": "", "sts_dev_final": "50.1"}
    before = path.read_text()
    with pytest.raises(ValueError, match="unknown"):  # csv.DictWriter: a row key outside the given fields
        write_csv_atomic(path, [{"run": "c", "unknown": 1}], fields=["run"])
    assert path.read_text() == before and sorted(p.name for p in tmp_path.iterdir()) == ["summary.csv"]


def test_a_checkpoint_killed_mid_save_leaves_its_partial_file_in_the_run_directory(tmp_path):
    """kill -9 inside the save: no partial file in the system's temporary directory, one hidden .tmp beside the target."""
    import tempfile

    import torch

    from ctrain.cli.fit import RunDirectoryCheckpointIO

    system_tmp, target = tmp_path / "system_tmp", tmp_path / "run" / "checkpoints" / "last.ckpt"
    system_tmp.mkdir()

    def dies_while_writing(obj, f, *args, **kwargs) -> None:
        with open(f, "wb") if isinstance(f, (str, os.PathLike)) else f as handle:
            handle.write(b"partial")
            handle.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    def save_and_die() -> None:  # in the fork only
        os.environ["TMPDIR"] = tempfile.tempdir = str(system_tmp)
        torch.save = dies_while_writing
        RunDirectoryCheckpointIO().save_checkpoint({"global_step": 1}, target)

    killed = in_fork(save_and_die, tmp_path / "save.log")
    assert killed == -9, (tmp_path / "save.log").read_text()[-2000:]
    assert list(system_tmp.iterdir()) == []
    assert [path.name.startswith(".last.ckpt.") and path.suffix == ".tmp" for path in target.parent.iterdir()] == [True]


def _ctrain_fit_process(*args: str, **popen) -> subprocess.Popen:
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, "-m", "ctrain.cli", "fit", *QUICK, *args], env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)


def test_resume_under_another_spelling_keeps_one_last_checkpoint_and_the_best_state(tmp_path, monkeypatch, capsys):
    """Started with an absolute --trainer.default_root_dir, killed (kill -9) at step 6, resumed by the relative path."""
    import csv

    from ctrain.cli.fit import run_cli

    log = tmp_path / "crash.log"
    crashed = ctrain_in_fork(["fit", *QUICK, "--trainer.default_root_dir", str(tmp_path / "runs"), "--trainer.callbacks", "helpers.KillAtStep", "--trainer.callbacks.step", "6"], log)
    assert crashed == -9, log.read_text()[-3000:]
    run_dir = tmp_path / "runs" / "demo" / "version_0"
    (run_dir / ".metrics.csv.k2j4.tmp").write_text("step,tra")  # what a kill during those writes leaves
    (run_dir / ".model_final.p9q8.tmp" / "staged").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    cli = run_cli(["fit", "--resume", "runs/demo/version_0", "--trainer.callbacks=[]", "--trainer.enable_progress_bar", "false"])
    assert sorted(path.name for path in (run_dir / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    assert not list(run_dir.rglob(".*.tmp"))
    with (run_dir / "metrics.csv").open() as handle:
        dev = {int(row["step"]): float(row["val/stsb_spearman"]) for row in csv.DictReader(handle) if row["val/stsb_spearman"]}
    assert sorted(dev) == [0, 4, 8]
    assert float(cli.trainer.checkpoint_callback.best_model_score) == pytest.approx(max(dev[4], dev[8]))  # step 4's score was kept
    assert type(cli.trainer.strategy.checkpoint_io).__name__ == "RunDirectoryCheckpointIO"  # temporaries beside the target
    capsys.readouterr()
    assert run_cli(["fit", "--resume", str(run_dir)]) is None
    assert "finished at step 8; nothing to resume" in capsys.readouterr().out


def test_ctrl_c_during_start_up_stops_the_run_even_when_sigint_was_ignored(tmp_path):
    """A launcher (a shell script's background job) starts ctrain with SIGINT ignored; Ctrl-C must still stop it."""
    run = _ctrain_fit_process("--trainer.logger.init_args.save_dir", str(tmp_path), preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    lines = []
    for line in run.stdout:  # the trainer exists: the model is built, step 0's validation is next
        lines.append(line)
        if "GPU available" in line:
            run.send_signal(signal.SIGINT)
    run.wait(timeout=600)
    assert run.returncode != 0, "".join(lines)[-3000:]
    assert not (tmp_path / "demo" / "version_0" / "model_final").exists()


def test_a_value_outside_its_literal_is_one_line_naming_the_key_the_value_and_the_choices():
    from typing import Literal

    from ctrain.runtime import check_choice

    for choices in (Literal["cos", "dot"], ("cos", "dot"), {"cos": 1, "dot": 2}):
        check_choice("dot", choices, "model.similarity")
        with pytest.raises(ValueError) as error:
            check_choice("l2", choices, "model.similarity")
        assert str(error.value) == "unknown model.similarity 'l2': choose one of cos, dot"
