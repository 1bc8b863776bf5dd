"""`ctrain sweep FILE`: run a W&B sweep file locally, without a W&B server.

The same file works with `wandb sweep FILE` + `wandb agent`. Here, grid and random methods run
one after another or N at a time, each run a `ctrain fit` subprocess whose directory is
`<sweep dir>/runs/<swept values>`. The sweep directory holds sweep.yaml (the file as given),
plan.json (the runs, fixed at the first start, so a random sweep resumes the same draws),
logs/, and summary.csv (one row per run, rewritten after each). Started again, a sweep skips
finished runs and resumes interrupted ones from their last checkpoint (`ctrain fit --resume`).
"""

from __future__ import annotations

import csv
import json
import math
import os
import random
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from itertools import product
from pathlib import Path

import yaml
from jsonargparse import CLI

from ctrain.fileio import atomic_path, atomic_write_text
from ctrain.keys import STS_DEV, STS_TEST, STS_TEST_BEST

SUMMARY_METRICS = {STS_DEV: "sts_dev_final", STS_TEST: "sts_test_final", STS_TEST_BEST: "sts_test_best"}
SUPPORTED_MACROS = ("${env}", "${interpreter}", "${program}", "${args}")


def read_sweep(path: Path) -> dict:
    """The sweep file, checked for what the local runner supports."""
    if not path.exists():
        raise FileNotFoundError(f"sweep file '{path}' does not exist; the shipped ones are in sweeps/")
    spec = yaml.safe_load(path.read_text())
    if not isinstance(spec, dict) or not isinstance(spec.get("parameters"), dict):
        raise ValueError(f"'{path}' is not a W&B sweep file: it needs a 'parameters' mapping")  # noqa: TRY004 (bad input: one line)
    if spec.get("method") not in ("grid", "random"):
        raise ValueError(f"'{path}': method {spec.get('method')!r} runs only under `wandb agent`; ctrain sweep runs grid and random")
    for macro in re.findall(r"\$\{\w+\}", " ".join(map(str, spec.get("command", [])))):
        if macro not in SUPPORTED_MACROS:
            raise ValueError(f"'{path}': command macro {macro} is not supported here; use {', '.join(SUPPORTED_MACROS)}")
    return spec


def _sample(name: str, parameter: dict, rng: random.Random):
    if "value" in parameter:
        return parameter["value"]
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


def run_label(settings: dict, swept: list[str]) -> str:
    """Directory name of a run: its swept values, e.g. `temperature=0.05` or `pooling=cls,similarity=dot`."""
    short = [name.split(".")[-1] for name in swept]
    names = short if len(set(short)) == len(short) else swept
    parts = [f"{name}={_format(settings[key])}" for name, key in zip(names, swept)] or ["run"]
    return re.sub(r"[^\w.=,+-]", "_", ",".join(parts))


def _format(value) -> str:
    if isinstance(value, str) and value.endswith((".yaml", ".yml")):  # a swept --config file: its name says the setting
        return Path(value).stem
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _argument(value) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def fit_command(spec: dict, settings: dict) -> list[str]:
    """The sweep file's command with its macros filled: what `wandb agent` would run, with this interpreter."""
    template = spec.get("command") or ["${env}", "${interpreter}", "${program}", "${args}"]
    command: list[str] = []
    for part in template:
        if part == "${env}":
            continue
        if part == "${args}":
            command += [f"--{name}={_argument(value)}" for name, value in settings.items()]
        elif part in ("ctrain", "${program}") and (part == "ctrain" or spec.get("program") == "ctrain"):
            command += [sys.executable, "-m", "ctrain.cli"]
        else:
            command.append(sys.executable if part == "${interpreter}" else str(part).replace("${program}", str(spec.get("program", ""))))
    return command


def run_summary(run_dir: Path) -> dict[str, str]:
    """Last value of each summary metric in the run's metrics.csv."""
    values: dict[str, str] = {}
    metrics_file = run_dir / "metrics.csv"
    if metrics_file.exists():
        with metrics_file.open(newline="") as handle:
            for row in csv.DictReader(handle):
                values.update({name: row[key] for key, name in SUMMARY_METRICS.items() if row.get(key)})
                values["last_step"] = row["step"]
    return values


def _write_summary(path: Path, rows: list[dict]) -> None:
    fields = list(dict.fromkeys(key for row in rows for key in row))
    with atomic_path(path) as temporary, temporary.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def _run_one(command: list[str], run_dir: Path, log_file: Path, threads: int) -> tuple[int, float, str]:
    """Start, resume or skip one run; (exit code, seconds, what was done)."""
    if "sts_test_final" in run_summary(run_dir):  # logged last, after both models are exported
        return 0, 0.0, "already finished"
    if (run_dir / "checkpoints" / "last.ckpt").exists():
        command, action = [*command[: command.index("fit")], "fit", "--resume", str(run_dir)], "resumed"
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
        command = fit_command(spec, settings)
        command += [f"--trainer.default_root_dir={sweep_dir}", "--trainer.logger.init_args.name=runs", f"--trainer.logger.init_args.version={label}"]
        command += [f"--wandb.group={sweep_dir.name}"] + ([f"--wandb.mode={wandb}"] if wandb else [])
        commands[label] = command
    if dry_run:
        for label, command in commands.items():
            print(f"{label}: {' '.join(command)}")
        return sweep_dir
    atomic_write_text(sweep_dir / "sweep.yaml", path.read_text())
    atomic_write_text(plan_file, json.dumps(plan, indent=1))
    threads = max(1, (os.cpu_count() or 1) // parallel)
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
            _write_summary(summary_file, list(rows.values()))
            scores = f", STS-B dev {float(summary['sts_dev_final']):.2f}" if "sts_dev_final" in summary else ""
            where = f"log {sweep_dir / 'logs' / f'{label}.log'}" if code else str(run_dir)
            outcome = action if skipped else f"{action}, {status} in {seconds:.0f} s"
            print(f"[{done}/{len(runs)}] {label}: {outcome}{scores}; {where}", flush=True)
    print(f"ctrain sweep: summary {summary_file}; draw it with: ctrain report {sweep_dir}")
    if failed:
        raise RuntimeError(f"{failed} of {len(runs)} runs failed; their logs are in {sweep_dir / 'logs'}; run the same command again to retry them")
    return sweep_dir


def sweep_main(args: list[str]) -> None:
    try:
        CLI(sweep, args=args, as_positional=True)
    except RuntimeError as error:
        print(f"ctrain sweep: {error}", file=sys.stderr)
        sys.exit(1)
