"""The engine of `ctrain sweep FILE`: run a W&B sweep file locally, without a W&B server.

The same file works with `wandb sweep FILE` + `wandb agent`. Here, grid and random methods run
one after another or N at a time, each run a `ctrain fit` subprocess whose directory is
`<sweep dir>/runs/<swept values>`. The sweep directory holds sweep.yaml (the file as given),
plan.json (the runs, fixed at the first start, so a random sweep resumes the same draws),
logs/, summary.csv (one row per run, rewritten after each) and .lock (held while a `ctrain sweep`
runs the directory: a second one stops at once). Started again, a sweep skips finished runs and
resumes interrupted ones from their last checkpoint (`ctrain fit --resume`).

A run's label (`run_label`, read back by `parse_run_label`) is its directory's name and how reports name it.
"""

from __future__ import annotations

import csv
import fcntl
import io
import json
import math
import os
import random
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from itertools import product
from pathlib import Path

import yaml

from ctrain.fileio import atomic_write_text, complete_lines, write_csv_atomic
from ctrain.keys import STS_DEV, STS_TEST, STS_TEST_BEST

SUMMARY_METRICS = {STS_DEV: "sts_dev_final", STS_TEST: "sts_test_final", STS_TEST_BEST: "sts_test_best"}
SUPPORTED_MACROS = ("${env}", "${interpreter}", "${program}", "${args}")
DEFAULT_COMMAND = ["ctrain", "fit", "${args}"]  # W&B's default `${env} ${interpreter} ${program} ${args}` with program ctrain
CTRAIN_SUBCOMMANDS = ("fit", "validate", "test", "pretrain")


def read_sweep(path: Path) -> dict:
    """The sweep file, checked for what the local runner supports."""
    if not path.exists():
        raise FileNotFoundError(f"sweep file '{path}' does not exist; the shipped ones are in sweeps/")
    spec = _load_yaml(path)
    if not isinstance(spec, dict) or not isinstance(spec.get("parameters"), dict):
        raise ValueError(f"'{path}' is not a W&B sweep file: it needs a 'parameters' mapping")  # noqa: TRY004 (bad input: one line)
    if spec.get("method") not in ("grid", "random"):
        raise ValueError(f"'{path}': method {spec.get('method')!r} runs only under `wandb agent`; ctrain sweep runs grid and random")
    for macro in re.findall(r"\$\{\w+\}", " ".join(map(str, spec.get("command", [])))):
        if macro not in SUPPORTED_MACROS:
            raise ValueError(f"'{path}': command macro {macro} is not supported here; use {', '.join(SUPPORTED_MACROS)}")
    for part in map(str, spec.get("command", [])):
        if part.startswith("--trainer.logger"):  # the runner's name/version flags would land on that logger, not the CSV one
            raise ValueError(
                f"'{path}': command sets {part}; a sweep keeps the run's CSV logger (ctrain sweep puts each run in "
                "its directory through it): turn W&B on with --config callbacks/wandb.yaml instead"
            )
    for name, parameter in spec["parameters"].items():
        if "probabilities" in parameter:
            probabilities, values = parameter["probabilities"], parameter.get("values")
            if not isinstance(values, list) or not isinstance(probabilities, list) or len(probabilities) != len(values):
                raise ValueError(f"'{path}': parameter {name}: probabilities needs values, one probability per value")
            if any(not isinstance(p, (int, float)) or p < 0 for p in probabilities) or not math.isclose(sum(probabilities), 1.0, abs_tol=1e-6):
                raise ValueError(f"'{path}': parameter {name}: probabilities must be non-negative numbers that sum to 1, not {probabilities}")
    return spec


def _load_yaml(path: Path):
    """The YAML in `path`; a syntax error is one line with its place and the usual cause: an unquoted `${...}`."""
    text = path.read_text()
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        lines = text.splitlines()
        # an unclosed bracket is found at the end of the file; the line that opened it is the context
        marks = [getattr(error, name, None) for name in ("problem_mark", "context_mark")]
        mark = next((mark for mark in marks if mark is not None and mark.line < len(lines)), None)
        where = f" line {mark.line + 1} ({lines[mark.line].strip()})" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ValueError(
            f"'{path}'{where} is not valid YAML: {problem}; quote a value that holds ${{...}}, braces, brackets or ': ' "
            'there, e.g. command: [ctrain, fit, "${args}"]'
        ) from None


