"""A cache of decoded, item-resized images: each image is decoded and resized once per item transform
and served from a memory-mapped uint8 array to every run, epoch and TTA pass that uses that transform.

On 2 CPU cores, decoding a 480x640 JPEG and resizing it costs about 5 ms, paid again for every image
of every epoch and every TTA pass; reading a row of the array costs a copy.

Safety:
- The cache key holds the item transform, the cache format and every source file's path, size,
  mtime and ctime: a changed, added or removed image gives a new key, so a stale image is never served.
- The array (`<key>.npy`) and its index (`<key>.json`, written last) are each written to a temporary
  file and renamed into place; an array whose header, shape or length does not match its index is
  rebuilt, never served. A killed build's temporary array is removed when the cache is next opened
  (pipeline.fileio: only once no live process holds it).
- Jobs running at once on one machine (a launcher's pool) build a missing array once: the builder holds
  a file lock (`.<key>.lock`), the others wait for it, then find the array complete and read it.
- Only images whose item transform is deterministic are cached (squish always; crop and pad when the
  source already has the target's aspect ratio). fastai's Resize picks a random crop or pad position in
  training otherwise, so those few images are decoded as usual.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from filelock import FileLock, Timeout
from PIL import Image

from pipeline.data.competition import stat_fingerprint
from pipeline.fileio import DiskFull, is_disk_full, locked_temp_file, sweep_temp_files, write_atomic

if TYPE_CHECKING:
    from fastai.vision.core import PILImage

    from pipeline.training.specs import RunSpec

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
KAGGLE_WORKING, KAGGLE_WORKING_BYTES = Path("/kaggle/working"), 20 * 10**9  # a Kaggle notebook's saved output


def resize_is_deterministic(source_wh: tuple[int, int], resize: str, item_size: tuple[int, ...]) -> bool:
    """Whether fastai's Resize gives the same pixels in training (random position) as in validation.

    Mirrors fastai's Resize.encodes: crop/pad cut a (w, h) window at a random offset, then resize; the
    offset can only be 0 when the window is the whole source image."""
    if resize == "squish":
        return True
    w, h = source_wh
    th, tw = (item_size[0], item_size[0]) if len(item_size) == 1 else item_size
    pick_width = (w / tw < h / th) if resize == "crop" else (w / tw > h / th)
    m = w / tw if pick_width else h / th
    return (int(m * tw), int(m * th)) == (w, h)


def cache_key(run: RunSpec, files: list[Path]) -> str:
    """Names the cache of `files` under `run`'s item transform; changes with any source file."""
    import fastai

    transform = f"{run.resize}{'x'.join(map(str, run.item_size))}"
    # absolute paths: the index names its rows by path, so each data folder has its own cache
    identity = [FORMAT_VERSION, fastai.__version__, transform, stat_fingerprint(files)]
    return f"{transform}-{hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:20]}"


def _load_plain(path: Path, run: RunSpec) -> np.ndarray:
    """The plain path's item output: PILImage.create, then the run's fastai Resize in validation mode."""
    from fastai.vision.core import PILImage

    from pipeline.data.transforms import item_tfms

    (resize,) = item_tfms(run)
    return np.asarray(resize(PILImage.create(path), split_idx=1))


class ImageCache:
    """Type transform for fastai's ImageBlock: a path -> its PILImage, from the cache when it is there.

    Pickles as its file names only (DataLoader workers reopen the memory map)."""

    def __init__(self, array_path: Path, files: list[str]) -> None:
        self.array_path = array_path
        self.rows = {f: i for i, f in enumerate(files)}
        self._array: np.ndarray | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_array": None}

    @property
    def array(self) -> np.ndarray:
        if self._array is None:
            self._array = np.load(self.array_path, mmap_mode="r")
        return self._array

    def __call__(self, path: str | Path) -> PILImage:
        from fastai.vision.core import PILImage

        row = self.rows.get(str(path))
        if row is None:
            return PILImage.create(path)
        return PILImage(Image.fromarray(np.array(self.array[row])))


