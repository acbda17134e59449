"""The weighting registry (blend.weighting, conf/blend.yaml): how a blend combines its members. Every
blend computes every weighting its members allow and scores it; blend.weighting picks the one written.

An entry's builder is a `Weighting`: its fit from the members' validation probabilities to a combiner
(pipeline.ensemble.combiners: a weighted mean, or a learned model such as stack's), and whether it is
searched on them (then it needs validation images all members share, and its honest figure is the nested
estimate, pipeline.ensemble.weight_search.cross_fitted). A fit that cannot work on the images it is given
raises combiners.Unfittable. Its options, if any, are a schema in pipeline/config/blend.py, a key
blend.<name> documented in conf/blend.yaml.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from pipeline.config.blend import GreedyConfig, StackConfig
from pipeline.ensemble.arithmetic import EPS
from pipeline.ensemble.combiners import Combiner, WeightedMean
from pipeline.errors import PipelineError
from pipeline.registry import Registry

if TYPE_CHECKING:
    from pipeline.config.blend import BlendConfig
    from pipeline.ensemble.members import Member

# (validation stack (members, images, classes), targets (images,), members, blend config) -> a combiner
Fit = Callable[[np.ndarray, np.ndarray, "list[Member]", "BlendConfig"], Combiner]
# the same, for a weighted mean: -> its weights (non-negative, any positive sum)
WeightsFit = Callable[[np.ndarray, np.ndarray, "list[Member]", "BlendConfig"], np.ndarray]


@dataclass(frozen=True)
class Weighting:
    fit: Fit
    searched: bool  # fitted on validation images: scored in-sample and by the nested estimate


def weighted_mean(weights: WeightsFit, searched: bool) -> Weighting:
    """A weighting whose combiner is the blend.mean of the members with the weights `weights` fits."""

    def fit(stack: np.ndarray, targets: np.ndarray, members: list[Member], blend: BlendConfig) -> Combiner:
        w = weights(stack, targets, members, blend)
        return WeightedMean(w / w.sum(), str(blend.mean))

    return Weighting(fit, searched)


WEIGHTINGS: Registry[Weighting] = Registry("weighting", where="blend.weighting in conf/blend.yaml")


def config_weights(members: list[Member], overrides: dict[str, float]) -> np.ndarray:
    """blend.weights by member name, else the weight the run was trained with (its variant's, default 1)."""
    unknown = set(overrides) - {m.name for m in members}
    if unknown:
        raise PipelineError(f"blend.weights names runs that are not blended: {sorted(unknown)}")
    weights = np.array([overrides.get(m.name, m.weight) for m in members], dtype=np.float64)
    if (weights < 0).any() or weights.sum() <= 0:
        raise PipelineError(f"blend weights must be non-negative with a positive sum, got {weights.tolist()}")
    return weights


def _config(stack: np.ndarray, targets: np.ndarray, members: list[Member], blend: BlendConfig) -> np.ndarray:
    return config_weights(members, dict(blend.weights))


def _equal(stack: np.ndarray, targets: np.ndarray, members: list[Member], blend: BlendConfig) -> np.ndarray:
    return np.ones(len(members))


def _greedy(stack: np.ndarray, targets: np.ndarray, members: list[Member], blend: BlendConfig) -> np.ndarray:
    from pipeline.ensemble.weight_search import greedy_weights

    options = {k: blend.greedy[k] for k in ("steps", "init", "bags", "bag_fraction")}
    return greedy_weights(stack, targets, str(blend.mean), seed=blend.seed, **options)


def _optimize(stack: np.ndarray, targets: np.ndarray, members: list[Member], blend: BlendConfig) -> np.ndarray:
    from pipeline.ensemble.weight_search import optimize_weights

    return optimize_weights(stack, targets, str(blend.mean))


def _best(stack: np.ndarray, targets: np.ndarray, members: list[Member], blend: BlendConfig) -> np.ndarray:
    """All the weight on the member with the lowest validation log loss: what blending adds over it."""
    true = np.clip(stack[:, np.arange(len(targets)), targets].astype(np.float64), EPS, 1.0)
    return np.eye(len(members))[int(np.argmin(-np.log(true).mean(1)))]


def _stack(stack: np.ndarray, targets: np.ndarray, members: list[Member], blend: BlendConfig) -> Combiner:
    from pipeline.ensemble.stacking import fit_stacker

    return fit_stacker(stack, targets, folds=blend.stack.folds, grid=list(blend.stack.C), seed=blend.seed)


WEIGHTINGS.add(
    "config", weighted_mean(_config, searched=False), "each run's weight from its model file or blend.weights"
)
WEIGHTINGS.add("equal", weighted_mean(_equal, searched=False), "every run alike: the reference recipe's plain average")
WEIGHTINGS.add(
    "greedy",
    weighted_mean(_greedy, searched=True),
    "Caruana's ensemble selection with replacement on validation log loss (blend.greedy)",
    GreedyConfig,
)
WEIGHTINGS.add(
    "optimize",
    weighted_mean(_optimize, searched=True),
    "the weights minimising validation log loss (scipy L-BFGS-B)",
)
WEIGHTINGS.add("best", weighted_mean(_best, searched=True), "the single run with the lowest validation log loss")
WEIGHTINGS.add(
    "stack",
    Weighting(_stack, searched=True),
    "a multinomial logistic regression over the runs' log-probabilities, C by inner cross-validation (blend.stack)",
    StackConfig,
)
