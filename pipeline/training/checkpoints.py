"""Per-epoch checkpoints, so that an interrupted long run resumes at the epoch it reached.

A run's folder is keyed by its identity hash, so a checkpoint is only ever resumed by the same run.
It holds `run.json` (what a run drew once and must keep when resumed: the split seed when none is
configured, so it keeps its validation set; the learning rate lr_find chose), `epoch<N>.pth` (model and
optimizer after N epochs of the run's last fit) and, for callbacks with state of their own (the weight
average), `epoch<N>.callbacks.pth`, written first; each file atomically. In a group of DDP ranks
(pipeline.training.distributed) rank 0 writes them and every rank resumes from them.
"""

from __future__ import annotations

import json
import re
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.fileio import atomic_path, write_atomic
from pipeline.training import distributed

if TYPE_CHECKING:
    from fastai.callback.core import Callback


class RunCheckpoint:
    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def split_seed(self, configured: int | None) -> int:
        """The configured seed, else the one drawn when this run first started (drawn now if new)."""
        if configured is not None:
            return configured
        return int(self.remember("split_seed", lambda: secrets.randbits(31)))

    def remember(self, key: str, make: Callable[[], Any]) -> Any:
        """The value kept under `key` in run.json; made (and kept) the first time."""
        meta = self.folder / "run.json"
        kept = json.loads(meta.read_text()) if meta.is_file() else {}
        if key not in kept:
            kept[key] = make()
            write_atomic(meta, json.dumps(kept))
        return kept[key]

    def latest(self) -> tuple[Path, int] | None:
        """The newest epoch checkpoint and how many epochs it holds."""
        found = [
            (p, int(m.group(1)))
            for p in self.folder.glob("epoch*.pth")
            if (m := re.fullmatch(r"epoch(\d+)\.pth", p.name))
        ]
        return max(found, key=lambda item: item[1]) if found else None

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

    def callback(self, final_fit: int) -> Callback:
        """A fastai callback saving after every epoch of fit number `final_fit` (0-based; fine_tune's
        unfrozen stage is fit 1), and restoring the newest checkpoint when that fit starts. Callbacks
        with `checkpoint_state()` and `restore_checkpoint_state(state)` have their state saved and restored too."""
        import torch
        from fastai.callback.core import Callback
        from fastai.learner import load_model, save_model

        checkpoint = self

        class EpochCheckpoint(Callback):
            order = 60  # after the Recorder, so an epoch is saved only once it completed

            def stateful(self) -> dict[str, Any]:
                return {cb.name: cb for cb in self.learn.cbs if hasattr(cb, "checkpoint_state")}

            def before_fit(self) -> None:
                self.fit_index = getattr(self, "fit_index", -1) + 1
                self.saved = 0
                if self.fit_index == final_fit and (found := checkpoint.latest()):
                    load_model(found[0], self.learn.model, self.learn.opt, with_opt=True, device=self.dls.device)
                    if (states := found[0].with_suffix(".callbacks.pth")).is_file():
                        kept = torch.load(states, map_location=self.dls.device, weights_only=True)
                        for name, cb in self.stateful().items():
                            if name in kept:  # a checkpoint from before the callback kept a state
                                cb.restore_checkpoint_state(kept[name])
                    self.saved = found[1]

            def after_epoch(self) -> None:
                done = self.epoch + 1
                if self.fit_index != final_fit or done <= self.saved:  # skipped epochs of a resumed fit
                    return
                self.saved = done
                if not distributed.WORLD.main:  # rank 0 writes what every rank of a group holds alike
                    return
                keep = {f"epoch{done}.pth", f"epoch{done}.callbacks.pth"}
                if states := {name: cb.checkpoint_state() for name, cb in self.stateful().items()}:
                    with atomic_path(checkpoint.folder / f"epoch{done}.callbacks.pth") as tmp:
                        torch.save(states, tmp)
                with atomic_path(checkpoint.folder / f"epoch{done}.pth") as tmp:
                    save_model(tmp, self.learn.model, self.learn.opt, with_opt=True)
                for old in checkpoint.folder.glob("epoch*.pth"):
                    if old.name not in keep:
                        old.unlink()

        return EpochCheckpoint()
