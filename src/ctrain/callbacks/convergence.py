"""Stop a run when its training objective, or a held-out metric, has converged.

The loss logged every step is a different batch each step: its noise hides whether training still moves.
`ObjectiveConvergence` takes `num_batches` training batches once, before the first step, and every
`every_n_steps` evaluates the objective on them with the random draws of one fixed step (positives,
negatives, dropout), so the tracked number is a function of the weights alone. It logs
`convergence/objective` and `convergence/relative_range` (`relative_range` over
the last `window` evaluations); once the range is below `tolerance` it logs `convergence/converged_step` and,
with `stop: true`, ends the run (the last step is then probed like any last step). On several processes the
objective is averaged over them, so every process takes the same decision.

The plateau test itself (`relative_range`, `has_converged`) is a pure function of the history, tested on
sequences with a known answer; the callbacks only collect the history and act on the answer.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytorch_lightning as pl
import torch

from ctrain.callbacks.schedule import StepSchedule
from ctrain.keys import MLM_HELD_OUT_LOSS
from ctrain.runtime import seeded, step_seed

FIXED_STEP = 0  # the step whose random draws every evaluation reuses


def relative_range(values: Sequence[float], window: int) -> float:
    """(max - min) / |mean| of the last `window` values: how far the objective moved over the window (inf if too short).

    The range, not the change between the ends: an objective that oscillates has not converged even where its
    first and last values agree.
    """
    if window < 2:
        raise ValueError(f"a convergence window needs at least 2 evaluations, got {window}")
    if len(values) < window:
        return float("inf")
    last = np.asarray(values[-window:], dtype=np.float64)
    scale = abs(float(last.mean()))
    spread = float(last.max() - last.min())
    if scale == 0.0:
        return 0.0 if spread == 0.0 else float("inf")
    return spread / scale


def has_converged(values: Sequence[float], window: int, tolerance: float) -> bool:
    """True when the last `window` evaluations of the objective lie within `tolerance` of each other, relatively."""
    return relative_range(values, window) < tolerance


class _Plateau(pl.Callback):
    """The plateau test both convergence callbacks apply: a history of (step, value), and the decision to stop."""

    def __init__(self, window: int, tolerance: float, stop: bool) -> None:
        if window < 2 or tolerance <= 0:
            raise ValueError(f"window must be >= 2 and tolerance > 0, got {window} and {tolerance}")
        self.window, self.tolerance, self.stop = window, tolerance, stop
        self.history: list[tuple[int, float]] = []
        self.converged_step: int | None = None

    def _record(self, trainer: pl.Trainer, step: int, value: float, value_key: str | None, range_key: str) -> None:
        """Add `value` at `step`, log it (under `value_key`, if any) with the window's range, and stop once converged."""
        self.history.append((step, value))
        values = [v for _, v in self.history]
        metrics = {range_key: relative_range(values, self.window)} | ({value_key: value} if value_key else {})
        if self.converged_step is None and has_converged(values, self.window, self.tolerance):
            self.converged_step = step
            metrics["convergence/converged_step"] = step
            if self.stop:
                trainer.should_stop = True
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=step)

    def state_dict(self) -> dict:
        return {"history": self.history, "converged_step": self.converged_step}

    def load_state_dict(self, state_dict: dict) -> None:
        self.history = [tuple(pair) for pair in state_dict["history"]]
        self.converged_step = state_dict["converged_step"]


class ObjectiveConvergence(_Plateau):
    """Evaluate the objective on fixed batches every `every_n_steps`; stop when it moved less than `tolerance` over `window`."""

    def __init__(self, every_n_steps: int = 500, num_batches: int = 16, window: int = 5, tolerance: float = 0.01, stop: bool = True) -> None:
        if num_batches < 1:
            raise ValueError(f"num_batches must be >= 1, got {num_batches}")
        super().__init__(window, tolerance, stop)
        self.schedule, self.num_batches = StepSchedule(every_n_steps), num_batches
        self.batches: list[dict] = []

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.batches:
            with torch.random.fork_rng(devices=[]):  # taking the batches must not move the run's own RNG
                loader = trainer.datamodule.train_dataloader()
                for batch, _ in zip(loader, range(self.num_batches)):
                    self.batches.append(batch)
        self._maybe_evaluate(trainer, pl_module)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx: int) -> None:
        self._maybe_evaluate(trainer, pl_module)

    def _maybe_evaluate(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        step = trainer.global_step
        if not self.schedule.due(step) or any(done == step for done, _ in self.history):
            return
        value = float(trainer.strategy.reduce(self.objective(pl_module), reduce_op="mean"))
        self._record(trainer, step, value, "convergence/objective", "convergence/relative_range")

    def objective(self, pl_module: pl.LightningModule) -> torch.Tensor:
        """The mean objective over the fixed batches, with the draws of `FIXED_STEP`, in train mode as in training, without gradients."""
        if not hasattr(pl_module, "objective_value"):
            raise TypeError(f"ObjectiveConvergence needs a ContrastiveModule (objective_value), got {type(pl_module).__name__}")
        total = torch.zeros((), device=pl_module.device)
        was_training = pl_module.training
        pl_module.train()
        with seeded(step_seed(FIXED_STEP, pl_module.global_rank, "dropout")), torch.no_grad():
            for batch in self.batches:
                moved = pl_module.transfer_batch_to_device(batch, pl_module.device, 0)
                total += pl_module.objective_value(moved, FIXED_STEP).float()
        pl_module.train(was_training)
        return total / len(self.batches)

    def state_dict(self) -> dict:
        # The batches too: a resumed run's loader starts where training stopped, so retaking them would change
        # the number being tracked halfway through its history.
        return super().state_dict() | {"batches": self.batches}

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        self.batches = state_dict["batches"]


class MetricConvergence(_Plateau):
    """Stop when a metric logged at each validation (default: the held-out MLM loss of `ctrain pretrain`) has plateaued.

    The held-out loss is already a function of the weights alone (fixed sentences, fixed masks), so no fixed batches
    are needed as in `ObjectiveConvergence`: the same plateau test (`has_converged`) runs on the
    metric's values at the last `window` validations. Logs `convergence/metric_relative_range` at each validation and
    `convergence/converged_step` once; with `stop: true` the run ends there. Validations come every
    `trainer.val_check_interval` steps, so the window spans `window x val_check_interval` steps.
    """

    def __init__(self, monitor: str = MLM_HELD_OUT_LOSS, window: int = 5, tolerance: float = 0.01, stop: bool = True) -> None:
        super().__init__(window, tolerance, stop)
        self.monitor = monitor

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or self.monitor not in trainer.callback_metrics:
            return
        step = trainer.global_step
        if any(done == step for done, _ in self.history):
            return  # a resumed run validates its restored step again
        self._record(trainer, step, float(trainer.callback_metrics[self.monitor]), None, "convergence/metric_relative_range")
