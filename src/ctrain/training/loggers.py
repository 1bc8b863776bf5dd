"""ctrain's CSV logger: metrics.csv never loses rows (the W&B logger, offline-first: ctrain.callbacks.wandb_run).

Both loggers add `trainer/examples_seen` (optimizer steps x global batch size) to every row, so runs with
different batch sizes can be compared on one axis. The CLI sets `examples_per_step` once the
trainer and data are known.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping

from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter
from pytorch_lightning.loggers.logger import rank_zero_experiment

from ctrain.fileio import write_csv_atomic
from ctrain.runtime import with_examples_seen

STEP_KEY = "step"


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
        write_csv_atomic(self.metrics_file_path, self.rows, self.metrics_keys)


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
        super().log_metrics(with_examples_seen(metrics, step, self.examples_per_step), step)
