"""Train/validation splits of the training images, deterministic from (strategy, seed, file list).

- random: each run its own random split (the reference recipe) unless data.seed fixes it.
- holdout: one stratified split, the same for every run with the same data.seed, so runs can be
  compared and blended on the same validation images.
- kfold: k stratified folds; fold f's run holds out fold f, so a variant's k runs together
  predict every training image once (out-of-fold).
"""

from __future__ import annotations

import logging
import math
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.errors import PipelineError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Split:
    strategy: str
    seed: int
    fold: int | None
    n_folds: int | None
    n_images: int
    valid_idx: np.ndarray  # indices into the training file list

    def record(self) -> dict[str, Any]:
        """What a prediction file keeps of the split: enough to tell which runs share one."""
        return {
            "strategy": self.strategy,
            "seed": self.seed,
            "fold": self.fold,
            "n_folds": self.n_folds,
            "n_images": self.n_images,
        }


def make_split(
    labels: Sequence[str],
    strategy: str,
    *,
    valid_pct: float,
    seed: int | None,
    fold: int | None = None,
    n_folds: int | None = None,
) -> Split:
    """The validation indices of `labels` (one per training image, in file-list order)."""
    from sklearn.model_selection import StratifiedKFold, StratifiedShuffleSplit

    strategy = str(strategy)  # a SplitStrategy from the config, or its name
    n = len(labels)
    if seed is None:
        if strategy != "random":
            raise PipelineError(f"data.split={strategy} shares one split between runs: set data.seed to an integer")
        seed = secrets.randbelow(2**31)  # drawn per run, as the reference recipe, but recorded
    if strategy == "kfold":
        if fold is None or n_folds is None:
            raise ValueError("a kfold split needs fold and n_folds (resolve_runs gives every run its fold)")
    elif not 0 < valid_pct < 1:
        raise PipelineError(f"data.valid_pct must be between 0 and 1, got {valid_pct}")
    placeholder = np.zeros(n)
    unstratified = np.random.default_rng(seed).permutation(n)[: int(valid_pct * n)]
    try:
        if strategy == "random":
            valid = unstratified
        elif strategy == "holdout":
            splitter = StratifiedShuffleSplit(n_splits=1, test_size=valid_pct, random_state=seed)
            try:
                _, valid = next(splitter.split(placeholder, labels))
            except ValueError as e:  # fewer held-out images than classes: still one shared split
                log.warning("holdout split not stratified (%s): a seeded random split instead", e)
                valid = unstratified
        else:
            folds = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
            _, valid = list(folds.split(placeholder, labels))[fold]
    except ValueError as e:  # sklearn: too few images of a class for the split asked for
        raise PipelineError(
            f"data.split={strategy} is impossible on these {n} images ({e}): "
            "change data.valid_pct or data.folds, or use data.split=random"
        ) from None
    if len(valid) == 0:
        raise PipelineError(f"data.valid_pct={valid_pct} holds out no image of {n}: raise it")
    return Split(strategy, seed, fold, n_folds, n, np.sort(valid))


def check_training_batch(n: int, strategy: str, valid_pct: float, folds: int, batch_size: int) -> None:
    """Refuse, before anything is built, a split whose training part holds fewer images than one batch
    (fastai drops a last incomplete batch, so such a run would train on nothing). Counts as make_split's:
    random holds out int(valid_pct * n), holdout ceil(valid_pct * n) (sklearn), kfold at most ceil(n / folds)."""
    strategy = str(strategy)
    if strategy == "kfold":
        held, setting = math.ceil(n / folds), f"data.folds={folds}"
    else:
        held = (math.ceil if strategy == "holdout" else int)(valid_pct * n)
        setting = f"data.valid_pct={valid_pct:g}"
    if n - held < batch_size:
        raise PipelineError(
            f"{setting} holds out {held} of the {n} training images, leaving {n - held} to train on, fewer than "
            f"one batch of {batch_size}: lower {setting.split('=')[0]} or model.batch_size"
        )
