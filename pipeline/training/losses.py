"""The loss registry (conf/loss/): each option's schema, its fastai loss and a line of description.
`base_loss(recipe.loss)` is a new loss for one target (pipeline.training.targets sums one per target)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pipeline.config.ranges import Range, ranged
from pipeline.config.recipe import LossConfig
from pipeline.registry import Registry

LOSSES: Registry[Callable[[dict[str, Any]], Any]] = Registry("loss", where="conf/loss/", group="loss")


@dataclass
class CrossEntropyConfig(LossConfig):
    name: str = "cross_entropy"


@dataclass
class LabelSmoothingConfig(LossConfig):
    name: str = "label_smoothing"
    eps: float = ranged(0.1, Range(0, 1, high_open=True))


def base_loss(chosen: dict[str, Any]) -> Any:
    """A new instance of the chosen loss for one target (fastai's flat losses: activation softmax)."""
    return LOSSES[chosen["name"]].build(chosen)


@LOSSES.register("cross_entropy", "cross-entropy on the label (the reference recipe's)", CrossEntropyConfig)
def _cross_entropy(chosen: dict[str, Any]) -> Any:
    from fastai.losses import CrossEntropyLossFlat

    return CrossEntropyLossFlat()


def _ls_tag(chosen: dict[str, Any]) -> str:
    return f"ls{chosen['eps']:g}"


@LOSSES.register(
    "label_smoothing", "cross-entropy on 1 - eps for the label, eps spread over all", LabelSmoothingConfig, tag=_ls_tag
)
def _label_smoothing(chosen: dict[str, Any]) -> Any:
    from fastai.losses import LabelSmoothingCrossEntropyFlat

    return LabelSmoothingCrossEntropyFlat(eps=chosen["eps"])
