"""fastai item and batch transforms for a run."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fasttransform import Transform

    from pipeline.training.specs import RunSpec


def as_size(size: tuple[int, ...]) -> int | tuple[int, int]:
    """(n,) -> n (square), (h, w) -> (h, w), as fastai takes sizes."""
    return size[0] if len(size) == 1 else (size[0], size[1])


def item_tfms(run: RunSpec) -> list[Transform]:
    """Per-image resize on the CPU, so that images can be batched."""
    from fastai.vision.all import PadMode, Resize

    return [Resize(as_size(run.item_size), method=run.resize, pad_mode=PadMode.Zeros)]


def batch_tfms(run: RunSpec) -> list[Transform]:
    """fastai's standard augmentations on the batch (on the GPU when there is one)."""
    from fastai.vision.all import aug_transforms

    return aug_transforms(size=as_size(run.size), min_scale=run.min_scale)
