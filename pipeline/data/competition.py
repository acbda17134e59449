"""The competition layout: scan and check a data folder before anything is trained.

Layout (as Kaggle's Paddy Doctor ships it; each name is a data.* key, pipeline/data/layout.py):
    train_images/<label>/<image_id>.jpg     data.train_dir
    test_images/<image_id>.jpg              data.test_dir
    sample_submission.csv                   data.sample_submission: data.id_column,data.label_column
                                            (image_id,label), one row per test image; its order is the submission's
    train.csv                               data.train_csv: optional metadata, not needed for training
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from PIL import Image

from pipeline.data.file_hashes import content_hashes, hash_file, index_path
from pipeline.data.layout import PADDY, Layout
from pipeline.data.submission_csv import read_sample_submission
from pipeline.errors import PipelineError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


@dataclass
class Competition:
    root: Path
    vocab: list[str]
    train_files: list[Path]
    test_files: list[Path]  # in the sample submission's row order
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    layout: Layout = PADDY
    hash_index: Path | None = None  # where the images' content hashes are kept (data/file_hashes.index_path)
    # training images data.exclude leaves out of training (data/exclude.py), by image_id; they stay in validation
    excluded: frozenset[str] = frozenset()

    @property
    def test_ids(self) -> list[str]:
        return [f.name for f in self.test_files]

    def image_id(self, path: Path) -> str:
        """A training image's id: its path under train_dir (label folder/file name), as prediction files'
        valid_ids, blend files' oof_ids and data.exclude name it."""
        return str(path.relative_to(self.train_dir))

    @property
    def train_dir(self) -> Path:
        return self.root / self.layout.train_dir

    @property
    def test_dir(self) -> Path:
        return self.root / self.layout.test_dir

    @property
    def sample_path(self) -> Path:
        return self.root / self.layout.sample_submission

    @property
    def train_csv_path(self) -> Path:
        return self.root / self.layout.train_csv

    @cached_property
    def fingerprint(self) -> str:
        """The data a run trains and predicts on, as first asked for: the training images with their
        label folders and the test images in the sample submission's order, each with the hash of its
        bytes (data/file_hashes: read once, then kept in `hash_index`). Paths are relative to the data
        folder and mtimes left out, so the same competition moved, copied or mounted elsewhere (Kaggle's
        /kaggle/input) keeps finished runs; an image replaced by another, even of the same size, retrains."""
        files = [*self.train_files, *self.test_files]
        h = hashlib.sha256()
        for f, digest in zip(files, content_hashes(files, self.hash_index), strict=True):
            h.update(f"\0{f.relative_to(self.root)}\0{digest}".encode())
        return h.hexdigest()

    def fingerprint_for(self, aux_targets: Iterable[str]) -> str:
        """The fingerprint of what a run reads: the images, train.csv's bytes when the run has extra
        targets (an edited variety column retrains it; a run without extra targets ignores train.csv), and
        the training images data.exclude leaves out (another list retrains; none gives the plain fingerprint,
        so that removing data.exclude finds the runs trained without it)."""
        found = self.fingerprint
        if list(aux_targets):
            csv = self.train_csv_path
            digest = hash_file(csv) if csv.is_file() else "missing"  # read_aux_targets refuses a missing one
            found = hashlib.sha256(f"{found}\0{self.layout.train_csv}\0{digest}".encode()).hexdigest()
        if self.excluded:
            found = hashlib.sha256("\0".join([found, "exclude", *sorted(self.excluded)]).encode()).hexdigest()
        return found


def stat_fingerprint(files: Iterable[Path]) -> str:
    """A hash of each file's absolute path, size, mtime and ctime, in order: it changes when a file is
    added, removed, renamed, moved or rewritten (ctime too when its old mtime is put back). One stat a
    file; the images are not read. Keys caches of this machine's files (data/image_cache)."""
    h = hashlib.sha256()
    for f in files:
        st = f.stat()
        h.update(f"\0{f.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ctime_ns}".encode())
    return h.hexdigest()


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def inspect_image(path: Path) -> tuple[str | None, str | None]:
    """(PIL mode, None) if `path` decodes, else (None, why not). JPEGs are decoded at 1/8 scale
    (about 1 ms each), which still reads every byte of the file and so catches truncation."""
    try:
        with Image.open(path) as im:
            im.draft("RGB", (1, 1))
            im.load()
            return im.mode, None
    except Exception as e:  # PIL raises many types for bad files; all mean "unreadable"
        return None, f"{type(e).__name__}: {e}"


def too_deep(mode: str | None) -> bool:
    """Whether PIL holds the image in a mode of more than 8 bits a channel that fastai cannot use: single-
    channel 16-bit PNGs and TIFFs (I;16*), 32-bit integer (I) or float (F) ones. fastai's decoding
    (PILImage.create: PIL's convert("RGB")) clips them at 255, so a 16-bit photo trains as a white
    image. 16-bit colour PNGs are fine: PIL opens them as 8-bit RGB(A)."""
    return mode is not None and (mode in ("I", "F") or mode.startswith("I;16"))