def _valid(array_path: Path, index_path: Path, key: str, shape: tuple[int, ...]) -> list[str] | None:
    """The cached file names if the array and index are complete and agree, else None."""
    try:
        index = json.loads(index_path.read_text())
        files = index["files"]
        if index.get("key") != key:
            return None
        array = np.load(array_path, mmap_mode="r")  # raises on a bad header or a short file
        expected = (len(files), *shape)
        end = array.offset + array.nbytes
        if array.dtype != np.uint8 or array.shape != expected or os.path.getsize(array_path) != end:
            return None
        return files
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write(tmp: Path, run: RunSpec, files: list[Path], shape: tuple[int, ...], threads: int) -> None:
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(files), *shape))
    with open(tmp, "rb+") as f:  # the whole file now: a full disk is ENOSPC here, not SIGBUS while filling
        os.posix_fallocate(f.fileno(), 0, os.fstat(f.fileno()).st_size)

    def fill(i: int) -> None:
        out[i] = _load_plain(files[i], run)

    # PIL releases the GIL while decoding and resizing, so threads use every core.
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(fill, range(len(files))))
    out.flush()


def _build(array_path: Path, run: RunSpec, files: list[Path], shape: tuple[int, ...]) -> None:
    """Decode and resize `files` into a new array, renamed into place only once complete."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    fd, tmp = locked_temp_file(array_path)
    full = False
    try:
        _write(tmp, run, files, shape, cores)
        os.replace(tmp, array_path)
    except OSError as e:
        if not is_disk_full(e, array_path.parent):
            raise
        full = True
    finally:
        tmp.unlink(missing_ok=True)
        os.close(fd)
    if full:  # raised once the partial array is deleted, so that the free space reported is the real one
        raise DiskFull(array_path, len(files) * int(np.prod(shape)))


def free_bytes(folder: Path) -> int:
    """Free space for a cache in `folder`. Kaggle's /kaggle/working sits on a disk of about 70 GB but
    keeps at most 20 GB (it is the notebook's output), so there the 20 GB less what it holds counts."""
    free = shutil.disk_usage(folder).free
    if folder.resolve().is_relative_to(KAGGLE_WORKING):
        used = sum(f.stat().st_size for f in KAGGLE_WORKING.rglob("*") if f.is_file() and not f.is_symlink())
        free = min(free, max(KAGGLE_WORKING_BYTES - used, 0))
    return free


def open_cache(cache_dir: str | Path, run: RunSpec, files: list[Path]) -> ImageCache:
    """The cache of `files` under `run`'s item transform, built first if missing, stale or corrupt."""
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    for leftover in sweep_temp_files(cache_dir):  # a killed build's partial array (as large as the cache)
        log.info("removed %s, left by an interrupted cache build", leftover)
    key = cache_key(run, files)
    array_path, index_path = cache_dir / f"{key}.npy", cache_dir / f"{key}.json"
    cacheable = []
    for f in files:
        with Image.open(f) as im:  # reads the header only
            if resize_is_deterministic(im.size, run.resize, run.item_size):
                cacheable.append(f)
    if not cacheable:
        return ImageCache(array_path, [])
    shape = _load_plain(cacheable[0], run).shape
    names = [str(f) for f in cacheable]
    if _valid(array_path, index_path, key, shape) == names:
        return ImageCache(array_path, names)
    with _build_lock(cache_dir / f".{key}.lock"):
        if _valid(array_path, index_path, key, shape) == names:  # another job built it while this one waited
            return ImageCache(array_path, names)
        needed, free = len(cacheable) * int(np.prod(shape)), free_bytes(cache_dir)
        if needed > free // 2:  # never fill a disk for a speed-up
            log.warning(
                "not caching images: %.1f GB needed, %.1f GB free in %s; decoding as usual "
                "(point perf.cache_dir at a larger disk to cache)",
                needed / 1e9,
                free / 1e9,
                cache_dir,
            )
            return ImageCache(array_path, [])
        log.info("caching %d decoded %s images in %s", len(cacheable), key.split("-")[0], array_path)
        index_path.unlink(missing_ok=True)  # an index must never describe an array being rewritten
        _build(array_path, run, cacheable, shape)
        write_atomic(index_path, json.dumps({"key": key, "files": names}))
        if _valid(array_path, index_path, key, shape) != names:
            raise OSError(f"the image cache {array_path} did not read back complete (disk full?)")
        return ImageCache(array_path, names)


@contextmanager
def _build_lock(path: Path) -> Iterator[None]:
    """Held while building: one builder per array among the jobs on this machine (or sharing this disk)."""
    lock = FileLock(path)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.info("another job is building the image cache (lock %s): waiting for it", path)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()
