"""Content hashes of a competition's files, each file read once: the hashes are kept in a small index
(`<perf.cache_dir>/file-hashes-<folder>.json`), keyed by each file's absolute path, size, mtime, ctime and
inode. The key only decides whether a file must be read again; what callers get is always the hash of its
bytes, so a copy of the same files elsewhere (Kaggle's /kaggle/input) hashes the same.

ctime is in the key because no tool sets it: a file rewritten with the same size and its old mtime put
back (cp -p, rsync -t, os.utime) still gets a new ctime, so it is read again.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path

from pipeline.fileio import atomic_path

log = logging.getLogger(__name__)

VERSION = 1


def index_path(cache_dir: str | Path, root: Path) -> Path:
    """The hash index of the data folder `root`: one per folder, so that folders do not rewrite each other's."""
    folder = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:12]
    return Path(cache_dir) / f"file-hashes-{folder}.json"


def _key(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def _read_index(index: Path) -> dict[str, list]:
    """The index's entries, or none if it is missing or unreadable (then every file is hashed again)."""
    try:
        data = json.loads(index.read_text())
        return data["files"] if data.get("version") == VERSION and isinstance(data["files"], dict) else {}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def hash_file(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def content_hashes(files: Sequence[Path], index: Path | None = None) -> list[str]:
    """The sha256 of each file's bytes, in order; with `index`, read from it for files unchanged since
    they were hashed, and the index rewritten (atomically) to hold exactly these files when any of them
    was hashed anew or it held others (removed images do not pile up)."""
    old = _read_index(index) if index else {}
    entries, fresh = {}, 0
    for f in files:
        name, key = str(f.resolve()), _key(f)
        entry = old.get(name)
        if not (isinstance(entry, list) and entry[:-1] == key):
            entry, fresh = [*key, hash_file(f)], fresh + 1
        entries[name] = entry
    if index and (fresh or old.keys() != entries.keys()):
        _write_index(index, entries)
    return [entry[-1] for entry in entries.values()]


def _write_index(index: Path, entries: dict[str, list]) -> None:
    try:
        index.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(index) as tmp:
            tmp.write_text(json.dumps({"version": VERSION, "files": entries}))
    except OSError as e:  # a read-only cache folder costs the next scan a re-read, nothing else
        log.warning("could not keep the file hashes in %s (%s): they are computed again next time", index, e)
