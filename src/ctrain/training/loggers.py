"""ctrain's loggers: a CSV logger that never loses rows and a W&B logger that is offline-first.

Both add `trainer/examples_seen` (optimizer steps x global batch size) to every row, so runs with
different batch sizes can be compared on one axis. The CLI sets `examples_per_step` once the
trainer and data are known.
"""

from __future__ import annotations

import csv
import netrc
import os
import shlex
import subprocess
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Literal
from urllib.parse import urlparse

from pytorch_lightning.loggers import CSVLogger, WandbLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter
from pytorch_lightning.loggers.logger import rank_zero_experiment

from ctrain.fileio import atomic_path
from ctrain.keys import EXAMPLES_SEEN

STEP_KEY = "step"
WandbMode = Literal["off", "auto", "offline", "online"]


def write_csv_atomic(path: str, fields: list[str], rows: list[dict]) -> None:
    with atomic_path(path) as temporary, temporary.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def _with_examples_seen(metrics: Mapping[str, float], step: int | None, examples_per_step: int | None) -> dict:
    if step is None or examples_per_step is None:
        return dict(metrics)
    return {**metrics, EXAMPLES_SEEN: step * examples_per_step}


class _AppendingWriter(ExperimentWriter):
    """Lightning's writer deletes an existing metrics.csv and rewrites it in place; this one keeps
    the rows already there (a resumed run's), keeps rows in step order (the probes log a step's
    row before Lightning logs that step's training row), and replaces the file only with a
    complete new copy."""

    def _check_log_dir_exists(self) -> None:
        self.rows: list[dict] = []
        if os.path.isfile(self.metrics_file_path):
            with open(self.metrics_file_path, newline="") as handle:
                reader = csv.DictReader(handle)
                self.rows = list(reader)
                self.metrics_keys = list(reader.fieldnames or [])

    def save(self) -> None:
        if not self.metrics:
            return
        self._record_new_keys()
        self.rows.extend(self.metrics)
        self.rows.sort(key=lambda row: int(row[STEP_KEY]))  # stable: rows of one step keep their order
        self.metrics = []
        write_csv_atomic(self.metrics_file_path, self.metrics_keys, self.rows)


class RunCSVLogger(CSVLogger):
    """CSVLogger whose metrics.csv survives a crash and a resume (see `_AppendingWriter`)."""

    examples_per_step: int | None = None

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        super().log_metrics(_with_examples_seen(metrics, step, self.examples_per_step), step)


class RunWandbLogger(WandbLogger):
    """WandbLogger that plots every metric against the global step by default and logs
    `trainer/examples_seen` with every row, so W&B's x-axis can be switched to examples seen."""

    examples_per_step: int | None = None

    @property
    @rank_zero_experiment
    def experiment(self):
        fresh = self._experiment is None
        run = super().experiment
        if fresh and hasattr(run, "define_metric"):
            run.define_metric(EXAMPLES_SEEN)
        return run

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        super().log_metrics(_with_examples_seen(metrics, step, self.examples_per_step), step)


class WandbOptions:
    """W&B for a run (`--wandb.mode auto`, or the preset callbacks/wandb.yaml).

    Args:
        mode: off; auto (online when W&B credentials exist, offline otherwise); offline; online.
            Offline runs write into `<run dir>/wandb/` and upload later with `wandb sync`.
        project: W&B project.
        entity: W&B entity (user or team); None is the account's default.
        group: W&B group; None groups a run by its W&B sweep, or by its ctrain sweep directory.
        tags: W&B tags.
    """

    def __init__(
        self,
        mode: WandbMode = "off",
        project: str = "ctrain",
        entity: str | None = None,
        group: str | None = None,
        tags: list[str] | None = None,
    ) -> None:
        self.mode, self.project, self.entity, self.group, self.tags = mode, project, entity, group, tags or []


def has_wandb_credentials() -> bool:
    """An API key in the environment or in ~/.netrc for the W&B host (what `wandb login` writes)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host or "") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def existing_wandb_id(run_dir: Path) -> str | None:
    """The W&B run id of an earlier start of `run_dir` (W&B names its folders `[offline-]run-DATE-ID`)."""
    folders = sorted((run_dir / "wandb").glob("*run-*-*"), key=lambda path: path.stat().st_mtime)
    return folders[-1].name.rsplit("-", 1)[-1] if folders else None


def offline_sync_command(run_dir: Path) -> str | None:
    """The `wandb sync` command that uploads a run's offline folders as one W&B run (None: no offline folder).

    W&B cannot resume a run offline: each start of a resumed offline run writes its own
    `offline-run-DATE-ID` folder under the same run id. Given together with `--id`, `wandb sync`
    uploads the folders of one run one after another in start-time order, as that run's history.
    """
    folders = sorted((run_dir / "wandb").glob("offline-run-*"), key=lambda path: path.name)
    if not folders:
        return None
    return shlex.join(["wandb", "sync", "--id", folders[0].name.rsplit("-", 1)[-1], *map(str, folders)])


def wandb_logger(options: WandbOptions, run_dir: Path, run_name: str) -> RunWandbLogger:
    """The W&B logger of `run_dir`: its files inside the run directory, the same W&B run on resume."""
    if options.mode == "online" and not has_wandb_credentials():
        raise ValueError("wandb.mode is online but no W&B credentials were found; run `wandb login` or use --wandb.mode auto")
    offline = options.mode == "offline" or (options.mode == "auto" and not has_wandb_credentials())
    run_dir.mkdir(parents=True, exist_ok=True)
    return RunWandbLogger(
        name=run_name,
        save_dir=str(run_dir),
        id=existing_wandb_id(run_dir) or uuid.uuid4().hex[:8],
        offline=offline,
        project=options.project,
        entity=options.entity,
        group=options.group or os.environ.get("WANDB_SWEEP_ID"),
        tags=options.tags,
    )


def git_revision() -> str:
    """ctrain's git commit (with `-dirty` when the tree has changes), or `unknown` outside a checkout."""
    source = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "-C", str(source), "status", "--porcelain"], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
