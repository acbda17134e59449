"""A run's training recipe: optimizer, schedule, loss, batch regularisation, weight averaging, seed,
lr finding and extra targets, read from config, named, and turned into fastai's own pieces.

Fastai's way throughout: the optimizer is the Learner's `opt_func`, the loss its `loss_func`, MixUp,
CutMix and weight averaging are callbacks, and the schedules are fastai's fit methods
(pipeline.training.learner.fit). The recipe is part of every RunSpec, so it is part of the run's
identity hash and of the prediction file's run_spec.

Config: the groups conf/optimizer/, conf/schedule/, conf/loss/ and the keys train.seed, train.lr,
train.mixup*, train.ema* (conf/config.yaml), data.aux_targets and data.aux_weights (conf/data/).
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from pipeline.config import (
    RECIPE_OPTIONS,
    REFERENCE_RECIPE,
    AdamConfig,
    CrossEntropyConfig,
    FineTuneConfig,
    changed_params,
    to_container,
)
from pipeline.errors import PipelineError

if TYPE_CHECKING:
    from fastai.callback.core import Callback

# conf/optimizer/<name>.yaml -> fastai.optimizer's function
OPTIMIZERS = {
    "adam": "Adam",
    "sgd": "SGD",
    "rmsprop": "RMSProp",
    "radam": "RAdam",
    "qhadam": "QHAdam",
    "lamb": "Lamb",
    "ranger": "ranger",
}


@dataclass(frozen=True)
class Recipe:
    """How a run trains, beyond its model file. The defaults are the reference recipe (fast.ai lesson 7)."""

    optimizer: dict[str, Any] = field(default_factory=lambda: asdict(AdamConfig()))
    schedule: dict[str, Any] = field(default_factory=lambda: asdict(FineTuneConfig()))
    loss: dict[str, Any] = field(default_factory=lambda: asdict(CrossEntropyConfig()))
    mixup: str = "none"  # none | mixup | cutmix
    mixup_alpha: float | None = None  # None: fastai's default for the kind
    ema: bool = False
    ema_decay: float = 0.9999
    ema_warmup: bool = True
    lr_find: bool = False
    lr_find_steps: int = 100
    seed: int | None = None
    aux_targets: dict[str, float] = field(default_factory=dict)  # train.csv column -> loss weight, in order


def recipe_from_config(cfg: Any) -> Recipe:
    """The recipe of a train config; bad values are one clear line."""
    train, data = cfg.train, cfg.data
    lr = train.lr
    if isinstance(lr, str) and lr != "find":
        raise PipelineError(f"train.lr must be a number or find, got {lr!r}")
    return Recipe(
        optimizer=to_container(cfg.optimizer),
        schedule=to_container(cfg.schedule),
        loss=to_container(cfg.loss),
        mixup=str(train.mixup),
        mixup_alpha=train.mixup_alpha,
        ema=train.ema,
        ema_decay=train.ema_decay,
        ema_warmup=train.ema_warmup,
        lr_find=lr == "find",
        lr_find_steps=train.lr_find_steps,
        seed=train.seed,
        aux_targets=aux_weights(list(data.aux_targets), dict(data.aux_weights), data.id_column, data.label_column),
    )


def aux_weights(names: list[str], weights: dict[str, float], id_column: str, label_column: str) -> dict[str, float]:
    """data.aux_targets with their data.aux_weights (default 1), checked. The label column (the label
    folders) is the main target and the id column the key, so neither can be an extra target."""
    if label_column in names or id_column in names:
        raise PipelineError(
            f"data.aux_targets lists {label_column!r} or {id_column!r}: the label folders are the main target "
            f"and {id_column} the key; list other columns of data.train_csv"
        )
    if len(set(names)) < len(names):
        raise PipelineError(f"data.aux_targets lists a column twice: {names}")
    if unknown := sorted(set(weights) - set(names)):
        raise PipelineError(f"data.aux_weights names {unknown}, which data.aux_targets {names} does not list")
    if negative := {k: w for k, w in weights.items() if w < 0}:
        raise PipelineError(f"data.aux_weights must not be negative, got {negative}")
    return {name: float(weights.get(name, 1.0)) for name in names}


def _num(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else format(value, "g")


def _option_tag(group: str, chosen: dict[str, Any]) -> str:
    changed = changed_params(group, chosen)
    if chosen["name"] == REFERENCE_RECIPE[group] and not changed:
        return ""
    return chosen["name"] + "".join(f"-{k}{_num(v)}" for k, v in changed.items())


def recipe_tag(recipe: Recipe) -> str:
    """What differs from the reference recipe, for run names: '' for the reference recipe, else e.g.
    '_ranger_ls0.1', '_sgd-mom0.8_flat_cos_cutmix_ema_seed1_aux-variety'."""
    reference = Recipe()
    parts = [_option_tag("optimizer", recipe.optimizer), _option_tag("schedule", recipe.schedule)]
    if recipe.loss["name"] == "label_smoothing":
        parts.append(f"ls{_num(recipe.loss['eps'])}")
    else:
        parts.append(_option_tag("loss", recipe.loss))
    if recipe.mixup != "none":
        parts.append(recipe.mixup + ("" if recipe.mixup_alpha is None else _num(recipe.mixup_alpha)))
    if recipe.ema:
        decay = "" if recipe.ema_decay == reference.ema_decay else _num(recipe.ema_decay)
        parts.append(f"ema{decay}" + ("" if recipe.ema_warmup else "-nowarmup"))
    if recipe.lr_find:
        parts.append("lrfind" + ("" if recipe.lr_find_steps == reference.lr_find_steps else str(recipe.lr_find_steps)))
    if recipe.seed is not None:
        parts.append(f"seed{recipe.seed}")
    parts += [f"aux-{name}" + ("" if w == 1 else _num(w)) for name, w in recipe.aux_targets.items()]
    return "".join(f"_{p}" for p in parts if p)


def optimizer_function(recipe: Recipe) -> Any:
    """fastai's optimizer function with the recipe's hyper-parameters: the Learner's opt_func."""
    from functools import partial

    import fastai.optimizer

    params = dict(recipe.optimizer)
    name = params.pop("name")
    if name not in OPTIMIZERS:
        raise PipelineError(f"unknown optimizer {name!r}: choose one of {', '.join(OPTIMIZERS)} (conf/optimizer/)")
    function = getattr(fastai.optimizer, OPTIMIZERS[name])
    takes = set(inspect.signature(function).parameters) - {"params", "lr"}
    if name == "ranger":  # ranger passes its other keywords on to RAdam
        takes |= set(inspect.signature(fastai.optimizer.RAdam).parameters) - {"params", "lr"}
    if unknown := sorted(set(params) - takes):
        raise PipelineError(f"optimizer {name} does not take {unknown}: it takes {sorted(takes)}")
    return partial(function, **params)


