"""blend.weighting=stack: a learned combiner over the members' validation (out-of-fold) probabilities.

A multinomial logistic regression (scikit-learn) whose inputs are every member's log-probabilities side
by side, so it can learn what no weighted mean can: that one run is to be trusted on some classes and
another on others, or that a run's "class a" usually means class b. Its regularisation C is chosen from
blend.stack.C by a stratified inner cross-validation on validation log loss. Like every weighting it is
scored by the nested estimate (fitted on one half of the validation images, scored on the other), which
is where a stacker that memorised its images shows: Cassava's winners found one that did not generalise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.ensemble.arithmetic import as_probs
from pipeline.ensemble.combiners import Unfittable

# Probabilities are floored here before the log: a float32 softmax can reach 1e-38, whose log (-87) is noise
# that would dominate the regression's inputs; below 1e-6 a run has ruled a class out either way.
FLOOR = 1e-6
MAX_ITER = 1000  # lbfgs iterations: the default 100 stops short on the weakly regularised end of the grid


def features(stack: np.ndarray) -> np.ndarray:
    """(members, images, classes) -> (images, members * classes): each member's log-probabilities."""
    logs = np.log(np.clip(stack.astype(np.float64), FLOOR, 1.0))
    return logs.transpose(1, 0, 2).reshape(stack.shape[1], -1)


@dataclass(frozen=True)
class Stacker:
    """A fitted logistic regression as a combiner: no weights to show."""

    model: Any  # sklearn.linear_model.LogisticRegression, refitted on all the images with the chosen C
    C: float
    folds: int
    weights: None = None

    def probs(self, stack: np.ndarray) -> np.ndarray:
        return as_probs(self.model.predict_proba(features(stack)))

    def describe(self) -> str:
        return f"logistic regression, C={self.C:g} ({self.folds}-fold inner CV)"


def fit_stacker(stack: np.ndarray, targets: np.ndarray, *, folds: int, grid: list[float], seed: int) -> Stacker:
    """The logistic regression with the C of `grid` that scores the lowest log loss in a stratified
    `folds`-fold cross-validation on these images, refitted on all of them. Unfittable when a class has
    fewer than `folds` of them: the inner folds could not all hold it, nor the model learn it."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, StratifiedKFold

    counts = np.bincount(targets, minlength=stack.shape[2])
    if (short := int((counts < folds).sum())) > 0:
        raise Unfittable(
            f"{short} of {len(counts)} classes have fewer than blend.stack.folds={folds} of the {len(targets)} "
            f"images it is fitted on (the rarest: {int(counts.min())})"
        )
    search = GridSearchCV(
        LogisticRegression(max_iter=MAX_ITER),
        {"C": grid},
        scoring="neg_log_loss",
        cv=StratifiedKFold(folds, shuffle=True, random_state=seed),
    )
    search.fit(features(stack), targets)
    return Stacker(search.best_estimator_, float(search.best_params_["C"]), folds)
