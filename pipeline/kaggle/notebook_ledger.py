"""The local record of the Kaggle notebooks this project pushed: one JSON file, rewritten atomically.

One entry per notebook (owner/slug): the job it trains, its runs and their hashes, the code it ran,
every session pushed (version, status, seconds), its status and what came home. A later sweep reads it
to follow a notebook still running instead of pushing it again; `python -m pipeline.kernels` prints it.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipeline.errors import PipelineError
from pipeline.fileio import write_atomic
from pipeline.tables import format_table

# Notebook status: Kaggle is still working on its latest session.
ACTIVE = ("queued", "running")


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def read(path: str | Path) -> dict[str, dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())["notebooks"]
    except (ValueError, KeyError, TypeError) as e:
        raise PipelineError(f"the notebook ledger {path} is not readable ({e}): move it away") from None


def update(path: str | Path, ref: str, **fields: Any) -> dict[str, Any]:
    """Set fields of notebook `ref`'s entry (created if new); returns the entry."""
    notebooks = read(path)
    entry = notebooks.setdefault(ref, {"ref": ref, "sessions": [], "home": []})
    entry.update(fields, updated=now())
    write_atomic(path, json.dumps({"notebooks": notebooks}, indent=1))
    return entry


def _short(text: str, width: int = 48) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def gpu_hours(entry: dict[str, Any]) -> float:
    """The sessions' own wall time (start-up on Kaggle's side not included)."""
    return sum(s.get("seconds") or 0 for s in entry["sessions"]) / 3600


def table(path: str | Path, refs: list[str] | None = None) -> str:
    """The notebooks (all, or `refs`), oldest first."""
    notebooks = read(path)
    entries = [notebooks[r] for r in refs if r in notebooks] if refs is not None else list(notebooks.values())
    if not entries:
        return f"no Kaggle notebooks recorded in {path}"
    rows = [
        {
            "notebook": e["ref"],
            "job": _short(e.get("job", "")),
            "sessions": len(e["sessions"]),
            "status": e.get("status", ""),
            "GPU h": f"{gpu_hours(e):.2f}",
            "home": f"{len(e['home'])}/{len(e.get('runs', {}))}",
            "updated": e.get("updated", ""),
        }
        for e in entries
    ]
    total = sum(gpu_hours(e) for e in entries)
    return format_table(rows) + f"\n({len(entries)} notebooks, {total:.2f} GPU hours; ledger: {path})"
