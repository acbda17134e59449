"""Fetch a competition's files with the kaggle client, unpack them atomically into data.root, check the layout.

Idempotent: the client skips a zip that is complete and not older than Kaggle's (and resumes a partial
one), and a marker in data.root records which zip was unpacked there, so an unchanged zip is not unpacked
again. Unpacking happens in a hidden sibling folder that replaces data.root only once it is complete and
checked, so an interrupted run never leaves a tree that looks complete.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import zipfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.config import check_ranges
from pipeline.data.competition import scan_competition
from pipeline.data.layout import PADDY, Layout
from pipeline.errors import PipelineError
from pipeline.fileio import new_temp
from pipeline.kaggle.client import call, client_output, connect
from pipeline.tables import format_table

if TYPE_CHECKING:
    from pipeline.config import DownloadAppConfig

log = logging.getLogger(__name__)

MARKER = ".kaggle-download.json"  # in data.root: the zip (name, size, mtime) it was unpacked from


@dataclass
class ImageCounts:
    """What the layout check found: training images per label, and test images."""

    label_counts: dict[str, int]
    test_images: int


@dataclass
class DownloadResult:
    root: Path
    zip_path: Path
    fetched: bool  # the zip was (re)written by this run
    unpacked: bool  # data.root was (re)built by this run
    layout: ImageCounts


def check_layout(root: Path, layout: Layout) -> ImageCounts:
    """The layout's label folders, test folder matching its sample submission, and train CSV; images decodable."""
    comp = scan_competition(root, layout)
    if not comp.train_csv_path.is_file():
        raise PipelineError(f"{comp.train_csv_path} is missing: the competition files are incomplete (data.train_csv)")
    counts = Counter(p.parent.name for p in comp.train_files)
    return ImageCounts({label: counts[label] for label in comp.vocab}, len(comp.test_files))


def download(cfg: DownloadAppConfig) -> DownloadResult:
    check_ranges(cfg)
    slug, force = cfg.data.competition, cfg.download.force
    root, expected = Path(cfg.data.root), Layout.from_config(cfg.data)  # a bad layout name fails before any request
    zip_path = Path(cfg.download.zip_dir or root.parent) / f"{slug}.zip"
    if zip_path.resolve().is_relative_to(root.resolve()):  # unpacking replaces data.root, the zip with it
        raise PipelineError(f"download.zip_dir {zip_path.parent} is inside data.root {root}: choose a folder outside")
    unpacked_from = _read_marker(root)
    if unpacked_from is None and root.exists() and any(root.iterdir()):
        raise PipelineError(
            f"{root} holds files pipeline.download did not unpack: move them away or set data.root elsewhere"
        )

    if unpacked_from and not zip_path.exists() and not force:
        log.info("%s was unpacked before and its zip is gone: not fetching (download.force=true does)", root)
        fetched = False
    else:
        api = connect(cfg.kaggle, slug)
        before = _ctime(zip_path)
        log.info("fetching competition %s into %s", slug, zip_path.parent)
        with client_output():  # its notes mention CLI flags; its progress bar (stderr) stays
            call(
                lambda: api.competition_download_files(slug, path=str(zip_path.parent), force=force, quiet=False),
                f"download of {slug}",
                cfg.kaggle,
                slug,
            )
        if not zip_path.is_file():
            raise PipelineError(f"the kaggle client wrote no {zip_path}: Kaggle did not serve the files as a zip")
        fetched = _ctime(zip_path) != before  # any rewrite changes ctime, even with the same bytes and mtime

    if zip_path.is_file() and (force or unpacked_from != _zip_id(zip_path)):
        layout = unpack(zip_path, root, expected)
        unpacked = True
    else:
        layout = check_layout(root, expected)
        unpacked = False
    return DownloadResult(root, zip_path, fetched, unpacked, layout)


def unpack(zip_path: Path, root: Path, layout: Layout = PADDY) -> ImageCounts:
    """Extract `zip_path` beside `root`, check its `layout`, then swap it in place of `root` (replacing an
    older unpack)."""
    parent = root.parent
    parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{root.name}.unpacking-"
    for stale in parent.glob(prefix + "*"):  # left by an interrupted run
        shutil.rmtree(stale, ignore_errors=True)
    tmp = new_temp(parent, prefix, folder=True)
    try:
        log.info("unpacking %s", zip_path)
        try:
            with zipfile.ZipFile(zip_path) as zf:
                zf.extractall(tmp)  # extractall drops absolute paths and ".." from member names
        except (zipfile.BadZipFile, EOFError) as e:
            raise PipelineError(f"{zip_path} is not a complete zip ({e}): delete it and run again") from None
        counts = check_layout(tmp, layout)
        (tmp / MARKER).write_text(json.dumps(_zip_id(zip_path)))
        if root.exists():
            old = Path(f"{tmp}-old")
            os.replace(root, old)
            os.replace(tmp, root)
            shutil.rmtree(old)
        else:
            os.replace(tmp, root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return counts


def layout_table(result: DownloadResult) -> str:
    rows = [{"label": label, "train images": n} for label, n in result.layout.label_counts.items()]
    rows.append({"label": "TOTAL", "train images": sum(result.layout.label_counts.values())})
    fetched = "fetched" if result.fetched else "already complete, not fetched"
    unpacked = "unpacked" if result.unpacked else "unchanged"
    return "\n".join(
        [
            format_table(rows),
            f"test images: {result.layout.test_images}",
            f"zip {result.zip_path}: {fetched}; {result.root}: {unpacked}, layout checked",
        ]
    )


def _zip_id(zip_path: Path) -> dict[str, Any]:
    st = zip_path.stat()
    return {"zip": zip_path.name, "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _read_marker(root: Path) -> dict[str, Any] | None:
    try:
        return json.loads((root / MARKER).read_text())
    except (OSError, ValueError):
        return None


def _ctime(path: Path) -> int | None:
    return path.stat().st_ctime_ns if path.exists() else None
