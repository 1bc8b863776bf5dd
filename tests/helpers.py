"""Test-only pieces that training subprocesses import (tests/ is on their PYTHONPATH)."""

import importlib.util
import os
import signal
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytorch_lightning as pl
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
# A tiny `ctrain fit` of the demo config: tiny BERT, 96 sentences, 6 steps, validation every 4 (and at the last).
QUICK_FIT = [
    "--config", str(ROOT / "configs" / "demo.yaml"),
    "--model.encoder.name", "tiny-bert",
    "--data.batch_size", "8",
    "--data.max_examples", "96",
    "--data.max_eval_pairs", "64",
    "--trainer.max_steps", "6",
    "--trainer.val_check_interval", "4",
    "--trainer.log_every_n_steps", "1",
    "--trainer.enable_progress_bar", "false",
    "--trainer.enable_model_summary", "false",
]  # fmt: skip


def load_benchmark(relative: str) -> ModuleType:
    """A benchmark script (`benchmarks/<kind>/<name>.py`, not a module of the package) imported from its file, under
    sys.modules's `benchmark_<name>`, where its dataclasses look their module up."""
    path = ROOT / "benchmarks" / relative
    spec = importlib.util.spec_from_file_location(f"benchmark_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def in_fork(function: Callable[[], object], log: Path) -> int:
    """Runs `function()` in a forked copy of this process and returns its exit status (-9 when SIGKILL ended it, as
    subprocess reports it); its output goes to `log`.

    For the kill-and-resume tests: what they check is what a killed process leaves on disk, which does not depend on
    how the process started, and a fork skips a fresh interpreter's imports (about 8 s on 2 cores). Tests of process
    start-up itself (signals, the CLI's argv, DDP's launcher) start a fresh interpreter instead."""
    child = os.fork()
    if child == 0:  # the child: never returns into pytest
        code = 1
        try:
            sys.stdout = sys.stderr = open(log, "w", buffering=1)  # noqa: SIM115 (the child exits below)
            os.dup2(sys.stdout.fileno(), 1)
            os.dup2(sys.stdout.fileno(), 2)
            function()
            code = 0
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else 1
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            os._exit(code)
    _, status = os.waitpid(child, 0)
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def ctrain_in_fork(args: list[str], log: Path) -> int:
    """`ctrain ARGS` by in_fork."""
    from ctrain.cli import main

    return in_fork(lambda: main(args), log)


class KillAtStep(pl.Callback):
    """SIGKILL the whole process after `step` optimizer steps: a crash with no chance to clean up."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class RecordTrainMode(pl.Callback):
    """Records, inside every training step (after the forward), whether every encoder module is in train mode."""

    def __init__(self) -> None:
        self.all_training: list[bool] = []

    def on_before_backward(self, trainer, pl_module, loss) -> None:
        self.all_training.append(all(module.training for module in pl_module.encoder.modules()))


class RecordSeeds(pl.Callback):
    """Records, inside every training batch (after the forward): (optimizer step, the seed dropout drew from,
    the seed of the positives' draws, the seed of the objective's draws)."""

    def __init__(self) -> None:
        self.seeds: list[tuple[int, int, int, int]] = []

    def on_before_backward(self, trainer, pl_module, loss) -> None:
        streams = (pl_module._step_seed(stream) for stream in ("positives", "objective"))
        self.seeds.append((trainer.global_step, torch.initial_seed(), *streams))


# Eight short sentences with repeated words: a corpus a bag trains on in a few steps (multiply it for more batches).
TOY_SENTENCES = [
    "a man is playing a guitar on the stage",
    "the cat sleeps on the red sofa",
    "two dogs run in a green field",
    "a woman is slicing an onion in the kitchen",
    "the man plays the guitar",
    "a dog runs across the field",
    "the woman cuts a tomato",
    "a cat is sleeping in the sun",
]


def covering_runs(runs: list[dict]) -> list[int]:
    """Indices of the runs that bring a swept value no earlier run had: every value of every parameter gets checked
    once, so a 19 x 3 grid costs 19 checks instead of 57."""
    seen: set[tuple[str, str]] = set()
    kept = []
    for index, settings in enumerate(runs):
        values = {(name, repr(value)) for name, value in settings.items()}
        if values - seen:
            kept.append(index)
            seen |= values
    return kept


def quick_probes_preset(path: Path, every_n_steps: int, weighting_sentences: int, geometry_sentences: int) -> Path:
    """callbacks/probes.yaml with every setting kept but its schedule and sizes cut to seconds on a CPU, written to
    `path`. Edited as YAML, not as text, so that a value the preset changes cannot leave a test at full size."""
    preset = yaml.safe_load((ROOT / "callbacks" / "probes.yaml").read_text())
    weighting, geometry = preset["trainer"]["callbacks"]
    assert weighting["class_path"].endswith("WordWeightingProbe") and geometry["class_path"].endswith("GeometryProbe")
    weighting["init_args"].update(every_n_steps=every_n_steps, num_sentences=weighting_sentences)
    weighting["init_args"].setdefault("config", {}).update(dkl_repeats=1)
    geometry["init_args"].update(every_n_steps=every_n_steps)
    geometry["init_args"].setdefault("config", {}).update(num_sentences=geometry_sentences, anisotropy_resamples=1)
    path.write_text(yaml.safe_dump(preset))
    return path
