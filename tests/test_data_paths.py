"""The fast paths (conf/perf/) give the plain path's results: cached images pixel for pixel, the fused
augmentation exactly in validation and within interpolation in training, one-load TTA as Learner.tta.
Real Paddy photos and a real tf_efficientnet_lite0; no timing here (the benchmark measures speed)."""

import os
import random
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.data.image_cache import cache_key, open_cache, resize_is_deterministic
from tests.conftest import DEVICE, PADDY_SAMPLE, compose
from tests.factories import make_run

RUN = make_run(resize="squish", item_size=(96,), size=(32,), accum=1, batch_size=8)


@pytest.fixture
def photos(tmp_path):
    """Four real 480x640 photos, copied so that tests may change them."""
    if not PADDY_SAMPLE.is_dir():
        pytest.skip("no paddy sample")
    out = []
    for i, src in enumerate(sorted((PADDY_SAMPLE / "train_images").glob("*/*.jpg"))[:4]):
        out.append(tmp_path / "img" / f"{i}.jpg")
        out[-1].parent.mkdir(exist_ok=True)
        shutil.copy(src, out[-1])
    return out


def plain(path, run):
    """The plain path: fastai's PILImage.create and the run's Resize, in training mode."""
    from fastai.vision.core import PILImage

    from pipeline.data.transforms import item_tfms

    (resize,) = item_tfms(run)
    return np.asarray(resize(PILImage.create(path), split_idx=0))


@pytest.mark.parametrize(
    ("resize", "item_size"), [("squish", (96,)), ("crop", (640, 480)), ("pad", (64, 48)), ("squish", (40, 72))]
)
def test_cached_images_equal_the_plain_path_pixel_for_pixel(photos, tmp_path, resize, item_size):
    run = replace(RUN, resize=resize, item_size=item_size)
    cache = open_cache(tmp_path / "cache", run, photos)
    assert len(cache.rows) == len(photos)
    for p in photos:
        served = np.asarray(cache(p))
        np.testing.assert_array_equal(served, plain(p, run))


def test_random_crop_positions_are_not_cached(photos, tmp_path):
    landscape = tmp_path / "landscape.jpg"
    Image.open(photos[0]).rotate(90, expand=True).save(landscape)  # 640 wide x 480 high
    run = replace(RUN, resize="crop", item_size=(640, 480))
    assert not resize_is_deterministic((640, 480), "crop", (640, 480))
    assert resize_is_deterministic((480, 640), "crop", (640, 480)) and resize_is_deterministic((1, 9), "squish", (5,))
    cache = open_cache(tmp_path / "cache", run, [*photos, landscape])
    assert str(landscape) not in cache.rows and len(cache.rows) == len(photos)
    assert np.asarray(cache(landscape)).shape == (480, 640, 3)  # decoded, then Resize picks the window


