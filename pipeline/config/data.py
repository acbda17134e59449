"""data: the competition's folder and how its training images are split (conf/data/)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from omegaconf import MISSING

from pipeline.config.ranges import NON_NEGATIVE, OPEN_FRACTION, Range, ranged


class SplitStrategy(StrEnum):
    random = "random"
    holdout = "holdout"
    kfold = "kfold"


@dataclass
class DataConfig:
    name: str = MISSING
    root: str = MISSING
    competition: str = "paddy-disease-classification"
    split: SplitStrategy = SplitStrategy.holdout
    valid_pct: float = ranged(0.2, OPEN_FRACTION)
    folds: int = ranged(5, Range(2))
    seed: int | None = ranged(42, NON_NEGATIVE)
    num_workers: int | None = ranged(None, NON_NEGATIVE)
    test_labels: str | None = None
    aux_targets: list[str] = field(default_factory=list)
    aux_weights: dict[str, float] = ranged(allowed=NON_NEGATIVE, default_factory=dict)
    # Beyond the label folders (pipeline/training/teachers.py, pipeline/data/soft_targets.py): a blend's CSV
    # whose confident test images join training, and a CSV of training images left out of training.
    pseudo: str | None = None
    pseudo_threshold: float = ranged(0.9, Range(0, 1, low_open=True))
    pseudo_hard: bool = False
    pseudo_cap_per_class: int = ranged(0, NON_NEGATIVE)
    exclude: str | None = None
    # The competition's layout inside root and its CSV columns (Paddy's; pipeline/data/layout.py checks them).
    train_dir: str = "train_images"
    test_dir: str = "test_images"
    sample_submission: str = "sample_submission.csv"
    train_csv: str = "train.csv"
    id_column: str = "image_id"
    label_column: str = "label"
