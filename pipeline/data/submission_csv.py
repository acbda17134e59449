"""Submission CSVs: read the competition's sample file, write a submission, and check one.

Their two columns are the layout's id and label columns (data.id_column, data.label_column); Paddy's
by default.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from pipeline.data.layout import PADDY, Layout
from pipeline.errors import PipelineError
from pipeline.fileio import read_table, write_atomic


def _read_csv(path: Path, what: str, layout: Layout) -> pd.DataFrame:
    df = read_table(path, what, layout.columns)
    ids = df[layout.id_column]
    dup = ids[ids.duplicated()]
    if len(dup):
        raise PipelineError(f"{what} {path} repeats {layout.id_column} {dup.iloc[0]}")
    return df


def read_sample_submission(path: str | Path, layout: Layout = PADDY) -> pd.DataFrame:
    """The competition's sample file: its rows and their order define every submission."""
    df = _read_csv(Path(path), "sample submission", layout)
    if df.empty:
        raise PipelineError(f"sample submission {path} has no rows")
    return df


def submission_text(image_ids: Sequence[str], labels: Sequence[str], layout: Layout = PADDY) -> str:
    """The CSV of a submission: the layout's id and label columns."""
    return pd.DataFrame({layout.id_column: list(image_ids), layout.label_column: list(labels)}).to_csv(index=False)


def write_submission(path: str | Path, image_ids: Sequence[str], labels: Sequence[str], layout: Layout = PADDY) -> Path:
    """Write a submission's rows atomically."""
    return write_atomic(path, submission_text(image_ids, labels, layout))


def validate_submission(
    path: str | Path,
    sample_path: str | Path,
    vocab: Sequence[str],
    *,
    same_order: bool = True,
    layout: Layout = PADDY,
) -> pd.DataFrame:
    """Check a submission against the sample file: same columns, the same image ids (in the same
    order unless `same_order` is False), and every label from `vocab`. Returns the submission."""
    sub = _read_csv(Path(path), "submission", layout)
    sample = read_sample_submission(sample_path, layout)
    sub_ids, sample_ids = sub[layout.id_column], sample[layout.id_column]
    if len(sub) != len(sample) or set(sub_ids) != set(sample_ids):
        missing = sorted(set(sample_ids) - set(sub_ids))
        extra = sorted(set(sub_ids) - set(sample_ids))
        raise PipelineError(
            f"submission {path} has {len(sub)} rows, the sample {len(sample)}: "
            f"{len(missing)} image ids missing (e.g. {missing[:1]}), {len(extra)} unknown (e.g. {extra[:1]})"
        )
    if same_order and not sub_ids.equals(sample_ids):
        raise PipelineError(f"submission {path} rows are not in the order of {sample_path}")
    labels = sub[layout.label_column]
    bad = labels[~labels.isin(list(vocab))]
    if len(bad):
        raise PipelineError(f"submission {path} has {len(bad)} label(s) outside the vocab, e.g. {bad.iloc[0]!r}")
    return sub


def accuracy_against(sub: pd.DataFrame, truth_path: str | Path, layout: Layout = PADDY) -> float:
    """Accuracy of a submission against a CSV of true labels (the layout's columns), e.g. the demo's."""
    truth = _read_csv(Path(truth_path), "test labels", layout).set_index(layout.id_column)[layout.label_column]
    ids = sub[layout.id_column]
    if not set(ids) <= set(truth.index):
        raise PipelineError(f"test labels {truth_path} do not cover every submitted image")
    return float((sub[layout.label_column].to_numpy() == truth.loc[ids].to_numpy()).mean())
