"""logger=tensorboard: each run's figures as TensorBoard scalars, in `<logger.log_dir>/<run>-<run hash>/`.

One folder per run and run hash (as its checkpoint), so that `tensorboard --logdir <log_dir>` shows every
run of every job side by side, and a run resumed by a later job writes on in the same folder: its first
epoch there purges what an earlier attempt logged from that step on (SummaryWriter's purge_step), so each
step shows once. Scalars: the history's figures per epoch (train_loss, valid_loss, error_rate[_<target>],
lr, seconds) and, at the end, final/valid_error, final/valid_error_tta, final/valid_error_<target>,
final/minutes. Written by torch.utils.tensorboard (the tensorboard package), flushed after every epoch.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.curves import History, run_minutes
from pipeline.training.loggers.guarded import Guarded

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

    from pipeline.predictions import Predictions
    from pipeline.training.specs import RunSpec

NOT_SCALARS = ("fit", "epoch", "step", "frozen")


class TensorBoardLogger(Guarded):
    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.what = f"logger=tensorboard ({log_dir})"
        self.folders: dict[str, Path] = {}
        self.writers: dict[str, SummaryWriter] = {}

    def started(self, run: RunSpec, run_hash: str, **_: Any) -> None:
        self.folders[run.name] = self.log_dir / f"{run.name}-{run_hash}"

    def epoch_ended(self, run: RunSpec, step: int, history: History, **_: Any) -> None:
        if run.name in self.folders:
            self.guarded(f"logging an epoch of {run.name}", lambda: self._epoch(run.name, step, history[-1]))

    def _writer(self, name: str, purge_step: int | None) -> SummaryWriter:
        """The run's writer, made at its first epoch in this job: what an earlier attempt logged from that
        step on is purged."""
        if name not in self.writers:
            from torch.utils.tensorboard import SummaryWriter

            self.writers[name] = SummaryWriter(str(self.folders[name]), purge_step=purge_step)
        return self.writers[name]

    def _epoch(self, name: str, step: int, record: dict[str, Any]) -> None:
        writer = self._writer(name, step)
        for key, value in record.items():
            if key not in NOT_SCALARS and value is not None:
                writer.add_scalar(key, float(value), step)
        writer.flush()

    def finished(self, run: RunSpec, preds: Predictions, **_: Any) -> None:
        if run.name in self.folders:  # a run resumed after its last epoch has no writer yet
            final = preds.metrics | {"minutes": run_minutes(preds)}
            step = preds.history[-1]["step"] if preds.history else 0
            self.guarded(f"finishing {run.name}", lambda: self._close(run.name, final, step))

    def _close(self, name: str, final: dict[str, float], step: int) -> None:
        writer = self._writer(name, None)
        for key, value in final.items():
            writer.add_scalar(f"final/{key}", float(value), step)
        writer.close()
        del self.writers[name], self.folders[name]

    def failed(self, run: RunSpec, **_: Any) -> None:
        self.folders.pop(run.name, None)
        if (writer := self.writers.pop(run.name, None)) is not None:
            self.guarded(f"closing {run.name}", writer.close)
