"""Cleaning labels as a config change (data.exclude): a CSV of training images left out of training.

The CSV has an `image` column of training-image ids, paths under data.train_dir (label folder/file name,
as prediction files' valid_ids name them): the label review's `<blend>.suspects.csv` has that column, and
so does a list a user writes. The images stay in validation, so that a cleaned run is scored and blended on
the same images as the runs it is compared with; the list joins the run hash's data fingerprint
(Competition.fingerprint_for), so that a new list retrains and removing it undoes the cleaning.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pandas as pd

from pipeline.data.competition import Competition
from pipeline.errors import PipelineError

COLUMN = "image"


def read_exclude(csv: str | Path, comp: Competition) -> frozenset[str]:
    """The training-image ids `csv` lists, each checked to be one of `comp`'s; one line for a missing or
    unreadable file, a missing column, or an id that is no training image."""
    path = Path(csv)
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except FileNotFoundError:
        raise PipelineError(f"data.exclude={csv}: no such file (a CSV with an {COLUMN!r} column)") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as e:
        raise PipelineError(f"data.exclude={csv} is not a readable CSV ({e})") from None
    if COLUMN not in table.columns:
        raise PipelineError(
            f"data.exclude={csv} has no {COLUMN!r} column (its columns: {', '.join(table.columns)}): list the "
            f"training images to leave out in a column {COLUMN!r}, as paths under {comp.layout.train_dir}/"
        )
    ids = {i.strip() for i in table[COLUMN]} - {""}
    known = {comp.image_id(f) for f in comp.train_files}
    if unknown := sorted(ids - known):
        raise PipelineError(
            f"data.exclude={csv} lists {len(unknown)} image(s) that are not training images of {comp.root} "
            f"(e.g. {unknown[0]!r}): name each by its path under {comp.layout.train_dir}/, e.g. {sorted(known)[0]}"
        )
    return frozenset(ids)


def excluding(comp: Competition, csv: str | Path | None) -> Competition:
    """`comp` with data.exclude's images marked left out of training (itself when there is no list)."""
    if not csv:
        return comp
    return replace(comp, excluded=read_exclude(csv, comp))
