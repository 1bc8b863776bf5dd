"""When a measurement during training is due: the one step schedule of the probes and of the objective's convergence check.

Steps are optimizer steps (`trainer.global_step`, the number of steps the measured model has taken), so that every
measurement of a run, and the logged validation (callbacks/outputs.py), share one x-axis.
"""

from __future__ import annotations

from dataclasses import dataclass


def log_spaced_steps(limit: int) -> set[int]:
    """0, 1, 3, 10, 30, 100, 300, ... up to `limit`: dense early, where the geometry changes fastest."""
    steps, decade = {0}, 1
    while decade <= limit:
        steps.update(step for step in (decade, 3 * decade) if step <= limit)
        decade *= 10
    return steps


@dataclass(frozen=True)
class StepSchedule:
    """Step 0, then every `every_n_steps` steps, or with `log_spaced` the steps of `log_spaced_steps` instead."""

    every_n_steps: int = 100
    log_spaced: bool = False

    def __post_init__(self) -> None:
        if self.every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {self.every_n_steps}")

    def due(self, step: int, last_step: int | None = None) -> bool:
        """Whether `step` is on the schedule; `last_step` (the run's max_steps) is due whatever the spacing."""
        if step == last_step:
            return True
        if self.log_spaced:
            return step in log_spaced_steps(step)
        return step % self.every_n_steps == 0
