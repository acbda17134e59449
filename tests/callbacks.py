"""fastai callbacks that tests inject through train.callbacks, to make real runs fail in known ways."""

from pathlib import Path

import torch
from fastai.callback.core import Callback


class OutOfMemoryOnce(Callback):
    """Raises CUDA's out-of-memory error at the first training batch of the first attempt only
    (`flag` marks that it fired), as a GPU that cannot hold the micro-batch would."""

    def __init__(self, flag: str) -> None:
        self.flag = Path(flag)

    def before_batch(self) -> None:
        if self.training and not self.flag.exists():
            self.flag.touch()
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected by the test)")


class SlowBatches(Callback):
    """Sleeps after every training batch, so a test can interrupt a run while it trains."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def after_batch(self) -> None:
        import time

        if self.training:
            time.sleep(self.seconds)
