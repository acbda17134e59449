"""The loss registry (conf/loss/): each option's schema, its fastai loss and a line of description.
`base_loss(recipe.loss)` is a new loss for one target (pipeline.training.targets sums one per target).

A builder takes the option's values and `soft`: whether the data carries probability targets beside the
label (pipeline.data.soft_targets: a pseudo-labelled run's, a distilled student's). Then its loss is a
`SoftTargetLoss`, called with the label, the target probabilities and the teacher's probabilities.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from pipeline.config.ranges import FRACTION, POSITIVE, Range, ranged
from pipeline.config.recipe import LossConfig
from pipeline.registry import Registry

LOSSES: Registry[Callable[[dict[str, Any], bool], Any]] = Registry("loss", where="conf/loss/", group="loss")


@dataclass
class CrossEntropyConfig(LossConfig):
    name: str = "cross_entropy"


@dataclass
class LabelSmoothingConfig(LossConfig):
    name: str = "label_smoothing"
    eps: float = ranged(0.1, Range(0, 1, high_open=True))


@dataclass
class DistillConfig(LossConfig):
    name: str = "distill"
    teacher: str | None = None  # a blend's CSV; its probabilities file lies beside it (pipeline.blend_file)
    # the KL term's weight, the label's cross-entropy gets 1 - alpha: Plant Pathology 2020's winner's 30% / 70%
    alpha: float = ranged(0.3, FRACTION)
    temperature: float = ranged(1.0, POSITIVE)


def base_loss(chosen: dict[str, Any], soft: bool = False) -> Any:
    """A new instance of the chosen loss for one target (fastai's flat losses: activation softmax); with
    `soft`, its SoftTargetLoss for the main target of data that carries probability targets."""
    return LOSSES[chosen["name"]].build(chosen, soft)


class SoftTargetLoss:
    """Per image: (1 - a) * cross-entropy against the target probabilities + a * T^2 * KL(teacher || softmax
    of output / T), Hinton's distillation, with a = alpha where the image has teacher probabilities and 0
    where it has none (a zero row: validation images, whose loss is so the label's cross-entropy alone,
    comparable with a run trained on labels only). The target probabilities are the label's one-hot row, or
    a pseudo-labelled test image's blend probabilities; `eps` smooths them as label smoothing does.

    Every target is linear in the images MixUp or CutMix blends: pipeline.training.callbacks mixes the
    probabilities themselves, and fastai mixes this loss over the labels (y_int), as for one target."""

    y_int = True

    def __init__(self, eps: float = 0.0, alpha: float = 0.0, temperature: float = 1.0) -> None:
        self.eps, self.alpha, self.temperature = eps, alpha, temperature
        self.reduction = "mean"

    def __call__(self, output: torch.Tensor, label: torch.Tensor, probs: torch.Tensor, teacher: torch.Tensor) -> Any:
        logp = F.log_softmax(output.float(), dim=-1)
        loss = -(probs * logp).sum(-1)
        if self.eps:
            loss = (1 - self.eps) * loss - self.eps * logp.mean(-1)
        if self.alpha:
            t = self.temperature
            kl = F.kl_div(F.log_softmax(output.float() / t, dim=-1), teacher, reduction="none").sum(-1)
            taught = teacher.sum(-1) > 0
            loss = torch.where(taught, (1 - self.alpha) * loss + self.alpha * t * t * kl, loss)
        return loss.mean() if self.reduction == "mean" else loss.sum() if self.reduction == "sum" else loss


@LOSSES.register("cross_entropy", "cross-entropy on the label (the reference recipe's)", CrossEntropyConfig)
def _cross_entropy(chosen: dict[str, Any], soft: bool) -> Any:
    from fastai.losses import CrossEntropyLossFlat

    return SoftTargetLoss() if soft else CrossEntropyLossFlat()


def _ls_tag(chosen: dict[str, Any]) -> str:
    return f"ls{chosen['eps']:g}"


@LOSSES.register(
    "label_smoothing", "cross-entropy on 1 - eps for the label, eps spread over all", LabelSmoothingConfig, tag=_ls_tag
)
def _label_smoothing(chosen: dict[str, Any], soft: bool) -> Any:
    from fastai.losses import LabelSmoothingCrossEntropyFlat

    return SoftTargetLoss(eps=chosen["eps"]) if soft else LabelSmoothingCrossEntropyFlat(eps=chosen["eps"])


def _kd_tag(chosen: dict[str, Any]) -> str:
    """_kd, with the hyper-parameters that differ from the defaults (_kd-alpha0.5-temperature2); the
    teacher is named by the prediction file's `teacher` record and the run hash, not the run name."""
    changed = LOSSES["distill"].changed(chosen)
    return "kd" + "".join(f"-{k}{v:g}" for k, v in changed.items() if k != "teacher")


@LOSSES.register(
    "distill",
    "a student: cross-entropy on the label mixed (alpha) with KL to a blend's out-of-fold probabilities at temperature",
    DistillConfig,
    tag=_kd_tag,
)
def _distill(chosen: dict[str, Any], soft: bool) -> Any:
    from fastai.losses import CrossEntropyLossFlat

    if soft:
        return SoftTargetLoss(alpha=chosen["alpha"], temperature=chosen["temperature"])
    return CrossEntropyLossFlat()  # an extra target (data.aux_targets): the teacher has no probabilities for it
