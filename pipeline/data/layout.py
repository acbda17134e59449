"""A competition's shape as data (the data.* keys of conf/data/): where its files are inside data.root and
which columns its CSVs use. Every image competition of the same shape (label folders of training images,
a folder of test images, a sample submission of id,label rows) is a conf/data/ file, not a code change.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath, PureWindowsPath
from typing import TYPE_CHECKING

from pipeline.errors import PipelineError

if TYPE_CHECKING:
    from pipeline.config import DataConfig

FOLDERS_AND_FILES = ("train_dir", "test_dir", "sample_submission", "train_csv")
COLUMNS = ("id_column", "label_column")
KEYS = FOLDERS_AND_FILES + COLUMNS  # the data.* keys a Layout is made of


@dataclass(frozen=True)
class Layout:
    """The defaults are Paddy Doctor's, as Kaggle ships it (pipeline/config/data.py: DataConfig has the same)."""

    train_dir: str = "train_images"  # <train_dir>/<label>/<image>: the label folders
    test_dir: str = "test_images"  # <test_dir>/<image>
    sample_submission: str = "sample_submission.csv"  # id,label rows: the test images, in submission order
    train_csv: str = "train.csv"  # optional: a row per training image, for data.aux_targets
    id_column: str = "image_id"  # the image file name, in the sample submission and train.csv
    label_column: str = "label"  # the label, in the sample submission and train.csv

    def __post_init__(self) -> None:
        for key in FOLDERS_AND_FILES:
            check_relative(f"data.{key}", getattr(self, key))
        for key in COLUMNS:
            if not getattr(self, key).strip():
                raise PipelineError(f"data.{key} must name a CSV column, got {getattr(self, key)!r}")
        if self.id_column == self.label_column:
            raise PipelineError(f"data.id_column and data.label_column are both {self.id_column!r}: name two columns")

    @classmethod
    def from_config(cls, data: DataConfig) -> Layout:
        """The layout of a data config (cfg.data); a bad name is one clear line."""
        return cls(**{key: str(data[key]) for key in KEYS})

    @property
    def columns(self) -> list[str]:
        """The sample submission's columns, in order: every submission and test-label CSV has them."""
        return [self.id_column, self.label_column]


def check_relative(key: str, value: str) -> None:
    """A layout name must stay inside data.root: relative, without "..", and naming something below it.
    Both path flavours are checked, so a config written on Windows fails the same way everywhere."""
    for flavour in (PurePosixPath, PureWindowsPath):
        path = flavour(value)
        if path.anchor or ".." in path.parts or not path.parts:  # an anchor ("/", "C:"): absolute somewhere
            raise PipelineError(
                f"{key} must be a relative path inside data.root (no '..', not absolute), got {value!r}"
            )


PADDY = Layout()