def _sample(name: str, parameter: dict, rng: random.Random):
    if "value" in parameter:
        return parameter["value"]
    if "values" in parameter and "probabilities" in parameter:
        return rng.choices(parameter["values"], weights=parameter["probabilities"])[0]
    if "values" in parameter:
        return rng.choice(parameter["values"])
    distribution, low, high = parameter.get("distribution"), parameter.get("min"), parameter.get("max")
    if distribution == "uniform":
        return rng.uniform(low, high)
    if distribution == "log_uniform_values":
        return math.exp(rng.uniform(math.log(low), math.log(high)))
    if distribution == "int_uniform":
        return rng.randint(low, high)
    raise ValueError(f"parameter {name}: give value, values, or distribution uniform / log_uniform_values / int_uniform with min and max")


def plan_runs(spec: dict, count: int | None = None, seed: int = 0) -> list[dict]:
    """The swept settings of every run: the grid's product in file order, or `count` random draws."""
    parameters = spec["parameters"]
    if spec["method"] == "grid":
        for name, parameter in parameters.items():
            if "value" not in parameter and "values" not in parameter:
                raise ValueError(f"grid sweep parameter {name} needs value or values, not a distribution")
        choices = [parameter["values"] if "values" in parameter else [parameter["value"]] for parameter in parameters.values()]
        return [dict(zip(parameters, combination)) for combination in product(*choices)]
    count = count or spec.get("run_cap")
    if not count:
        raise ValueError("a random sweep needs a number of runs: --count N, or run_cap in the sweep file")
    rng = random.Random(seed)
    return [{name: _sample(name, parameter, rng) for name, parameter in parameters.items()} for _ in range(count)]


def run_label(settings: Mapping[str, object], swept: Sequence[str]) -> str:
    """A run's label and directory name: its swept values, e.g. `temperature=0.05` or `pooling=cls,similarity=dot`.

    Keys by their last dotted part unless two would read the same; a swept --config file by its name."""
    short = [name.split(".")[-1] for name in swept]
    names = short if len(set(short)) == len(short) else swept
    parts = [f"{name}={_format(settings[key])}" for name, key in zip(names, swept)] or ["run"]
    return re.sub(r"[^\w.=,+-]", "_", ",".join(parts))


def parse_run_label(label: str) -> dict[str, str]:
    """`seed_everything=1,config=exact` -> its swept values by name; a label without any (`exact`) is a config's name."""
    parts = dict(part.split("=", 1) for part in label.split(",") if "=" in part)
    return parts if parts else {"config": label}


def _format(value) -> str:
    if isinstance(value, str) and value.endswith((".yaml", ".yml")):  # a swept --config file: its name says the setting
        return Path(value).stem
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _argument(value) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def repository_root(sweep_file: Path) -> Path | None:
    """The first directory holding configs/, walking up from the sweep file's directory."""
    for directory in Path(sweep_file).resolve().parents:
        if (directory / "configs").is_dir():
            return directory
    return None


def resolve_config(value: str, sweep_file: Path | None) -> str:
    """A --config path as given when it exists from the current directory, else from the sweep file's repository root."""
    if sweep_file is None or Path(value).exists():
        return value
    root = repository_root(sweep_file)
    return str(root / value) if root is not None and (root / value).exists() else value


