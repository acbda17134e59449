"""Files and folders the pipeline writes get the mode any program's would: what the user's umask allows."""

import os
import stat
import zipfile

import pandas as pd
import pytest

from pipeline.fileio import atomic_path
from tests.conftest import FASHION_MNIST, PADDY_SAMPLE, write_competition
from tests.factories import make_run


@pytest.fixture(params=[(0o022, "0o644", "0o755"), (0o002, "0o664", "0o775")], ids=["umask022", "umask002"])
def modes(request):
    """Sets the umask for the test (restored after); the modes it gives new files and folders."""
    old = os.umask(request.param[0])
    yield request.param[1:]
    os.umask(old)


def mode(path) -> str:
    return oct(stat.S_IMODE(path.stat().st_mode))


def photos(n: int) -> list:
    if not PADDY_SAMPLE.is_dir():
        pytest.skip(f"{PADDY_SAMPLE} is not there")
    return sorted((PADDY_SAMPLE / "train_images").rglob("*.jpg"))[:n]


def test_atomic_writes_follow_the_umask(tmp_path, modes):
    file_mode, _ = modes
    with atomic_path(tmp_path / "out" / "table.csv") as tmp:
        tmp.write_text("a,b\n")
    assert mode(tmp_path / "out" / "table.csv") == file_mode


def test_the_image_cache_follows_the_umask(tmp_path, modes):
    from pipeline.data.image_cache import open_cache

    file_mode, _ = modes
    open_cache(tmp_path, make_run(resize="squish", item_size=(32,)), photos(2))
    written = sorted(p for p in tmp_path.iterdir() if p.suffix != ".lock")  # the build lock holds no data
    assert [p.suffix for p in written] == [".json", ".npy"]
    assert [mode(p) for p in written] == [file_mode, file_mode]


def test_an_unpacked_competition_follows_the_umask(tmp_path, modes):
    from pipeline.kaggle.competition_files import unpack

    file_mode, dir_mode = modes
    files = photos(2)
    source = write_competition(tmp_path / "source", {"a": files[:1], "b": files[1:]}, files[:1])
    pd.DataFrame({"image_id": [f.name for f in files], "label": ["a", "b"]}).to_csv(source / "train.csv", index=False)
    with zipfile.ZipFile(tmp_path / "comp.zip", "w") as zf:
        for f in source.rglob("*"):
            zf.write(f, f.relative_to(source))
    root = tmp_path / "data" / "comp"
    unpack(tmp_path / "comp.zip", root)
    assert mode(root) == dir_mode and mode(root / "train_images") == dir_mode
    assert mode(root / "sample_submission.csv") == file_mode


def test_the_demo_data_follows_the_umask(tmp_path, modes):
    from pipeline.data.demo import build_demo

    if not FASHION_MNIST.is_dir():
        pytest.skip("Debian's dataset-fashion-mnist is not installed (scripts/setup.sh installs it)")
    file_mode, dir_mode = modes
    dest = build_demo(FASHION_MNIST, tmp_path / "demo", train_per_class=1, test_per_class=1, seed=0)
    assert mode(dest) == dir_mode and mode(dest / "test_images") == dir_mode
    assert mode(dest / "train.csv") == file_mode
