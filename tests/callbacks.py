"""fastai callbacks that tests inject through train.callbacks, to make real runs fail in known ways, or add to a
Learner to see what its fit did."""

import glob
from pathlib import Path

import torch
from fastai.callback.core import Callback


class OutOfMemory(Callback):
    """Raises CUDA's out-of-memory error at every training batch, on every rank: a micro-batch that never fits."""

    def before_batch(self) -> None:
        if self.training and self.fires():
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected by the test)")

    def fires(self) -> bool:
        return True


class OutOfMemoryOnce(OutOfMemory):
    """Raises CUDA's out-of-memory error at the first training batch of the first attempt only
    (`flag` marks that it fired), as a GPU that cannot hold the micro-batch would."""

    def __init__(self, flag: str) -> None:
        self.flag = Path(flag)

    def fires(self) -> bool:
        if self.flag.exists():
            return False
        self.flag.touch()
        return True


class SlowBatches(Callback):
    """Sleeps after every training batch, so a test can interrupt a run while it trains. With `after`, only
    once a file matching that pattern exists (a checkpoint): the stretch the test interrupts is slow, the
    rest of the job runs at full speed."""

    def __init__(self, seconds: float, after: str | None = None) -> None:
        self.seconds, self.after = seconds, after

    def after_batch(self) -> None:
        import time

        if self.training and (self.after is None or glob.glob(self.after)):
            time.sleep(self.seconds)


class FailOnceCheckpointed(Callback):
    """Fails the run at the end of the first epoch whose checkpoint is saved (a file matching `pattern`
    exists), once (`flag` marks that it fired): an interruption the same command then resumes from."""

    order = 70  # after the checkpoint callback (60) has saved the epoch

    def __init__(self, pattern: str, flag: str) -> None:
        self.pattern, self.flag = pattern, Path(flag)

    def after_epoch(self) -> None:
        if not self.flag.exists() and glob.glob(self.pattern):
            self.flag.touch()
            raise RuntimeError("interrupted by the test")


class LogBatches(Callback):
    """Appends a line to `path` for every training batch: the head's learning rate."""

    order = 70  # after the ParamScheduler (60) has set the batch's learning rate

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def before_batch(self) -> None:
        if self.training:
            with self.path.open("a") as f:
                f.write(f"{float(self.opt.hypers[-1]['lr'])!r}\n")


class Deterministic(Callback):
    """Training whose only randomness is the data's order, so that a DDP run's steps equal one process's
    up to float rounding: no augmentation (the training batch transforms less the random ones), dropout off,
    batch norm on its running statistics (a fixed affine per image, whatever the batch holds)."""

    order = 1  # after TrainEvalCallback (-10) has put the model in training mode

    def before_fit(self) -> None:
        from fastai.vision.augment import RandTransform
        from fasttransform import Pipeline

        train = self.learn.dls.train
        train.after_batch = Pipeline([t for t in train.after_batch.fs if not isinstance(t, RandTransform)])

    def before_train(self) -> None:
        for module in self.learn.model.modules():
            if isinstance(module, (torch.nn.modules.batchnorm._BatchNorm, torch.nn.Dropout)):
                module.eval()


class SaveWeights(Callback):
    """Saves the model's weights to `path` at the end of every fit, from rank 0 of a DDP group."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def after_fit(self) -> None:
        import os

        if os.environ.get("RANK", "0") == "0":
            torch.save(self.learn.model.state_dict(), self.path)


class StepLog(Callback):
    """Records each optimizer step: taken, or skipped by fp16's gradient scaler while it finds its scale, and the
    largest gradient of the model's first parameter (the body's stem) and its last (the head's). With `stop`, the
    fit ends after the first step taken, before validation. `str()` says what the fit did, for a failure's message."""

    def __init__(self, stop: bool = False) -> None:
        self.stop, self.steps, self.batch_shape = stop, [], None

    def after_step(self) -> None:
        from fastai.callback.core import CancelFitException

        from pipeline.training.learner import step_taken

        params = list(self.learn.model.parameters())
        grads = [None if p.grad is None else float(p.grad.abs().max()) for p in (params[0], params[-1])]
        self.steps.append((step_taken(self.learn), *grads))
        self.batch_shape = tuple(self.xb[0].shape)
        if self.stop and self.steps[-1][0]:
            raise CancelFitException

    def __str__(self) -> str:
        taken = [(stem, head) for ok, stem, head in self.steps if ok]
        return f"{len(taken)} of {len(self.steps)} steps taken; (stem, head) largest gradients of those: {taken}"