def fit_command(spec: dict, settings: dict, sweep_file: Path | None = None) -> list[str]:
    """The sweep file's command with its macros filled: what `wandb agent` would run, with this interpreter.

    No command means `ctrain fit ${args}`; `ctrain` (or ${program} with program ctrain) without a subcommand
    means `ctrain fit`. --config paths missing from the current directory are read from the sweep file's
    repository root (see `resolve_config`)."""
    template = [str(part) for part in spec.get("command") or DEFAULT_COMMAND]
    is_ctrain = [part == "ctrain" or (part == "${program}" and spec.get("program") == "ctrain") for part in template]
    command: list[str] = []
    for index, part in enumerate(template):
        if part == "${env}" or (part == "${interpreter}" and index + 1 < len(template) and is_ctrain[index + 1]):
            continue  # the ctrain program is started with this interpreter already
        if part == "${args}":
            for name, value in settings.items():
                argument = resolve_config(value, sweep_file) if name == "config" and isinstance(value, str) else _argument(value)
                command.append(f"--{name}={argument}")
        elif is_ctrain[index]:
            command += [sys.executable, "-m", "ctrain.cli"]
            if index + 1 == len(template) or template[index + 1] not in CTRAIN_SUBCOMMANDS:
                command.append("fit")
        elif index > 0 and template[index - 1] == "--config":
            command.append(resolve_config(part, sweep_file))
        elif part.startswith("--config="):
            command.append("--config=" + resolve_config(part.removeprefix("--config="), sweep_file))
        else:
            command.append(sys.executable if part == "${interpreter}" else part.replace("${program}", str(spec.get("program", ""))))
    return command


def run_summary(run_dir: Path) -> dict[str, str]:
    """Last value of each summary metric in the run's metrics.csv."""
    values: dict[str, str] = {}
    metrics_file = run_dir / "metrics.csv"
    if metrics_file.exists():
        with io.StringIO(complete_lines(metrics_file), newline="") as handle:
            for row in csv.DictReader(handle):
                values.update({name: row[key] for key, name in SUMMARY_METRICS.items() if row.get(key)})
                values["last_step"] = row["step"]
    return values