def test_a_changed_image_is_never_served_stale(photos, tmp_path):
    cache = open_cache(tmp_path / "cache", RUN, photos)
    before = np.asarray(cache(photos[0])).copy()
    key = cache_key(RUN, photos)
    shutil.copy(photos[1], photos[0])  # new content (and size and mtime)
    assert cache_key(RUN, photos) != key
    cache = open_cache(tmp_path / "cache", RUN, photos)
    np.testing.assert_array_equal(np.asarray(cache(photos[0])), plain(photos[1], RUN))
    assert not np.array_equal(np.asarray(cache(photos[0])), before)
    # a touch alone (same bytes, new mtime) is a new key too
    st = photos[2].stat()
    os.utime(photos[2], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert cache_key(RUN, photos) != key


@pytest.mark.parametrize("damage", ["truncate", "garbage", "no index"])
def test_a_corrupt_or_partial_cache_is_rebuilt(photos, tmp_path, damage):
    cache = open_cache(tmp_path / "cache", RUN, photos)
    array, index = cache.array_path, cache.array_path.with_suffix(".json")
    if damage == "truncate":
        with open(array, "r+b") as f:
            f.truncate(array.stat().st_size // 2)
    elif damage == "garbage":
        array.write_bytes(os.urandom(4096))
    else:
        index.unlink()
    cache = open_cache(tmp_path / "cache", RUN, photos)
    assert index.is_file() and array.stat().st_size > 4 * 96 * 96 * 3
    for p in photos:
        np.testing.assert_array_equal(np.asarray(cache(p)), plain(p, RUN))


def test_in_kaggles_working_folder_the_cache_keeps_to_its_20_gb(photos, tmp_path, monkeypatch, caplog):
    from pipeline.data import image_cache

    working, needed = tmp_path / "working", 4 * 96 * 96 * 3
    (working / "outputs").mkdir(parents=True)
    (working / "outputs" / "epoch1.pth").write_bytes(b"\0" * 50_000)  # the disk itself has plenty free
    monkeypatch.setattr(image_cache, "KAGGLE_WORKING", working)
    monkeypatch.setattr(image_cache, "KAGGLE_WORKING_BYTES", 50_000 + 2 * needed - 1)
    assert open_cache(working / "cache", RUN, photos).rows == {}
    assert "not caching images" in caplog.text

    monkeypatch.setattr(image_cache, "KAGGLE_WORKING_BYTES", 50_000 + 2 * needed)
    assert len(open_cache(working / "cache", RUN, photos).rows) == 4


def test_cache_survives_pickling_for_dataloader_workers(photos, tmp_path):
    import pickle

    cache = open_cache(tmp_path / "cache", RUN, photos)
    cache(photos[0])  # opens the memory map
    copy = pickle.loads(pickle.dumps(cache))
    assert len(pickle.dumps(cache)) < 10_000  # names, not pixels
    np.testing.assert_array_equal(np.asarray(copy(photos[3])), plain(photos[3], RUN))


@pytest.fixture(scope="module")
def batch():
    """16 real photos, squished to 240 px, as fastai's float batch."""
    from fastai.vision.core import TensorImage

    if not PADDY_SAMPLE.is_dir():
        pytest.skip("no paddy sample")
    files = sorted((PADDY_SAMPLE / "train_images").glob("*/*.jpg"))[:16]
    x = np.stack([np.asarray(Image.open(f).convert("RGB").resize((240, 240))) for f in files])
    return TensorImage(torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255)


def _augment(tfms, x, split_idx, seed):
    from fasttransform import Pipeline

    pipe = Pipeline(tfms, split_idx=split_idx)
    torch.manual_seed(seed)
    random.seed(seed)
    return pipe(x)


def test_fused_augmentation_matches_fastai(batch):
    from fastai.vision.augment import aug_transforms

    from pipeline.data.augment import AffineResizedCrop, fuse_affine_and_crop

    fused = fuse_affine_and_crop(aug_transforms(size=64, min_scale=0.75))
    assert sum(isinstance(t, AffineResizedCrop) for t in fused) == 1 and len(fused) == 2  # + lighting
    # validation (and TTA's plain pass): the same pixels
    for seed in range(2):
        a = _augment(aug_transforms(size=64, min_scale=0.75), batch, 1, seed)
        b = _augment(fused, batch, 1, seed)
        torch.testing.assert_close(b, a, atol=1e-4, rtol=0)
    # training: the same random draws give the same images up to interpolation (one bilinear sample
    # instead of two): far closer than two different draws are to each other
    for seed in range(3):
        a = _augment(aug_transforms(size=64, min_scale=0.75), batch, 0, seed)
        b = _augment(fused, batch, 0, seed)
        other = _augment(aug_transforms(size=64, min_scale=0.75), batch, 0, seed + 10)
        assert b.shape == a.shape == (16, 3, 64, 64)
        assert (a - b).abs().mean() < 0.15 * (a - other).abs().mean()
        assert (a - b).abs().mean() < 0.03  # on [0, 1] pixels


def test_min_scale_one_has_nothing_to_fuse():
    from fastai.vision.augment import aug_transforms

    from pipeline.data.augment import fuse_affine_and_crop

    tfms = aug_transforms(size=64, min_scale=1.0)
    assert fuse_affine_and_crop(tfms) == tfms


def test_the_data_device_wins_over_fastais_default_device(paddy_root, weights_dir, monkeypatch):
    """train.device=cpu on a GPU machine: fastai's default device (the GPU) must not hold any of the data path's
    tensors. Played here with "meta" as fastai's default device, which no real tensor can meet."""
    import fastai.torch_core
    from fastai.data.transforms import Normalize

    from pipeline.data.competition import scan_competition
    from pipeline.training.learner import run_learner

    monkeypatch.setattr(fastai.torch_core, "default_device", lambda *_, **__: torch.device("meta"))
    cfg = compose("config", [f"perf.cache_dir={paddy_root.parent / 'cache'}"])
    run = replace(RUN, weights=str(weights_dir / "tf_efficientnet_lite0.safetensors"), item_size=(32,), size=(32,))
    kwargs = {"pretrained_cfg_overlay": {"file": run.weights}}
    learn = run_learner(cfg, scan_competition(paddy_root), run, "cpu", kwargs, valid_idx=list(range(6)))
    (norm,) = [t for t in learn.dls.valid.after_batch.fs if isinstance(t, Normalize)]
    assert norm.mean.device.type == norm.std.device.type == "cpu"
    x, _ = learn.dls.valid.one_batch()
    assert x.device.type == "cpu" and x.isfinite().all()


@pytest.fixture(scope="module")
def learner(paddy_root, weights_dir):
    """A real tf_efficientnet_lite0 learner on the fast paths, and the scanned competition."""
    from pipeline.data.competition import scan_competition
    from pipeline.data.splits import make_split
    from pipeline.training.learner import run_learner

    cfg = compose("config", [f"perf.cache_dir={paddy_root.parent / 'cache'}"])
    run = replace(RUN, weights=str(weights_dir / "tf_efficientnet_lite0.safetensors"), item_size=(64,))
    comp = scan_competition(paddy_root)
    split = make_split([f.parent.name for f in comp.train_files], "random", valid_pct=0.2, seed=0)
    kwargs = {"pretrained_cfg_overlay": {"file": run.weights}}
    return run_learner(cfg, comp, run, DEVICE, kwargs, valid_idx=split.valid_idx), comp


@pytest.mark.slow
def test_one_load_tta_equals_learner_tta_without_augmentation_randomness(learner):
    from fastai.vision.all import IntToFloatTensor, Normalize, imagenet_stats

    from pipeline.training.tta import tta

    learn, comp = learner
    test_dl = learn.dls.test_dl(comp.test_files, bs=3)  # 10 images: a partial last batch
    # deterministic batch transforms: every augmented pass equals the plain one
    plain_dl = test_dl.new(after_batch=[IntToFloatTensor(), Normalize.from_stats(*imagenet_stats)])
    # fp16 on CUDA: the two paths' batches round apart (seen on an H200: up to 7.8e-4)
    tol = {"atol": 1e-5, "rtol": 1e-4} if DEVICE == "cpu" else {"atol": 2e-3, "rtol": 1e-2}
    ref, _ = learn.tta(dl=plain_dl, n=2, beta=0.25)
    fast, targs = tta(learn, plain_dl, n=2, beta=0.25, fast=True)
    assert targs is None and fast.shape == (10, 10)
    torch.testing.assert_close(fast, ref, **tol)
    # the real augmentations, plain pass only (beta=1): the same predictions, targets in dataset order
    valid_dl = learn.dls.valid.new(shuffle=False, drop_last=False)
    ref, ref_targs = learn.tta(dl=valid_dl, n=2, beta=1.0)
    fast, fast_targs = tta(learn, valid_dl, n=2, beta=1.0, fast=True)
    torch.testing.assert_close(fast, ref, **tol)
    assert torch.equal(fast_targs, ref_targs)
    # and with augmentation, probabilities that agree with fastai's up to its randomness
    fast, _ = tta(learn, valid_dl, n=4, beta=0.25, fast=True)
    torch.testing.assert_close(fast.sum(1), torch.ones(len(fast)))
    assert (fast - ref).abs().max() < 0.2


def test_channels_last_and_workers_follow_the_device():
    from pipeline.data.loaders import loader_workers
    from pipeline.training.learner import use_channels_last

    cfg = compose("config").perf
    assert use_channels_last(cfg, "cpu") and not use_channels_last(cfg, "cuda")
    assert loader_workers(None, "cpu", cfg) == 0 and loader_workers(None, "cuda", cfg) is None
    assert loader_workers(3, "cpu", cfg) == 3
    off = compose("config", ["perf.channels_last=off", "perf.cache=false"]).perf
    assert not use_channels_last(off, "cpu") and loader_workers(None, "cpu", off) is None
