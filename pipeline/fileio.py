"""Files in and out: atomic writes (a reader never sees a half-written file, an interrupted write
leaves none) and CSV tables read with one-line errors.

A write goes to a hidden temporary file `.<name>.<random>.tmp` beside its target, locked (flock) by
its writer until it is renamed or deleted. A process killed outright (kill -9, power loss) leaves it
behind, but the kernel drops its lock: later writes sweep away the temporary files they can lock,
never one a live process is still writing.
"""

from __future__ import annotations

import errno
import fcntl
import os
import secrets
import shutil
import traceback
from collections.abc import Callable, Iterator
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


class DiskFull(PipelineError):
    """No space left on the device a file is written to: one line naming the path, the space needed and
    the space free, exit 2. Checked before the folder is written again, so a rerun after freeing space works."""

    def __init__(self, path: Path, needed: int, *, at_least: bool = False) -> None:
        folder = _existing(path.parent)
        need = f"{'more than ' if at_least else ''}{_size(needed)} needed"
        free = _size(shutil.disk_usage(folder).free)
        self.message = (
            f"no space left on device writing {path} ({need}, {free} free on {_mount(folder)}): "
            "free space and run the same command again"
        )
        super().__init__(self.message)

    def __str__(self) -> str:  # fastai rewrites the args of an exception raised in a callback
        return self.message


def is_disk_full(e: BaseException, folder: Path) -> bool:
    """Whether `e` says the disk under `folder` is full. torch.save's zip writer raises a RuntimeError
    without an errno ("unexpected pos 128 vs 0"): then a disk with under 1 MiB free counts as full."""
    if isinstance(e, OSError):
        return e.errno in (errno.ENOSPC, errno.EDQUOT)
    return isinstance(e, RuntimeError) and shutil.disk_usage(_existing(folder)).free < 2**20


def _existing(folder: Path) -> Path:
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def _mount(folder: Path) -> Path:
    folder = folder.resolve()
    while not os.path.ismount(folder):
        folder = folder.parent
    return folder


def _size(n: int) -> str:
    return f"{-(-n // 1024)} KB" if n < 2**20 else f"{n / 2**20:.1f} MB"


@contextmanager
def atomic_paths(*paths: str | Path) -> Iterator[list[Path]]:
    """Yield a temporary path beside each of `paths`; once the block succeeds, rename them all over
    theirs (nothing is replaced before every file is written); on error delete them all. A full disk
    becomes DiskFull, needing more than the temporary files held when it filled. (The renames are one
    after another: a set of files that must change together is written with write_set.)"""
    targets = [Path(p) for p in paths]
    locked: list[tuple[int, Path]] = []
    written = 0
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
    except (OSError, RuntimeError) as e:
        if not is_disk_full(e, targets[0].parent):
            raise
        written = sum(tmp.stat().st_size for _, tmp in locked if tmp.exists()) or 1
        _release(e)
    finally:
        for fd, tmp in locked:
            tmp.unlink(missing_ok=True)
            os.close(fd)  # releases the lock
    if written:  # raised once the temporary files are gone, so that the free space reported is the real one
        raise DiskFull(targets[0], written, at_least=True) from None


def _release(e: BaseException | None) -> None:
    """Drop the finished frames of `e` and the errors it was raised in: torch's zip writer, still open in
    them, holds the space of the temporary file about to be deleted."""
    while e is not None:
        traceback.clear_frames(e.__traceback__)
        e = e.__context__


def write_atomic(path: str | Path, content: str | bytes) -> Path:
    """Write `content` to `path` atomically; on a full disk, DiskFull naming the exact size needed."""
    path = Path(path)
    data = content.encode() if isinstance(content, str) else content
    try:
        with atomic_path(path) as tmp:
            tmp.write_bytes(data)
    except DiskFull:
        raise DiskFull(path, len(data)) from None
    return path


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it over `path`, on error delete it."""
    with atomic_paths(path) as (tmp,):
        yield tmp


def write_set(files: dict[Path, str | bytes], check: Callable[[Path], None] | None = None) -> None:
    """Replace a set of files in one folder as one: a kill at any moment leaves the old set or the new one.

    The set lives in a new folder `.<first name>.sets/<random>/`; `.<first name>.sets/current` is a
    symlink to the set in place, and each name in the folder is a symlink through it (made once, at the
    first write: a regular file from before is replaced then). Switching `current` is one rename, the only
    step that changes what the names show. A name the new set lacks dangles (is missing) with it. Older sets
    are deleted after the switch; `check(path of the first file in the new folder)` runs before it."""
    first = next(iter(files))
    sets = first.parent / f".{first.name}.sets"
    try:
        sets.mkdir(parents=True, exist_ok=True)
        fd = os.open(sets, os.O_RDONLY)
    except OSError as e:
        raise DiskFull(first, _total(files)) if is_disk_full(e, sets) else e from None
    try:
        _lock(fd, blocking=True)  # one writer at a time: a writer never prunes another's new set
        new = _new_set(sets, files, check)
        for path in files:
            _symlink(path, Path(sets.name) / "current" / path.name)
        _symlink(sets / "current", Path(new.name))  # the switch
        os.fsync(fd)
    except (OSError, RuntimeError) as e:
        raise DiskFull(first, _total(files)) if is_disk_full(e, sets) else e from None
    finally:
        os.close(fd)
    for old in sets.iterdir():  # older sets, and those of killed writers
        if old.is_dir() and not old.is_symlink() and old != new:
            shutil.rmtree(old, ignore_errors=True)


def _total(files: dict[Path, str | bytes]) -> int:
    return sum(len(c.encode() if isinstance(c, str) else c) for c in files.values())


def _new_set(sets: Path, files: dict[Path, str | bytes], check: Callable[[Path], None] | None) -> Path:
    """The new set written in a new folder of `sets`, synced and checked; deleted on error."""
    new = new_temp(sets, "set-", folder=True)
    try:
        for path, content in files.items():
            with open(new / path.name, "wb") as f:
                f.write(content.encode() if isinstance(content, str) else content)
                os.fsync(f.fileno())
        if check:
            check(new / next(iter(files)).name)
    except BaseException:
        shutil.rmtree(new, ignore_errors=True)
        raise
    return new


def _symlink(path: Path, target: Path) -> None:
    """Make `path` a symlink to `target` in one rename, unless it is one already."""
    if path.is_symlink() and Path(os.readlink(path)) == target:
        return
    for leftover in path.parent.glob(f".{path.name}.*.link"):  # a killed writer's (the caller holds the lock)
        leftover.unlink()
    tmp = new_temp(path.parent, f".{path.name}.", ".link")
    tmp.unlink()
    os.symlink(target, tmp)
    os.replace(tmp, path)


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


def is_locked(path: str | Path) -> bool:
    """Whether a live process holds an exclusive flock on `path` (a run's lock: pipeline.training.jobs.run_lock),
    probed with a shared lock taken without waiting and dropped at once. A job trying to take the lock
    in that instant would find it held; a missing file, or a file system without locks, is not locked."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)  # drops the probe's lock
    return False


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
