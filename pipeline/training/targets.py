"""Lesson 7's multi-target model: one output slice per target, a loss and an error rate per target.

The model's output holds the main target's classes (the label folders) first, then each extra
target's (data.aux_targets, pipeline.data.train_csv). The loss is the weighted sum of the recipe's
loss on each slice. As fastai's own loss classes do, the loss object carries `activation` (softmax
over the main slice) and `decodes`, so Learner.get_preds, TTA and predict give the main target's
probabilities only: what the prediction file, the blend and the submission hold.

Data with probability targets (pseudo-labels, a distillation teacher: pipeline.data.soft_targets) carries
them after the categories: the label, each extra target, then the target probabilities and the teacher's.
They go to the main target's loss (losses.SoftTargetLoss); metrics and outputs read the categories alone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import accumulate
from typing import Any

import torch


def slices(sizes: Sequence[int]) -> list[slice]:
    """[10, 10] -> [slice(0, 10), slice(10, 20)]: each target's columns of the output."""
    ends = list(accumulate(sizes))
    return [slice(end - size, end) for size, end in zip(sizes, ends, strict=True)]


class MultiTargetLoss:
    """sum_i weight_i * loss_i(output[:, slice_i], target_i). `reduction` ('mean' or 'none', set by
    fastai's NoneReduce) and `y_int` let MixUp and CutMix mix the loss per image as with one target.
    `main`: the main target's loss when the data carries probability targets after the categories, which
    it is given after the label."""

    y_int = True

    def __init__(
        self, sizes: Sequence[int], weights: Sequence[float], make_loss: Callable[[], Any], main: Any = None
    ) -> None:
        self.slices = slices(sizes)
        self.weights = list(weights)
        self.losses = [make_loss() if main is None else main, *(make_loss() for _ in sizes[1:])]
        self.reduction = "mean"

    def __call__(self, output: torch.Tensor, *targets: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        categories, soft = targets[: len(self.slices)], targets[len(self.slices) :]
        total = 0
        parts = zip(self.slices, self.weights, self.losses, categories, strict=True)
        for i, (part, weight, loss, target) in enumerate(parts):
            loss.reduction = self.reduction
            total = total + weight * loss(output[:, part], target, *(soft if i == 0 else ()), **kwargs)
        return total

    def activation(self, output: torch.Tensor) -> torch.Tensor:
        return torch.softmax(output[:, self.slices[0]], dim=-1)

    def decodes(self, output: torch.Tensor) -> torch.Tensor:
        return output[:, self.slices[0]].argmax(dim=-1)


def error_rates(names: Sequence[str], sizes: Sequence[int]) -> list[Callable[..., torch.Tensor]]:
    """One fastai metric per target: `error_rate` for the main one (the name the recorder is read by),
    `error_rate_<name>` for each extra one."""

    def metric(i: int, name: str) -> Callable[..., torch.Tensor]:
        part = slices(sizes)[i]

        def error(output: torch.Tensor, *targets: torch.Tensor) -> torch.Tensor:
            return (output[:, part].argmax(dim=-1) != targets[i]).float().mean()

        error.__name__ = "error_rate" if i == 0 else f"error_rate_{name}"
        return error

    return [metric(i, name) for i, name in enumerate(names)]


def split_outputs(
    raw: torch.Tensor, targets: torch.Tensor | Sequence[torch.Tensor], sizes: Sequence[int]
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """get_preds' raw outputs and targets (a tensor, or one per target) -> per target (softmax
    probabilities over its slice, float32; its targets). Probability targets after them are left out."""
    targets = [targets] if isinstance(targets, torch.Tensor) else list(targets)[: len(sizes)]
    return [
        (torch.softmax(raw[:, part].float(), dim=-1), target.long())
        for part, target in zip(slices(sizes), targets, strict=True)
    ]
