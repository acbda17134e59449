"""The optimizer registry (conf/optimizer/): each option's schema, its fastai optimizer function and a
line of description. The Learner's `opt_func` is `opt_func(recipe.optimizer)`.

The schemas' defaults are fastai's own (SGD's momentum aside), the reference values a run's name tag is
compared with (pipeline.training.recipe.recipe_tag)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from pipeline.config.ranges import COUNT, MOMENTUM, NON_NEGATIVE, POSITIVE, Range, ranged
from pipeline.config.recipe import OptimizerConfig
from pipeline.errors import PipelineError
from pipeline.registry import Registry

OPTIMIZERS: Registry[str] = Registry("optimizer", where="conf/optimizer/", group="optimizer")


@dataclass
class AdamConfig(OptimizerConfig):
    name: str = "adam"
    mom: float = ranged(0.9, MOMENTUM)
    sqr_mom: float = ranged(0.99, MOMENTUM)
    eps: float = ranged(1e-5, POSITIVE)
    wd: float = ranged(0.01, NON_NEGATIVE)


@dataclass
class SGDConfig(OptimizerConfig):
    name: str = "sgd"
    mom: float = ranged(0.9, MOMENTUM)


@dataclass
class RMSPropConfig(OptimizerConfig):
    name: str = "rmsprop"
    mom: float = ranged(0.0, MOMENTUM)
    sqr_mom: float = ranged(0.99, MOMENTUM)
    eps: float = ranged(1e-8, POSITIVE)


@dataclass
class RAdamConfig(OptimizerConfig):
    name: str = "radam"
    mom: float = ranged(0.9, MOMENTUM)
    sqr_mom: float = ranged(0.99, MOMENTUM)
    eps: float = ranged(1e-5, POSITIVE)
    beta: float = ranged(0.0, NON_NEGATIVE)


@dataclass
class QHAdamConfig(OptimizerConfig):
    name: str = "qhadam"
    mom: float = ranged(0.999, MOMENTUM)
    sqr_mom: float = ranged(0.999, MOMENTUM)
    nu_1: float = ranged(0.7, Range(0, 1))
    nu_2: float = ranged(1.0, Range(0, 1))
    eps: float = ranged(1e-8, POSITIVE)


@dataclass
class LambConfig(OptimizerConfig):
    name: str = "lamb"
    mom: float = ranged(0.9, MOMENTUM)
    sqr_mom: float = ranged(0.99, MOMENTUM)
    eps: float = ranged(1e-5, POSITIVE)


@dataclass
class RangerConfig(OptimizerConfig):
    name: str = "ranger"
    mom: float = ranged(0.95, MOMENTUM)
    sqr_mom: float = ranged(0.99, MOMENTUM)
    eps: float = ranged(1e-6, POSITIVE)
    beta: float = ranged(0.0, NON_NEGATIVE)
    k: int = ranged(6, COUNT)
    alpha: float = ranged(0.5, Range(0, 1, low_open=True))
    wd: float = ranged(0.01, NON_NEGATIVE)


# The builder is the name of the function in fastai.optimizer, imported when a Learner is built.
OPTIMIZERS.add("adam", "Adam", "Adam (beta1 mom, beta2 sqr_mom): the reference recipe's", AdamConfig)
OPTIMIZERS.add("sgd", "SGD", "SGD with momentum", SGDConfig)
OPTIMIZERS.add("rmsprop", "RMSProp", "RMSProp", RMSPropConfig)
OPTIMIZERS.add("radam", "RAdam", "Rectified Adam: no warm-up needed", RAdamConfig)
OPTIMIZERS.add("qhadam", "QHAdam", "quasi-hyperbolic Adam", QHAdamConfig)
OPTIMIZERS.add("lamb", "Lamb", "LAMB: layer-wise adaptive steps, for large batches", LambConfig)
OPTIMIZERS.add("ranger", "ranger", "Ranger: RAdam with Lookahead (k steps, alpha)", RangerConfig)


def opt_func(chosen: dict[str, Any]) -> Callable[..., Any]:
    """fastai's optimizer function with the chosen option's hyper-parameters: the Learner's opt_func."""
    import fastai.optimizer

    params = dict(chosen)
    entry = OPTIMIZERS[params.pop("name")]
    function = getattr(fastai.optimizer, entry.build)
    takes = set(inspect.signature(function).parameters) - {"params", "lr"}
    if entry.name == "ranger":  # ranger passes its other keywords on to RAdam
        takes |= set(inspect.signature(fastai.optimizer.RAdam).parameters) - {"params", "lr"}
    if unknown := sorted(set(params) - takes):
        raise PipelineError(f"optimizer {entry.name} does not take {unknown}: it takes {sorted(takes)}")
    return partial(function, **params)
