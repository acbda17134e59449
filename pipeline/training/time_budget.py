"""train.time_budget_h: stop a job cleanly at an epoch boundary before a session limit ends it.

Kaggle ends a notebook session after 12 hours and keeps nothing of a session it ends. With a budget,
a run stops after the last epoch that fits (its per-epoch checkpoint saved first), and no further run
of the job starts, so the next session resumes where this one stopped. A run stops only after an epoch
that was checkpointed, and every attempt trains at least one, so resuming always makes progress.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from pipeline.training.distributed import shared

if TYPE_CHECKING:
    from fastai.callback.core import Callback


class TimeBudgetSpent(Exception):
    """The fit was stopped by the time budget; the run has not finished."""


class TimeBudget:
    """The budget of one pipeline.train job, counted from its creation (None: no budget)."""

    def __init__(self, hours: float | None) -> None:
        self.hours = hours
        self.deadline = None if hours is None else time.monotonic() + hours * 3600
        self.longest_epoch_s = 0.0  # over every run of the job: the best guess for the next epoch
        self.trained_epochs = 0

    def spent(self) -> bool:
        """Whether another epoch (as long as the longest so far) would end past the deadline."""
        return self.deadline is not None and time.monotonic() + self.longest_epoch_s > self.deadline

    def allows_new_run(self) -> bool:
        """A run starts unless the budget is spent and this job already trained something."""
        return self.trained_epochs == 0 or not self.spent()

    def callback(self, final_fit: int) -> Callback:
        """Stops the fit after an epoch of fit number `final_fit` (fine_tune's unfrozen stage is fit 1,
        the one checkpointed) when the budget is spent, unless that epoch was the run's last. Runs after
        the EpochCheckpoint callback, so the epoch is saved before the fit is cancelled; fine_tune's
        frozen stage is never cut short, since nothing of it would be kept."""
        from fastai.callback.core import Callback, CancelFitException

        budget = self

        class StopAtTimeBudget(Callback):
            order = 70  # after EpochCheckpoint (60)

            def __init__(self) -> None:
                self.fit_index = -1
                self.stopped = False

            def before_fit(self) -> None:
                self.fit_index += 1

            def before_epoch(self) -> None:
                self.started, self.skipped = time.monotonic(), False

            def after_cancel_epoch(self) -> None:  # an epoch a resumed fit skips (SkipToEpoch)
                self.skipped = True

            def after_epoch(self) -> None:
                if self.skipped:
                    return
                budget.trained_epochs += 1
                budget.longest_epoch_s = max(budget.longest_epoch_s, time.monotonic() - self.started)
                # rank 0's clock decides for every rank of a group: they stop together
                if self.fit_index == final_fit and self.epoch + 1 < self.n_epoch and shared(budget.spent):
                    self.stopped = True
                    raise CancelFitException

        return StopAtTimeBudget()
