"""W&B for a run, in one place: its options (`--wandb.*`), the credential lookup, the offline-first logger, the
`wandb sync` command of an offline run, the git revision its config records, and the callback that sends the probes'
figures.

The logger logs `trainer/examples_seen` with every row, as the CSV logger does (ctrain.training.loggers), so W&B's
x-axis can be switched to examples seen. The CLI (ctrain.cli.fit) builds the logger and adds the callback when W&B is on.
"""

from __future__ import annotations

import netrc
import os
import shlex
import subprocess
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Literal
from urllib.parse import urlparse

import pytorch_lightning as pl
from pytorch_lightning.loggers import WandbLogger
from pytorch_lightning.loggers.logger import rank_zero_experiment

from ctrain.keys import EXAMPLES_SEEN
from ctrain.runtime import with_examples_seen

WandbMode = Literal["off", "auto", "offline", "online"]


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
        super().log_metrics(with_examples_seen(metrics, step, self.examples_per_step), step)


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


class WandbProbeFigures(pl.Callback):
    """Logs the probes' figures (geometry per layer, word-weighting fits, so far) to W&B after each probe.

    It reads what the probe callbacks appended to `<run dir>/probes/*.jsonl`, so it needs no
    access to their internals; the CLI adds it when W&B is on. A probe's figures (`figures/<probe>_...`) are sent
    when its file has new records, once per record: two probes measuring at one step send each figure once."""

    def __init__(self) -> None:
        self._records_seen: dict[str, int] = {}

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._log_new_figures(trainer)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx: int) -> None:
        self._log_new_figures(trainer)

    def _log_new_figures(self, trainer: pl.Trainer) -> None:
        from ctrain.reporting.report import (
            figure_pixels,
            read_probes,
            run_figures,
            run_title,
        )

        run_dir = Path(trainer.log_dir or trainer.default_root_dir)
        if not trainer.is_global_zero:
            return
        records = {path.stem: len(path.read_text().splitlines()) for path in (run_dir / "probes").glob("*.jsonl")}
        updated = tuple(f"{probe}_" for probe, count in records.items() if count != self._records_seen.get(probe))
        if not updated:
            return
        self._records_seen = records
        probes = read_probes(run_dir)
        probes["examples"] = probes["step"]  # the x-axis drawn is the step; W&B also gets examples seen per row
        figures = {name: figure for name, figure in run_figures(probes, run_title(run_dir), "step").items() if name.startswith(updated)}
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                for name, figure in figures.items():
                    logger.log_image(key=f"figures/{name}", images=[figure_pixels(figure)], step=trainer.global_step)