def threads_per_run(parallel: int) -> int:
    """Torch threads for each of `parallel` concurrent runs: the cores this process may use (its CPU affinity, so
    `taskset` or a cluster's cgroup pinning is respected), shared equally."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, usable // parallel)


def _run_one(command: list[str], run_dir: Path, log_file: Path, threads: int) -> tuple[int, float, str]:
    """Start, resume or skip one run; (exit code, seconds, what was done)."""
    if "sts_test_final" in run_summary(run_dir):  # logged last, after both models are exported
        return 0, 0.0, "already finished"
    if (run_dir / "checkpoints" / "last.ckpt").exists():
        subcommand = next(index for index, part in enumerate(command) if part in CTRAIN_SUBCOMMANDS)
        command, action = [*command[: subcommand + 1], "--resume", str(run_dir)], "resumed"
    else:
        shutil.rmtree(run_dir, ignore_errors=True)  # started but no checkpoint: nothing to resume
        action = "ran"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    environment = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    started = time.perf_counter()
    with log_file.open("a") as log:
        code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=environment, check=False).returncode
    return code, time.perf_counter() - started, action


def sweep(
    file: str,
    out: str | None = None,
    *,
    parallel: int = 1,
    count: int | None = None,
    seed: int = 0,
    wandb: str | None = None,
    dry_run: bool = False,
) -> Path:
    """Run the W&B sweep FILE locally; returns the sweep directory.

    Args:
        file: a W&B sweep file (method grid or random), e.g. sweeps/temperature_cpu.yaml.
        out: the sweep directory (default runs/sweeps/<file name>); running again resumes it.
        parallel: runs at a time (each gets an equal share of the CPU threads).
        count: number of runs of a random sweep (default: the file's run_cap).
        seed: random sweep draws.
        wandb: W&B mode for every run (off, auto, offline, online); default: what the file's command says.
        dry_run: print the commands, run nothing.
    """
    if parallel < 1:
        raise ValueError(f"--parallel {parallel}: give the number of runs at a time, at least 1")
    if count is not None and count < 1:
        raise ValueError(f"--count {count}: give the number of runs of a random sweep, at least 1")
    path = Path(file)
    spec = read_sweep(path)
    sweep_dir = Path(out) if out else Path("runs") / "sweeps" / path.stem
    plan_file = sweep_dir / "plan.json"
    if plan_file.exists():
        plan = json.loads(plan_file.read_text())
        if plan["sweep"] != spec:
            raise ValueError(f"'{sweep_dir}' holds a different sweep; give another --out, or remove that directory to start over")
    else:
        plan = {"sweep": spec, "runs": plan_runs(spec, count, seed)}
    swept = [name for name, parameter in spec["parameters"].items() if "value" not in parameter]
    runs = [(run_label(settings, swept), settings) for settings in plan["runs"]]
    if len({label for label, _ in runs}) < len(runs):
        raise ValueError("two runs of this sweep have the same swept values; use method grid, or more distinct values")
    commands = {}
    for label, settings in runs:
        command = fit_command(spec, settings, path)
        command += [f"--trainer.default_root_dir={sweep_dir}", "--trainer.logger.init_args.name=runs", f"--trainer.logger.init_args.version={label}"]
        command += [f"--wandb.group={sweep_dir.name}"] + ([f"--wandb.mode={wandb}"] if wandb else [])
        commands[label] = command
    if dry_run:  # what each run would write where; `ctrain fit ... --print_config` of a command shows its full config
        for label, command in commands.items():
            print(f"run {label}\n  directory: {sweep_dir / 'runs' / label}\n  command: {shlex.join(command)}")
        return sweep_dir
    with sweep_lock(sweep_dir):
        return _run_sweep(path, spec, plan, runs, commands, sweep_dir, swept, parallel)


@contextmanager
def sweep_lock(sweep_dir: Path) -> Iterator[None]:
    """Hold `<sweep dir>/.lock` while the sweep runs: a second `ctrain sweep` on the same directory stops at once
    instead of training the same runs into the same directories. The kernel drops the lock when its process ends,
    however it ends, so a killed sweep leaves nothing to clean up."""
    sweep_dir.mkdir(parents=True, exist_ok=True)
    with (sweep_dir / ".lock").open("a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "another process"
            raise ValueError(
                f"'{sweep_dir}' is being run by another ctrain sweep ({holder}); wait for it to end, or give another --out"
            ) from None
        lock.truncate(0)
        lock.write(f"process {os.getpid()}")
        lock.flush()
        yield


def _run_sweep(path: Path, spec: dict, plan: dict, runs: list[tuple[str, dict]], commands: dict[str, list[str]], sweep_dir: Path, swept: list[str], parallel: int) -> Path:
    """Run (or resume) every planned run, `parallel` at a time, keeping summary.csv current."""
    plan_file = sweep_dir / "plan.json"
    atomic_write_text(sweep_dir / "sweep.yaml", path.read_text())
    atomic_write_text(plan_file, json.dumps(plan, indent=1))
    threads = threads_per_run(parallel)
    rows = {label: {"run": label, **{name: settings[name] for name in swept}, "status": "pending"} for label, settings in runs}
    summary_file = sweep_dir / "summary.csv"
    earlier_seconds = {}
    if summary_file.exists():  # a re-run: finished runs keep the time they took
        with summary_file.open() as handle:
            earlier_seconds = {row["run"]: row["seconds"] for row in csv.DictReader(handle)}
    print(f"ctrain sweep: {len(runs)} runs of {path} in {sweep_dir}, {parallel} at a time")
    failed = 0
    with ThreadPoolExecutor(max_workers=parallel) as pool:
        futures = {
            pool.submit(_run_one, commands[label], sweep_dir / "runs" / label, sweep_dir / "logs" / f"{label}.log", threads): label
            for label, _ in runs
        }
        for done, future in enumerate(as_completed(futures), start=1):
            label = futures[future]
            code, seconds, action = future.result()
            run_dir = sweep_dir / "runs" / label
            summary = run_summary(run_dir)
            status = "finished" if code == 0 else f"failed (exit {code})"
            failed += code != 0
            skipped = action == "already finished"
            rows[label].update(status=status, seconds=earlier_seconds.get(label, "") if skipped else round(seconds, 1), **summary)
            write_csv_atomic(summary_file, list(rows.values()))
            scores = f", STS-B dev {float(summary['sts_dev_final']):.2f}" if "sts_dev_final" in summary else ""
            where = f"log {sweep_dir / 'logs' / f'{label}.log'}" if code else str(run_dir)
            outcome = action if skipped else f"{action}, {status} in {seconds:.0f} s"
            print(f"[{done}/{len(runs)}] {label}: {outcome}{scores}; {where}", flush=True)
    print(f"ctrain sweep: summary {summary_file}; draw it with: ctrain report {sweep_dir}")
    if failed:
        raise RuntimeError(f"{failed} of {len(runs)} runs failed; their logs are in {sweep_dir / 'logs'}; run the same command again to retry them")
    return sweep_dir