def base_loss(recipe: Recipe) -> Any:
    """A new instance of the recipe's loss for one target (fastai's flat losses: activation softmax)."""
    from fastai.losses import CrossEntropyLossFlat, LabelSmoothingCrossEntropyFlat

    name = recipe.loss["name"]
    if name == "cross_entropy":
        return CrossEntropyLossFlat()
    if name == "label_smoothing":
        return LabelSmoothingCrossEntropyFlat(eps=recipe.loss["eps"])
    raise PipelineError(f"unknown loss {name!r}: choose one of {', '.join(RECIPE_OPTIONS['loss'])} (conf/loss/)")


def recipe_callbacks(recipe: Recipe, n_targets: int = 1) -> list[Callback]:
    """The recipe's fastai callbacks: MixUp or CutMix (their multi-target versions when the data has
    extra targets), and the weight average."""
    cbs: list[Callback] = []
    if recipe.mixup != "none":
        from fastai.callback.mixup import CutMix, MixUp

        if n_targets > 1:
            from pipeline.training.callbacks import CutMixTargets as CutMix
            from pipeline.training.callbacks import MixUpTargets as MixUp

        kind = {"mixup": MixUp, "cutmix": CutMix}[recipe.mixup]
        cbs.append(kind() if recipe.mixup_alpha is None else kind(alpha=recipe.mixup_alpha))
    if recipe.ema:
        from pipeline.training.callbacks import WeightAverage

        cbs.append(WeightAverage(recipe.ema_decay, recipe.ema_warmup))
    return cbs


@contextmanager
def seeded(seed: int | None) -> Iterator[None]:
    """fastai's set_seed (torch, numpy, Python, and cuDNN deterministic) for a seeded run; cuDNN's
    flags are restored after it, so later unseeded runs of the job keep cuDNN's fast search."""
    if seed is None:
        yield
        return
    import torch
    from fastai.torch_core import set_seed

    flags = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    set_seed(seed, reproducible=True)
    try:
        yield
    finally:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = flags
