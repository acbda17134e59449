"""One run's fastai DataLoaders, built top to bottom in one place.

The fast paths (conf/perf/default.yaml) are choices made here, once per run: where images come from
(the decoded-image cache or fastai's ImageBlock), which batch augmentation runs (fused into one
resample or fastai's own), and how many workers load them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from pipeline.errors import PipelineError

if TYPE_CHECKING:
    from fastai.data.block import TransformBlock
    from fastai.data.core import DataLoaders
    from fasttransform import Transform

    from pipeline.config import PerfConfig
    from pipeline.data.competition import Competition
    from pipeline.data.soft_targets import SoftTargets
    from pipeline.data.train_csv import AuxTarget
    from pipeline.training.specs import RunSpec


def make_dataloaders(
    comp: Competition,
    run: RunSpec,
    *,
    valid_idx: Sequence[int],
    num_workers: int | None,
    device: str,
    perf: PerfConfig,
    aux: Sequence[AuxTarget] = (),
    soft: SoftTargets | None = None,
) -> DataLoaders:
    """fastai DataLoaders over the training images, `valid_idx` (see pipeline.data.splits) held out.

    Batches hold the run's micro-batch; GradientAccumulation makes `run.batch_size` one step.
    `perf`: the perf config group; with every switch off this is plain fastai. `aux`: extra targets
    (pipeline.data.train_csv), each one more category block after the label's. `soft`: pseudo-labelled test
    images, which join training, and the two probability targets after the categories
    (pipeline.data.soft_targets). Training images data.exclude names (comp.excluded) train not."""
    from fastai.vision.all import CategoryBlock, DataBlock, IndexSplitter, TransformBlock, parent_label

    from pipeline.data.soft_targets import run_items
    from pipeline.data.transforms import item_tfms

    items, valid_idx = run_items(comp, valid_idx, list(soft.pseudo) if soft else [])
    n_train = len(items) - len(valid_idx)
    if n_train < run.batch_size:
        raise PipelineError(
            f"{n_train} training images are fewer than one batch of {run.batch_size}: lower model.batch_size"
        )
    label, *probabilities = soft.getters() if soft else [parent_label]
    get_y = [label, *aux, *probabilities]
    block = DataBlock(
        blocks=(
            image_block(comp, run, perf),
            CategoryBlock(vocab=comp.vocab),
            *(CategoryBlock(vocab=t.vocab) for t in aux),
            *([TransformBlock, TransformBlock] if soft else []),
        ),
        splitter=IndexSplitter(valid_idx),
        get_y=get_y if len(get_y) > 1 else get_y[0],
        n_inp=1,
        item_tfms=item_tfms(run),
        batch_tfms=augmentations(run, perf),
    )
    workers = loader_workers(num_workers, device, perf)
    kwargs = {} if workers is None else {"num_workers": workers}
    return block.dataloaders(items, bs=run.micro_batch, device=device, **kwargs)


def image_block(comp: Competition, run: RunSpec, perf: PerfConfig) -> TransformBlock:
    """fastai's ImageBlock, reading from the decoded-image cache when perf.cache is on."""
    from fastai.vision.all import ImageBlock, IntToFloatTensor, TransformBlock

    if not perf.cache:
        return ImageBlock
    from pipeline.data.image_cache import open_cache

    cache = open_cache(perf.cache_dir, run, [*comp.train_files, *comp.test_files])
    return TransformBlock(type_tfms=cache, batch_tfms=IntToFloatTensor)


def augmentations(run: RunSpec, perf: PerfConfig) -> list[Transform]:
    """The run's batch augmentations, fused into one resample when perf.fused_augment is on."""
    from pipeline.data.transforms import batch_tfms

    if not perf.fused_augment:
        return batch_tfms(run)
    from pipeline.data.augment import fuse_affine_and_crop

    return fuse_affine_and_crop(batch_tfms(run))


def loader_workers(num_workers: int | None, device: str, perf: PerfConfig) -> int | None:
    """data.num_workers, or when null: on CPU with cached images none (the model's threads use every
    core; workers would only add inter-process copies), else fastai's default (None)."""
    if num_workers is not None:
        return num_workers
    return 0 if device == "cpu" and perf.cache else None