def _train_files(train_dir: Path, layout: Layout) -> tuple[list[Path], int]:
    """Every image in the label folders, and how many label folders there are."""
    label_dirs = sorted(p for p in train_dir.iterdir() if p.is_dir())
    if not label_dirs:
        raise PipelineError(f"{train_dir} has no label folders: expected {layout.train_dir}/<label>/<image>.jpg")
    train_files = []
    for d in label_dirs:
        files = _images(d)
        if not files:
            raise PipelineError(f"label folder {d} has no images: add its images or remove the folder")
        train_files += files
    return train_files, len(label_dirs)


def _test_files(root: Path, layout: Layout) -> list[Path]:
    """The test images in the sample submission's row order; every row needs its image."""
    test_dir = root / layout.test_dir
    sample = read_sample_submission(root / layout.sample_submission, layout)
    ids = sample[layout.id_column]
    test_by_name = {p.name: p for p in _images(test_dir)}
    missing = [i for i in ids if i not in test_by_name]
    if missing:
        raise PipelineError(
            f"{layout.sample_submission} lists {len(missing)} image(s) not in {test_dir} (e.g. {missing[0]}): "
            "the sample submission does not match the test images"
        )
    extra = len(test_by_name) - len(sample)
    if extra:
        log.warning("%d file(s) in %s are not in %s: not predicted", extra, test_dir, layout.sample_submission)
    return [test_by_name[i] for i in ids]


def _check_folders(root: Path, layout: Layout) -> Path:
    """The data folder and its image folders exist; returns the folder of label folders."""
    if not root.is_dir():
        raise PipelineError(f"data folder {root} does not exist: set data.root to a competition folder")
    train_dir, test_dir = root / layout.train_dir, root / layout.test_dir
    for d in (train_dir, test_dir):
        if not d.is_dir():
            raise PipelineError(
                f"{d} is missing: data.root must hold {layout.train_dir}/<label>/ and {layout.test_dir}/ "
                "(data.train_dir, data.test_dir)"
            )
    return train_dir


def listed_competition(root: str | Path, layout: Layout = PADDY, *, cache_dir: str | Path | None = None) -> Competition:
    """The competition's files as listed, no image opened: enough for its fingerprint (each image's hash
    is read from the index in `cache_dir` when training already hashed it), to tell prediction files
    trained on other data (python -m pipeline.runs). Unlike scan_competition it skips no unreadable image,
    so data with one has another fingerprint here than in training."""
    root = Path(root)
    train_files, _ = _train_files(_check_folders(root, layout), layout)
    hashes = index_path(cache_dir, root) if cache_dir is not None else None
    vocab = sorted({p.parent.name for p in train_files})
    return Competition(root, vocab, train_files, _test_files(root, layout), layout=layout, hash_index=hashes)


def scan_competition(root: str | Path, layout: Layout = PADDY, *, cache_dir: str | Path | None = None) -> Competition:
    """Find and check every file training and prediction will need, before anything is trained. With
    `cache_dir` (perf.cache_dir), the images' content hashes behind the fingerprint are kept there.

    Unreadable training images are skipped with a warning naming each; an unreadable test image
    stops the scan, since every test row needs a prediction, and so does an image fastai would
    decode wrongly (see too_deep).
    """
    root = Path(root)
    train_dir = _check_folders(root, layout)
    train_files, n_labels = _train_files(train_dir, layout)
    test_files = _test_files(root, layout)

    checked = {p: inspect_image(p) for p in [*test_files, *train_files]}
    bad_test = [(p, r) for p in test_files if (r := checked[p][1])]
    if bad_test:
        listing = "; ".join(f"{p} ({r})" for p, r in bad_test[:5])
        raise PipelineError(f"{len(bad_test)} unreadable test image(s), replace them: {listing}")
    deep = [(p, mode) for p, (mode, _) in checked.items() if too_deep(mode)]
    if deep:
        listing = "; ".join(f"{p} ({mode})" for p, mode in deep[:5])
        raise PipelineError(
            f"{len(deep)} image(s) have more than 8 bits a channel, which training would clip at 255 (white): "
            f"{listing}; convert them to 8-bit (e.g. ImageMagick: mogrify -depth 8 FILE)"
        )
    skipped = [(p, r) for p in train_files if (r := checked[p][1])]
    for p, r in skipped:
        log.warning("skipping unreadable training image %s (%s)", p, r)
    bad = {p for p, _ in skipped}
    train_files = [p for p in train_files if p not in bad]
    vocab = sorted({p.parent.name for p in train_files})
    if len(vocab) < n_labels:
        raise PipelineError(f"after skipping unreadable images, some label folders in {train_dir} are empty")
    hashes = index_path(cache_dir, root) if cache_dir is not None else None
    return Competition(root, vocab, train_files, test_files, skipped, layout, hashes)
