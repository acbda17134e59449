"""Files in and out: atomic writes (a reader never sees a half-written file, an interrupted write
leaves none) and CSV tables read with one-line errors.

A write goes to a hidden temporary file `.<name>.<random>.tmp` beside its target, locked (flock) by
its writer until it is renamed or deleted. A process killed outright (kill -9, power loss) leaves it
behind, but the kernel drops its lock: later writes sweep away the temporary files they can lock,
never one a live process is still writing.
"""

from __future__ import annotations

import fcntl
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
    locked: list[tuple[int, Path]] = []
    try:
        for path in targets:
            path.parent.mkdir(parents=True, exist_ok=True)
            locked.append(locked_temp_file(path))
        tmps = [tmp for _, tmp in locked]
        yield tmps
        for tmp in tmps:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        for tmp, path in zip(tmps, targets, strict=True):
            os.replace(tmp, path)
    finally:
        for fd, tmp in locked:
            tmp.unlink(missing_ok=True)
            os.close(fd)  # releases the lock


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it over `path`, on error delete it."""
    with atomic_paths(path) as (tmp,):
        yield tmp


def locked_temp_file(path: Path) -> tuple[int, Path]:
    """A new empty `.<name>.<random>.tmp` beside `path`, and an open descriptor holding its lock until
    closed (close it after renaming or deleting the file). Leftovers of earlier writes of `path` are
    swept first."""
    sweep_temp_files(path.parent, f".{path.name}.*.tmp")
    while True:
        tmp = new_temp(path.parent, f".{path.name}.", ".tmp")
        try:  # a sweep may take the file between its creation and the lock: then make another
            fd = os.open(tmp, os.O_RDWR)
        except FileNotFoundError:
            continue
        _lock(fd, blocking=True)
        try:
            if os.path.samestat(os.fstat(fd), os.stat(tmp)):
                return fd, tmp
        except FileNotFoundError:
            pass
        os.close(fd)


def sweep_temp_files(folder: Path, pattern: str = ".*.tmp") -> list[Path]:
    """Delete the temporary files matching `pattern` in `folder` that no live process holds locked
    (those of killed writers); returns them."""
    removed = []
    for tmp in folder.glob(pattern) if folder.is_dir() else []:
        try:
            fd = os.open(tmp, os.O_RDONLY)
        except OSError:  # renamed or removed meanwhile
            continue
        try:  # unlink only the file locked: not one renamed into place meanwhile and its name reused
            if _lock(fd, blocking=False) and os.path.samestat(os.fstat(fd), os.stat(tmp)):
                tmp.unlink()
                removed.append(tmp)
        except FileNotFoundError:
            pass
        finally:
            os.close(fd)
    return removed


def _lock(fd: int, blocking: bool) -> bool:
    """An exclusive flock on `fd`; False if another holds it, or if the file system has no locks
    (then nothing is ever swept: a leftover is kept rather than a live file risked)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
    except OSError:
        return False
    return True


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
