"""Submission CSVs: read the competition's sample file, write a submission, and check one."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from pipeline.errors import PipelineError
from pipeline.fileio import atomic_path, read_table

COLUMNS = ["image_id", "label"]


def _read_csv(path: Path, what: str) -> pd.DataFrame:
    df = read_table(path, what, COLUMNS)
    dup = df.image_id[df.image_id.duplicated()]
    if len(dup):
        raise PipelineError(f"{what} {path} repeats image_id {dup.iloc[0]}")
    return df


def read_sample_submission(path: str | Path) -> pd.DataFrame:
    """The competition's sample file: its rows and their order define every submission."""
    df = _read_csv(Path(path), "sample submission")
    if df.empty:
        raise PipelineError(f"sample submission {path} has no rows")
    return df


def submission_text(image_ids: Sequence[str], labels: Sequence[str]) -> str:
    """The `image_id,label` CSV of a submission."""
    return pd.DataFrame({"image_id": list(image_ids), "label": list(labels)}).to_csv(index=False)


def write_submission(path: str | Path, image_ids: Sequence[str], labels: Sequence[str]) -> Path:
    """Write `image_id,label` rows atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(submission_text(image_ids, labels))
    return path


def validate_submission(
    path: str | Path, sample_path: str | Path, vocab: Sequence[str], *, same_order: bool = True
) -> pd.DataFrame:
    """Check a submission against the sample file: same columns, the same image ids (in the same
    order unless `same_order` is False), and every label from `vocab`. Returns the submission."""
    sub = _read_csv(Path(path), "submission")
    sample = read_sample_submission(sample_path)
    if len(sub) != len(sample) or set(sub.image_id) != set(sample.image_id):
        missing = sorted(set(sample.image_id) - set(sub.image_id))
        extra = sorted(set(sub.image_id) - set(sample.image_id))
        raise PipelineError(
            f"submission {path} has {len(sub)} rows, the sample {len(sample)}: "
            f"{len(missing)} image ids missing (e.g. {missing[:1]}), {len(extra)} unknown (e.g. {extra[:1]})"
        )
    if same_order and not sub.image_id.equals(sample.image_id):
        raise PipelineError(f"submission {path} rows are not in the order of {sample_path}")
    bad = sub.label[~sub.label.isin(list(vocab))]
    if len(bad):
        raise PipelineError(f"submission {path} has {len(bad)} label(s) outside the vocab, e.g. {bad.iloc[0]!r}")
    return sub


def accuracy_against(sub: pd.DataFrame, truth_path: str | Path) -> float:
    """Accuracy of a submission against a CSV of true labels (image_id,label), e.g. the demo's."""
    truth = _read_csv(Path(truth_path), "test labels").set_index("image_id").label
    if not set(sub.image_id) <= set(truth.index):
        raise PipelineError(f"test labels {truth_path} do not cover every submitted image")
    return float((sub.label.to_numpy() == truth.loc[sub.image_id].to_numpy()).mean())
