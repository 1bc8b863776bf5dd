"""Every script under benchmarks/<kind>/ runs end to end at toy size (`--toy`: a tiny random model, a few sentences or
steps), in this process: a change in src/ must not leave a benchmark broken until someone runs it at full size. The
scripts of benchmarks/speed/, and only they, compare with a peer, and `make benchmarks` runs them all."""

import csv
import re
from pathlib import Path

import pytest
import torch

from helpers import load_benchmark

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((ROOT / "benchmarks").glob("*/*.py"))
# Each subcommand on its own; RUN: a ctrain run directory whose metrics.csv holds the lab's probe (written here).
SUBCOMMANDS = {"lab_peer.py": [["gensim"], ["replica"], ["cost"], ["runs", "RUN"], ["plot", "RUN"]]}
RUNS = [(script, command) for script in SCRIPTS for command in SUBCOMMANDS.get(script.name, [[]])]
SPEED = ("ratio", "speed-up")  # what a speed benchmark prints: how it compares with its peer


def _lab_run(directory: Path) -> Path:
    """A run directory whose metrics.csv has the input-row fits the lab's WordWeightingProbe logs, at two steps."""
    keys = [f"weighting/theorem_input{suffix}_{field}" for suffix in ("", "_dkl", "_selfinfo") for field in ("slope", "r2", "spearman", "n")]
    directory.mkdir()
    with (directory / "metrics.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["step", "weighting/seconds", *keys])
        for step in (0, 165):
            writer.writerow([step, 1.5, *(0.5 if key.endswith(("slope", "r2", "spearman")) else 100 for key in keys)])
    return directory


@pytest.mark.parametrize(("script", "command"), RUNS, ids=lambda value: value.name if isinstance(value, Path) else "-".join(value))
def test_benchmark_runs_at_toy_size(script, command, tmp_path, monkeypatch, capsys):
    """It runs to its end and prints; it prints a ratio against its peer if and only if it is in benchmarks/speed/."""
    monkeypatch.chdir(tmp_path)  # what a benchmark writes lands here
    arguments = [str(_lab_run(tmp_path / "run")) if word == "RUN" else word for word in command]
    threads = torch.get_num_threads()
    try:
        load_benchmark(str(script.relative_to(ROOT / "benchmarks"))).main([*arguments, "--toy"])
    finally:
        torch.set_num_threads(threads)  # a benchmark sets its own
    printed = capsys.readouterr().out
    assert printed.strip(), f"{script.name} printed nothing"
    if not command:
        speed = any(word in printed for word in SPEED)
        kind = script.parent.name
        assert speed == (kind == "speed"), f"{script.name} prints a ratio against its peer: {speed}; its folder: {kind}"


def _made_benchmarks() -> set[str]:
    """The scripts that `make benchmarks` runs, as paths from the repository root."""
    target = re.search(r"^benchmarks:.*\n((?:\t.*\n)+)", (ROOT / "Makefile").read_text(), re.MULTILINE).group(1)
    return set(re.findall(r"benchmarks/\w+/\w+\.py", target))


def test_make_benchmarks_runs_every_speed_benchmark():
    speed = {str(path.relative_to(ROOT)) for path in (ROOT / "benchmarks" / "speed").glob("*.py")}
    assert speed and _made_benchmarks() == speed
