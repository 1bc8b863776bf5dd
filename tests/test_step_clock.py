"""The one step schedule of the probes and the convergence check, and the Lightning counter RunOutputs moves.

RunOutputs logs validation at `trainer.global_step` by setting Lightning's private logging counter
`fit_loop.epoch_loop._batches_that_stepped` for the validation and restoring it after (no public counter sets the
step that `self.log` in a validation hook is written at). The second test pins what that counter means, so that a
Lightning version that renames or redefines it fails here rather than shifting every run's validation rows.
"""

import csv

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from ctrain.callbacks.convergence import ObjectiveConvergence
from ctrain.callbacks.outputs import RunOutputs
from ctrain.callbacks.probes import GeometryProbe
from ctrain.callbacks.schedule import StepSchedule, log_spaced_steps


def test_probes_and_convergence_share_one_schedule():
    assert [step for step in range(13) if StepSchedule(5).due(step)] == [0, 5, 10]
    assert [step for step in range(13) if StepSchedule(5).due(step, last_step=12)] == [0, 5, 10, 12]
    assert [step for step in range(400) if StepSchedule(100, log_spaced=True).due(step)] == [0, 1, 3, 10, 30, 100, 300]
    assert log_spaced_steps(30) == {0, 1, 3, 10, 30}
    assert GeometryProbe(every_n_steps=7, log_spaced=True).schedule == StepSchedule(7, log_spaced=True)
    assert ObjectiveConvergence(every_n_steps=7).schedule == StepSchedule(7)
    for make in (StepSchedule, GeometryProbe, ObjectiveConvergence):
        with pytest.raises(ValueError, match="every_n_steps must be >= 1, got 0"):
            make(every_n_steps=0)


class _Line(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        return self.layer(batch).pow(2).mean()

    def validation_step(self, batch, batch_idx):
        self.log("val/value", self.layer(batch).mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class _Clock(pl.Callback):
    """(hook, global_step, Lightning's logging counter) at the hooks around a validation."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, int, int]] = []

    def _note(self, hook: str, trainer: pl.Trainer) -> None:
        self.seen.append((hook, trainer.global_step, trainer.fit_loop.epoch_loop._batches_that_stepped))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._note("batch_end", trainer)

    def on_validation_epoch_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self._note("validation", trainer)


class _ClockOnly(RunOutputs):
    def on_fit_end(self, trainer, pl_module):  # the exports need a ContrastiveModule; the clock does not
        pass


def test_run_outputs_logs_validation_at_the_global_step_and_restores_lightnings_counter(tmp_path):
    clock = _Clock()
    data = DataLoader(torch.randn(8, 2), batch_size=2)
    trainer = pl.Trainer(
        max_steps=4, val_check_interval=2, logger=pl.loggers.CSVLogger(tmp_path), callbacks=[_ClockOnly(), clock],
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
    )  # fmt: skip
    trainer.fit(_Line(), data, data)
    # Lightning's meaning: at a batch's end the counter is one behind the global step (it counts the batch after
    # its hooks); RunOutputs moves it to the global step for the validation only.
    assert [seen for seen in clock.seen if seen[0] == "batch_end"] == [("batch_end", step, step - 1) for step in (1, 2, 3, 4)]
    assert [seen for seen in clock.seen if seen[0] == "validation"] == [("validation", 2, 2), ("validation", 4, 4)]
    assert trainer.fit_loop.epoch_loop._batches_that_stepped == trainer.global_step == 4  # restored, then counted on
    with open(next(tmp_path.rglob("metrics.csv"))) as handle:
        assert [int(row["step"]) for row in csv.DictReader(handle) if row["val/value"]] == [2, 4]
