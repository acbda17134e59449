"""The offline demo dataset: real Fashion-MNIST photos laid out as the Paddy competition (layout.PADDY,
which conf/data/demo.yaml names).

Source: Debian's package dataset-fashion-mnist (/usr/share/datasets/fashion-mnist/, idx gzip files),
or the same four files from github.com/zalandoresearch/fashion-mnist (folder data/fashion).
"""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from pipeline.data.layout import PADDY
from pipeline.errors import PipelineError
from pipeline.fileio import new_temp

LABELS = [
    "t-shirt_top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle_boot",
]
# A coarse grouping of the classes: train.csv's second target, as Paddy's variety (data.aux_targets=[group]).
GROUPS = {
    "t-shirt_top": "top",
    "pullover": "top",
    "coat": "top",
    "shirt": "top",
    "trouser": "bottom",
    "dress": "dress",
    "sandal": "footwear",
    "sneaker": "footwear",
    "ankle_boot": "footwear",
    "bag": "bag",
}
SOURCE_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def read_idx(path: Path) -> np.ndarray:
    """An idx file (the MNIST format): big-endian header of dims, then uint8 data."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic = int.from_bytes(data[:4], "big")
    if magic >> 8 != 0x08:  # 0x08: unsigned byte
        raise PipelineError(f"{path} is not a uint8 idx file")
    ndim = magic & 0xFF
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_split(source: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    images, labels = (source / name for name in SOURCE_FILES[split])
    for p in (images, labels):
        if not p.is_file():
            raise PipelineError(
                f"{p} not found: apt-get install dataset-fashion-mnist, or put the four Fashion-MNIST "
                "idx .gz files there and set demo.source"
            )
    return read_idx(images), read_idx(labels)


def _balanced_sample(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    return np.concatenate([rng.choice(np.flatnonzero(labels == c), per_class, replace=False) for c in range(10)])


def build_demo(source: str | Path, dest: str | Path, *, train_per_class: int, test_per_class: int, seed: int) -> Path:
    """Write the competition layout to `dest` (atomically, as a whole folder); a no-op when `dest`
    already holds a demo built with the same settings.

    train_images/<label>/<id>.jpg, test_images/<id>.jpg, train.csv (image_id, label, group: GROUPS),
    sample_submission.csv (rows shuffled, so nothing may rely on sorted order) and test_labels.csv (the
    truth, kept aside)."""
    source, dest = Path(source), Path(dest)
    # train_csv: its columns, so a demo built before the group column existed is rebuilt
    settings = {
        "train_per_class": train_per_class,
        "test_per_class": test_per_class,
        "seed": seed,
        "train_csv": [PADDY.id_column, PADDY.label_column, "group"],
    }
    marker = dest / "demo.json"
    if marker.is_file() and json.loads(marker.read_text()) == settings:
        return dest
    rng = np.random.default_rng(seed)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = new_temp(dest.parent, f".{dest.name}.", folder=True)
    try:
        images, labels = load_split(source, "train")
        train_rows = []
        for n, i in enumerate(_balanced_sample(labels, train_per_class, rng)):
            image_id, label = f"{100001 + n}.jpg", LABELS[labels[i]]
            (tmp / PADDY.train_dir / label).mkdir(parents=True, exist_ok=True)
            Image.fromarray(images[i]).save(tmp / PADDY.train_dir / label / image_id, quality=95)
            train_rows.append((image_id, label, GROUPS[label]))
        pd.DataFrame(train_rows, columns=settings["train_csv"]).to_csv(tmp / PADDY.train_csv, index=False)

        images, labels = load_split(source, "test")
        (tmp / PADDY.test_dir).mkdir()
        test_rows = []
        for n, i in enumerate(_balanced_sample(labels, test_per_class, rng)):
            image_id = f"{200001 + n}.jpg"
            Image.fromarray(images[i]).save(tmp / PADDY.test_dir / image_id, quality=95)
            test_rows.append((image_id, LABELS[labels[i]]))
        truth = pd.DataFrame(test_rows, columns=PADDY.columns).iloc[rng.permutation(len(test_rows))]
        truth.assign(**{PADDY.label_column: ""}).to_csv(tmp / PADDY.sample_submission, index=False)
        truth.to_csv(tmp / "test_labels.csv", index=False)
        (tmp / "demo.json").write_text(json.dumps(settings))
        if dest.exists():
            shutil.rmtree(dest)
        tmp.rename(dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest
