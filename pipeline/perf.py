"""The fast paths' choices (conf/perf/default.yaml), in one place: which image loader, batch
augmentations, worker count and memory format a run uses on its device."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fastai.data.block import TransformBlock
    from fasttransform import Transform

    from pipeline.data import Competition
    from pipeline.runs import RunSpec


def image_block(comp: Competition, run: RunSpec, perf: Any) -> TransformBlock:
    """fastai's ImageBlock, reading from the decoded-image cache when perf.cache is on."""
    from fastai.vision.all import ImageBlock, IntToFloatTensor, TransformBlock

    if not perf.cache:
        return ImageBlock
    from pipeline.image_cache import open_cache

    cache = open_cache(perf.cache_dir, run, [*comp.train_files, *comp.test_files])
    return TransformBlock(type_tfms=cache, batch_tfms=IntToFloatTensor)


def augmentations(run: RunSpec, perf: Any) -> list[Transform]:
    """The run's batch augmentations, fused into one resample when perf.fused_augment is on."""
    from pipeline.transforms import batch_tfms

    if not perf.fused_augment:
        return batch_tfms(run)
    from pipeline.fast_aug import fuse_affine_and_crop

    return fuse_affine_and_crop(batch_tfms(run))


def workers(num_workers: int | None, device: str, perf: Any) -> int | None:
    """data.num_workers, or when null: on CPU with cached images none (the model's threads use every
    core; workers would only add inter-process copies), else fastai's default (None)."""
    if num_workers is not None:
        return num_workers
    return 0 if device == "cpu" and perf.cache else None


def channels_last(perf: Any, device: str) -> bool:
    """perf.channels_last: auto means on CPU only, where it measured 1.7x; CUDA keeps its fp16 path as is."""
    choice = getattr(perf.channels_last, "value", perf.channels_last)
    return choice == "on" or (choice == "auto" and device == "cpu")
