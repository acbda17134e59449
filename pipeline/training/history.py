"""A run's per-epoch history, read from fastai's Recorder as each epoch ends, and the fit's progress when
the output is not a terminal.

Each epoch that trained becomes one record: `fit` (0-based; fine_tune's frozen stage is fit 0), `epoch`
(0-based in that fit), `step` (0-based over the run's fits), `frozen` (the body was frozen), `train_loss`,
`valid_loss`, the recorder's metrics (`error_rate`, `error_rate_<extra target>`), `lr` (the head's mean
learning rate over the epoch's steps) and `seconds`. The records go into the prediction file
(Predictions.history) and the epoch_ended event; the epoch checkpoint keeps them (`checkpoint_state`),
so that a resumed run's history is whole: the checkpoint's epochs, then those trained since, each once.

In a terminal (or a Jupyter notebook) fastai's progress bars stay as they are. Elsewhere (a log file,
SLURM, a Kaggle session) the bars' redraws would fill the log with carriage returns: `plain_progress`
drops them and each epoch is one line of the log instead.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fastai.callback.core import Callback
    from fastai.learner import Learner

log = logging.getLogger(__name__)


def interactive() -> bool:
    """Whether fastai's progress bars can be drawn: stdout is a terminal, or this is a Jupyter notebook."""
    from fastcore.imports import in_notebook

    return sys.stdout.isatty() or in_notebook()


def plain_progress(learn: Learner) -> None:
    """Outside a terminal: no progress bars (their redraws are carriage returns in a log) and no row
    printed by the Recorder; the run's RunHistory logs one line per epoch instead."""
    from fastai.callback.progress import ProgressCallback
    from fastcore.basics import noop

    learn.remove_cb(ProgressCallback)
    learn.logger = noop


def epoch_line(run_name: str, record: dict[str, Any], n_epochs: int) -> str:
    """One epoch as one log line: 'run r: epoch 2/3 (fit 1) train_loss 0.61 valid_loss 0.52 error_rate ...'."""
    figures = " ".join(
        f"{k} {v:.4g}" if isinstance(v, float) else f"{k} -"
        for k, v in record.items()
        if k not in ("fit", "epoch", "step", "frozen", "seconds")
    )
    frozen = ", frozen" if record["frozen"] else ""
    where = f"epoch {record['step'] + 1}/{n_epochs} (fit {record['fit']}{frozen})"
    return f"run {run_name}: {where} {figures} in {record['seconds']:.1f} s"


def _value(value: Any) -> float | None:
    return None if value is None else float(value)


def run_history(run_name: str, n_epochs: int, plain: bool) -> Callback:
    """The fastai callback keeping the run's history (`.records`), after the Recorder (50), before the
    epoch checkpoint (60) that saves it. `n_epochs`: the run's epochs over all its fits, for the log line;
    `plain`: log that line (plain_progress took the progress bars away)."""
    from fastai.callback.core import Callback

    class RunHistory(Callback):
        order = 55

        def __init__(self) -> None:
            self.records: list[dict[str, Any]] = []
            self.fit_index, self.offset, self.fit_epochs = -1, 0, 0
            self.fresh: dict[str, Any] | None = None  # the record of the epoch that just ended, if it trained

        def before_fit(self) -> None:
            self.fit_index += 1
            self.offset += self.fit_epochs  # the steps of the fits before this one
            self.fit_epochs = self.n_epoch

        def before_epoch(self) -> None:
            self.started, self.trained, self.fresh = time.perf_counter(), False, None
            self.first_lr = len(self.recorder.lrs)  # the lrs of this epoch's steps come after

        def after_train(self) -> None:
            self.trained = True

        def after_epoch(self) -> None:
            # no training phase: an epoch a resumed fit skips, or get_preds and validate (wrapped in epochs too)
            if not self.trained:
                return
            names = [n for n in self.recorder.metric_names if n not in ("epoch", "time")]
            values = dict(zip(names, map(_value, self.recorder.values[-1]), strict=False))
            lrs = self.recorder.lrs[self.first_lr :]
            record = {
                "fit": self.fit_index,
                "epoch": self.epoch,
                "step": self.offset + self.epoch,
                "frozen": bool(getattr(self.opt, "frozen_idx", 0)),
                **values,
                "lr": float(sum(lrs) / len(lrs)) if lrs else None,
                "seconds": time.perf_counter() - self.started,
            }
            # an epoch trained again (a crash between its record and its checkpoint) replaces the first
            self.records = [r for r in self.records if r["step"] != record["step"]] + [record]
            self.fresh = record
            if plain:
                log.info("%s", epoch_line(run_name, record, n_epochs))

        def checkpoint_state(self) -> dict[str, Any]:
            return {"records": self.records}

        def restore_checkpoint_state(self, state: dict[str, Any]) -> None:
            self.records = list(state["records"])

    return RunHistory()
