"""Files in and out: atomic writes (a reader never sees a half-written file, an interrupted write
leaves none) and CSV tables read with one-line errors."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

from pipeline.errors import PipelineError


def new_temp(parent: Path, prefix: str, suffix: str = "", *, folder: bool = False) -> Path:
    """A new empty file (or folder) named `prefix`<random>`suffix` in `parent`, created with the mode
    open() (mkdir) gives, 0o666 (0o777) less the umask, which a rename carries to the final name.
    (tempfile.mkstemp and mkdtemp give 0o600 and 0o700: every output private, whatever the umask.)"""
    while True:
        tmp = parent / f"{prefix}{secrets.token_hex(4)}{suffix}"
        try:
            if folder:
                tmp.mkdir()
            else:
                os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
            return tmp
        except FileExistsError:
            continue


@contextmanager
def atomic_paths(*paths: str | Path) -> Iterator[list[Path]]:
    """Yield a temporary path beside each of `paths`; once the block succeeds, rename them all over
    theirs (nothing is replaced before every file is written); on error delete them all."""
    targets = [Path(p) for p in paths]
    tmps = []
    try:
        for path in targets:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmps.append(new_temp(path.parent, f".{path.name}.", ".tmp"))
        yield tmps
        for tmp in tmps:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        for tmp, path in zip(tmps, targets, strict=True):
            os.replace(tmp, path)
    finally:
        for tmp in tmps:
            tmp.unlink(missing_ok=True)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it over `path`, on error delete it."""
    with atomic_paths(path) as (tmp,):
        yield tmp


def read_table(path: str | Path, what: str, columns: list[str], fix: str = "") -> pd.DataFrame:
    """A CSV of strings with exactly `columns`; one-line errors naming `what` (and `fix`, what to do)."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"{what} {path} not found")
    fix = f": {fix}" if fix else ""
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise PipelineError(f"{what} {path} is not a readable CSV ({e}){fix}") from None
    if list(df.columns) != columns:
        raise PipelineError(f"{what} {path} has columns {list(df.columns)}; expected {columns}{fix}")
    return df
