"""logger=csv (and every logger but none): each run's files in the job's folder, beside its log.

`<run>.history.csv`, the run's history so far (a resumed run's earlier epochs included), rewritten
atomically after every epoch, so that it can be followed while the run trains and survives a crash;
`<run>.curves.png`, its learning curves, drawn when it finishes.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.curves import History, curves_png, history_csv
from pipeline.fileio import write_atomic

if TYPE_CHECKING:
    from pipeline.predictions import Predictions
    from pipeline.training.specs import RunSpec


class RunFiles:
    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def _write(self, run: RunSpec, history: History) -> None:
        write_atomic(self.folder / f"{run.name}.history.csv", history_csv(history))

    def epoch_ended(self, run: RunSpec, history: History, **_: Any) -> None:
        self._write(run, history)

    def finished(self, run: RunSpec, preds: Predictions, **_: Any) -> None:
        if not preds.history:
            return
        self._write(run, preds.history)
        png = curves_png({run.name: preds.history}, run.name)
        if png:
            write_atomic(self.folder / f"{run.name}.curves.png", png)
