"""Temporary files of writes killed outright (kill -9) are swept by later writes, never those of a live
writer: real processes hold and lose the locks, as a crashed job would."""

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pipeline.data.image_cache import open_cache
from pipeline.fileio import atomic_path
from tests import warm_python
from tests.conftest import PADDY_SAMPLE, REPO
from tests.factories import make_run

RUN = make_run(resize="squish", item_size=(96,), size=(32,), accum=1, batch_size=8)

# A writer that creates its temporary file as atomic_path does, says where, and keeps writing (sleeps).
WRITER = """
import sys, time
from pathlib import Path
from pipeline.fileio import locked_temp_file
fd, tmp = locked_temp_file(Path(sys.argv[1]))
print(tmp, flush=True)
time.sleep(600)
"""


@pytest.fixture
def writer():
    """Start a writer of a file; returns (process, its temporary file)."""
    started = []

    def start(target):
        proc = warm_python.Popen(
            [sys.executable, "-c", WRITER, str(target)], cwd=REPO, stdout=subprocess.PIPE, text=True
        )
        started.append(proc)
        return proc, Path(proc.stdout.readline().strip())

    yield start
    for proc in started:
        proc.kill()
        proc.wait()


def _killed(proc):
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def test_a_killed_checkpoint_save_is_swept_by_the_next_save(tmp_path, writer):
    folder = tmp_path / "checkpoints" / "run-0123"
    folder.mkdir(parents=True)
    proc, leftover = writer(folder / "epoch1.pth")
    _killed(proc)
    assert leftover.is_file()
    with atomic_path(folder / "epoch1.pth") as tmp:  # the resumed run saves that epoch again
        tmp.write_bytes(b"weights")
    assert sorted(p.name for p in folder.iterdir()) == ["epoch1.pth"]


def test_a_live_writers_temporary_file_is_kept(tmp_path, writer):
    folder = tmp_path / "preds"
    folder.mkdir()
    proc, live = writer(folder / "run.pt")
    with atomic_path(folder / "run.pt") as tmp:  # another job writes the same file meanwhile
        tmp.write_bytes(b"predictions")
    assert live.is_file() and proc.poll() is None
    assert sorted(p.name for p in folder.iterdir()) == [live.name, "run.pt"]


@pytest.fixture
def photos(tmp_path):
    if not PADDY_SAMPLE.is_dir():
        pytest.skip("no paddy sample")
    out = tmp_path / "img"
    out.mkdir()
    return [
        Path(shutil.copy(src, out / f"{i}.jpg")) for i, src in enumerate(sorted(PADDY_SAMPLE.glob("*/*/*.jpg"))[:4])
    ]


def test_the_cache_sweeps_a_killed_build_but_not_a_live_one(tmp_path, photos, writer):
    cache_dir = tmp_path / "cache"
    cache_dir.mkdir()
    dead, leftover = writer(cache_dir / "squish96-0000.npy")  # another key's build: all of the folder is swept
    _killed(dead)
    live_proc, live = writer(cache_dir / "squish96-1111.npy")
    cache = open_cache(cache_dir, RUN, photos)
    assert not leftover.exists() and live.is_file() and live_proc.poll() is None
    assert len(cache.rows) == 4 and not [p for p in cache_dir.glob(".*.tmp") if p != live]


# A job building the cache of many images (the same photos listed over and over).
BUILDER = """
import sys
from pathlib import Path
from pipeline.data.image_cache import open_cache
from tests.factories import make_run
run = make_run(resize="squish", item_size=(96,), size=(32,), accum=1, batch_size=8)
open_cache(Path(sys.argv[1]), run, [Path(p) for p in sys.argv[2:]] * 500)
"""


@pytest.mark.slow  # decodes photos until killed, into a 2000-image cache file (55 MB)
def test_kill_9_during_a_cache_build_leaves_nothing_once_the_cache_is_opened_again(tmp_path, photos):
    cache_dir = tmp_path / "cache"
    job = warm_python.Popen([sys.executable, "-c", BUILDER, str(cache_dir), *map(str, photos)], cwd=REPO)
    deadline = time.monotonic() + 120
    while not list(cache_dir.glob(".*.npy.*.tmp")):
        assert job.poll() is None, "the build ended before it could be killed"
        assert time.monotonic() < deadline, "the build never started"
        time.sleep(0.05)
    time.sleep(0.5)  # mid-way through decoding
    job.send_signal(signal.SIGKILL)
    assert job.wait() == -signal.SIGKILL
    (partial,) = cache_dir.glob(".*.npy.*.tmp")
    assert partial.stat().st_size > 2000 * 96 * 96 * 3  # the whole array's size, as on Paddy (9.6 GB)

    cache = open_cache(cache_dir, RUN, photos)
    assert not list(cache_dir.glob(".*.tmp"))
    assert np.asarray(cache(photos[0])).shape == (96, 96, 3)
