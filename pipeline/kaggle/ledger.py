"""The local log of Kaggle submissions: one CSV row per upload, rewritten atomically on every change."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from pipeline.fileio import read_table, write_atomic

COLUMNS = ["time", "competition", "file", "sha256", "message", "runs", "ref", "status", "public_score"]


def read(path: str | Path) -> pd.DataFrame:
    """Every recorded submission, oldest first; empty when nothing was recorded yet."""
    path = Path(path)
    if not path.is_file():
        return pd.DataFrame(columns=COLUMNS, dtype=str)
    return read_table(path, "submissions log", COLUMNS, fix="move it away")


def _write(path: Path, df: pd.DataFrame) -> None:
    write_atomic(path, df.to_csv(index=False))


def append(path: str | Path, row: dict[str, str]) -> None:
    path = Path(path)
    df = read(path)
    _write(path, pd.concat([df, pd.DataFrame([row], columns=COLUMNS, dtype=str)], ignore_index=True))


def update(path: str | Path, competition: str, ref: str, **values: str) -> None:
    """Set columns of the row of submission `ref` (e.g. its status and score once Kaggle has scored it)."""
    path = Path(path)
    df = read(path)
    mask = (df.competition == competition) & (df.ref == ref)
    for column, value in values.items():
        df.loc[mask, column] = value
    _write(path, df)


def find(path: str | Path, competition: str, sha256: str) -> pd.DataFrame:
    """Earlier submissions of the same bytes to the same competition."""
    df = read(path)
    return df[(df.competition == competition) & (df.sha256 == sha256)]
