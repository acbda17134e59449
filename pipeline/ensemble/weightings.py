"""The weighting registry (blend.weighting, conf/blend.yaml): how a blend weighs its members. Every
blend computes every weighting its members allow and scores it; blend.weighting picks the one written.

An entry's builder is a `Weighting`: its fit from the members' validation probabilities, and whether it
is searched on them (then it needs validation images all members share, and its honest figure is the
nested estimate, pipeline.ensemble.weight_search.cross_fitted). Its options, if any, are a schema in
pipeline/config/blend.py, a key blend.<name> documented in conf/blend.yaml.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from pipeline.config.blend import GreedyConfig
from pipeline.ensemble.arithmetic import EPS
from pipeline.errors import PipelineError
from pipeline.registry import Registry

if TYPE_CHECKING:
    from pipeline.config.blend import BlendConfig
    from pipeline.ensemble.members import Member

# (validation stack (members, images, classes), targets (images,), members, blend config) -> weights
Fit = Callable[[np.ndarray, np.ndarray, "list[Member]", "BlendConfig"], np.ndarray]


@dataclass(frozen=True)
class Weighting:
    fit: Fit
    searched: bool  # fitted on validation images: scored in-sample and by the nested estimate


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


WEIGHTINGS.add("config", Weighting(_config, searched=False), "each run's weight from its model file or blend.weights")
WEIGHTINGS.add("equal", Weighting(_equal, searched=False), "every run alike: the reference recipe's plain average")
WEIGHTINGS.add(
    "greedy",
    Weighting(_greedy, searched=True),
    "Caruana's ensemble selection with replacement on validation log loss (blend.greedy)",
    GreedyConfig,
)
WEIGHTINGS.add(
    "optimize", Weighting(_optimize, searched=True), "the weights minimising validation log loss (scipy L-BFGS-B)"
)
WEIGHTINGS.add("best", Weighting(_best, searched=True), "the single run with the lowest validation log loss")
