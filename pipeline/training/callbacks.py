"""The recipe's fastai callbacks that fastai does not ship as a run needs them: weight averaging, and
MixUp and CutMix for batches with several targets, probability targets among them (pipeline.training.recipe
chooses them).

Imported only when a run asks for one of them: it imports fastai and timm at the top.
"""

from __future__ import annotations

from typing import Any

import torch
from fastai.callback.core import Callback
from fastai.callback.mixup import CutMix, MixUp
from fastai.torch_core import find_bs, unsqueeze
from fastcore.foundation import L
from timm.utils import ModelEmaV3


class WeightAverage(Callback):
    """timm's ModelEmaV3 (an exponential moving average of the weights), updated after every optimizer
    step and swapped in for every validation pass, so the recorded error, get_preds, TTA and the saved
    predictions all use the averaged weights. The average lives across fits (fine_tune's frozen and
    unfrozen stages are one run), and its state is saved with each epoch checkpoint
    (pipeline.training.checkpoints), so a resumed run keeps it."""

    order = 5  # before the Recorder (50) and TTA's callbacks see a validation batch

    def __init__(self, decay: float, warmup: bool) -> None:
        self.decay, self.warmup = decay, warmup
        self.ema: ModelEmaV3 | None = None
        self.steps = 0

    def _start(self) -> None:
        if self.ema is None:
            self.ema = ModelEmaV3(self.learn.model, decay=self.decay, use_warmup=self.warmup)

    def before_fit(self) -> None:
        self._start()

    def after_step(self) -> None:  # after a real optimizer step: GradientAccumulation's skipped ones never get here
        self.steps += 1
        self.ema.update(self.learn.model, step=self.steps)

    @torch.no_grad()
    def _swap(self) -> None:
        if self.ema is None:  # validation before any fit: nothing averaged yet
            return
        for mine, averaged in zip(
            self.learn.model.state_dict().values(), self.ema.module.state_dict().values(), strict=True
        ):
            if mine.is_floating_point():
                kept = mine.clone()
                mine.copy_(averaged)
                averaged.copy_(kept)

    def before_validate(self) -> None:
        self._swap()

    def after_validate(self) -> None:
        self._swap()

    def checkpoint_state(self) -> dict[str, Any]:
        return {"weights": self.ema.module.state_dict(), "steps": self.steps}

    def restore_checkpoint_state(self, state: dict[str, Any]) -> None:
        self._start()
        self.ema.module.load_state_dict(state["weights"])
        self.steps = int(state["steps"])


def mix_probabilities(cb: MixUp | CutMix, weight: torch.Tensor) -> None:
    """Probability targets (pseudo-labels, a teacher's: float, after the categories) mixed as the images
    are, in both of MixUp's target sets: the loss, mixed over the categories by fastai, then sees the mixed
    probabilities on either side (the label's part is linear in them, the KL term is not)."""
    mixed = [torch.lerp(y1, y, weight) if y.is_floating_point() else None for y1, y in zip(cb.yb1, cb.yb, strict=True)]
    cb.learn.yb = tuple(y if m is None else m for y, m in zip(cb.yb, mixed, strict=True))
    cb.yb1 = tuple(y1 if m is None else m for y1, m in zip(cb.yb1, mixed, strict=True))


class MixUpTargets(MixUp):
    """fastai's MixUp for batches with several targets (lesson 7's disease and variety): fastai 2.8 takes
    the batch size from a single target. Same draws; every target's loss is mixed (the loss has y_int), and
    probability targets are mixed themselves (mix_probabilities)."""

    def before_batch(self) -> None:
        bs = find_bs(self.yb)
        lam = self.distrib.sample((bs,)).squeeze().to(self.x.device)
        self.lam = torch.stack([lam, 1 - lam], 1).max(1)[0]
        shuffle = torch.randperm(bs).to(self.x.device)
        xb1, self.yb1 = tuple(L(self.xb).itemgot(shuffle)), tuple(L(self.yb).itemgot(shuffle))
        weight = unsqueeze(self.lam, n=len(self.x.size()) - 1)
        self.learn.xb = tuple(L(xb1, self.xb).map_zip(torch.lerp, weight=weight))
        mix_probabilities(self, self.lam[:, None])


class CutMixTargets(CutMix):
    """fastai's CutMix for batches with several targets: fastai 2.8 shuffles only a single target.
    Probability targets are mixed by the pasted area (mix_probabilities)."""

    def before_batch(self) -> None:
        _, _, height, width = self.x.size()
        self.lam = self.distrib.sample((1,)).to(self.x.device)
        shuffle = torch.randperm(find_bs(self.yb)).to(self.x.device)
        xb1, self.yb1 = self.x[shuffle], tuple(y[shuffle] for y in self.yb)
        x1, y1, x2, y2 = self.rand_bbox(width, height, self.lam)
        self.learn.xb[0][..., y1:y2, x1:x2] = xb1[..., y1:y2, x1:x2]
        self.lam = 1 - ((x2 - x1) * (y2 - y1)) / float(width * height)
        mix_probabilities(self, self.lam)
