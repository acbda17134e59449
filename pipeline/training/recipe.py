"""A run's training recipe: optimizer, schedule, loss, batch regularisation, weight averaging, seed,
lr finding and extra targets, read from config, named, and turned into fastai's own pieces.

Fastai's way throughout: the optimizer is the Learner's `opt_func` (pipeline.training.optimizers), the
loss its `loss_func` (losses), MixUp, CutMix and weight averaging are callbacks, and the schedules are
fastai's fit methods (schedules). The recipe is part of every RunSpec, so it is part of the run's
identity hash and of the prediction file's run_spec.

Config: the groups conf/optimizer/, conf/schedule/, conf/loss/ and the keys train.seed, train.lr,
train.mixup*, train.ema* (conf/config.yaml), data.aux_targets, data.aux_weights and data.pseudo* (conf/data/).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pipeline.config import TrainAppConfig, to_container
from pipeline.errors import PipelineError
from pipeline.registry import Registry
from pipeline.training.losses import LOSSES
from pipeline.training.optimizers import OPTIMIZERS
from pipeline.training.schedules import SCHEDULES

if TYPE_CHECKING:
    from fastai.callback.core import Callback

GROUPS: dict[str, Registry[Any]] = {"optimizer": OPTIMIZERS, "schedule": SCHEDULES, "loss": LOSSES}
REFERENCE_RECIPE = {"optimizer": "adam", "schedule": "fine_tune", "loss": "cross_entropy"}  # config.yaml's defaults


def _reference(group: str) -> Callable[[], dict[str, Any]]:
    return lambda: GROUPS[group][REFERENCE_RECIPE[group]].defaults()


@dataclass(frozen=True)
class Recipe:
    """How a run trains, beyond its model file. The defaults are the reference recipe (fast.ai lesson 7)."""

    optimizer: dict[str, Any] = field(default_factory=_reference("optimizer"))
    schedule: dict[str, Any] = field(default_factory=_reference("schedule"))
    loss: dict[str, Any] = field(default_factory=_reference("loss"))
    mixup: str = "none"  # none | mixup | cutmix
    mixup_alpha: float | None = None  # None: fastai's default for the kind
    ema: bool = False
    ema_decay: float = 0.9999
    ema_warmup: bool = True
    lr_find: bool = False
    lr_find_steps: int = 100
    seed: int | None = None
    aux_targets: dict[str, float] = field(default_factory=dict)  # train.csv column -> loss weight, in order
    # data.pseudo's settings (threshold, hard, cap_per_class); empty: no pseudo-labels. The blend itself is
    # named by data.pseudo and joins the run hash by its content (pipeline.training.teachers)
    pseudo: dict[str, Any] = field(default_factory=dict)


def recipe_from_config(cfg: TrainAppConfig) -> Recipe:
    """The recipe of a train config; bad values are one clear line."""
    train, data = cfg.train, cfg.data
    if isinstance(train.lr, str) and train.lr != "find":
        raise PipelineError(f"train.lr must be a number or find, got {train.lr!r}")
    for group, registry in GROUPS.items():
        registry[cfg[group].name]  # an option no registry knows (a schema-less file) is refused here
    return Recipe(
        optimizer=to_container(cfg.optimizer),
        schedule=to_container(cfg.schedule),
        loss=to_container(cfg.loss),
        mixup=str(train.mixup),
        mixup_alpha=train.mixup_alpha,
        ema=train.ema,
        ema_decay=train.ema_decay,
        ema_warmup=train.ema_warmup,
        lr_find=train.lr == "find",
        lr_find_steps=train.lr_find_steps,
        seed=train.seed,
        aux_targets=aux_weights(list(data.aux_targets), dict(data.aux_weights), data.id_column, data.label_column),
        pseudo=pseudo_settings(data),
    )


def pseudo_settings(data: Any) -> dict[str, Any]:
    """data.pseudo's settings as the recipe keeps them; {} without data.pseudo."""
    if not data.get("pseudo"):
        return {}
    if data.aux_targets:
        raise PipelineError(
            "data.pseudo with data.aux_targets: pseudo-labelled test images have no train.csv row for the extra "
            "targets; drop one of them"
        )
    return {"threshold": data.pseudo_threshold, "hard": data.pseudo_hard, "cap_per_class": data.pseudo_cap_per_class}


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
    return {name: float(weights.get(name, 1.0)) for name in names}


def _num(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else format(value, "g")


def option_tag(group: str, chosen: dict[str, Any]) -> str:
    """How a run's name shows a group's option: '' for the reference option at its defaults."""
    entry = GROUPS[group][chosen["name"]]
    changed = entry.changed(chosen)
    if entry.tag:
        return entry.tag(chosen)
    if chosen["name"] == REFERENCE_RECIPE[group] and not changed:
        return ""
    return chosen["name"] + "".join(f"-{k}{_num(v)}" for k, v in changed.items())


@dataclass(frozen=True)
class Extra:
    """A recipe key beyond the groups, as a run's name tag and as the tables' extras column show it."""

    used: Callable[[Recipe], bool]
    tag: Callable[[Recipe], str]
    column: Callable[[Recipe], str]


def _alpha(r: Recipe, sep: str) -> str:
    return "" if r.mixup_alpha is None else sep + _num(r.mixup_alpha)


def _pseudo_options(r: Recipe, sep: str, space: str) -> str:
    hard = f"{sep}hard" if r.pseudo["hard"] else ""
    return hard + (f"{sep}cap{space}{r.pseudo['cap_per_class']}" if r.pseudo["cap_per_class"] else "")


# The extras in the order a run's name shows them; adding a recipe key is one entry here.
EXTRAS: dict[str, Extra] = {
    "mixup": Extra(lambda r: r.mixup != "none", lambda r: r.mixup + _alpha(r, ""), lambda r: r.mixup + _alpha(r, " ")),
    "ema": Extra(
        lambda r: r.ema,
        lambda r: (
            "ema"
            + ("" if r.ema_decay == Recipe.ema_decay else _num(r.ema_decay))
            + ("" if r.ema_warmup else "-nowarmup")
        ),
        lambda r: f"ema {r.ema_decay}",
    ),
    "lr_find": Extra(
        lambda r: r.lr_find,
        lambda r: "lrfind" + ("" if r.lr_find_steps == Recipe.lr_find_steps else str(r.lr_find_steps)),
        lambda r: "lr find",
    ),
    "seed": Extra(lambda r: r.seed is not None, lambda r: f"seed{r.seed}", lambda r: f"seed {r.seed}"),
    "pseudo": Extra(
        lambda r: bool(r.pseudo),
        lambda r: f"pl{_num(r.pseudo['threshold'])}" + _pseudo_options(r, "-", ""),
        lambda r: f"pseudo >= {_num(r.pseudo['threshold'])}" + _pseudo_options(r, " ", " "),
    ),
    "aux_targets": Extra(
        lambda r: bool(r.aux_targets),
        lambda r: "_".join(f"aux-{n}" + ("" if w == 1 else _num(w)) for n, w in r.aux_targets.items()),
        lambda r: ", ".join(f"+{n}" + ("" if w == 1 else f" x{w}") for n, w in r.aux_targets.items()),
    ),
}


def recipe_tag(recipe: Recipe) -> str:
    """What differs from the reference recipe, for run names: '' for the reference recipe, else e.g.
    '_ranger_ls0.1', '_sgd-mom0.8_flat_cos_cutmix_ema_seed1_aux-variety'."""
    parts = [option_tag(group, getattr(recipe, group)) for group in GROUPS]
    parts += [extra.tag(recipe) for extra in EXTRAS.values() if extra.used(recipe)]
    return "".join(f"_{p}" for p in parts if p)


def recipe_columns(recipe: Recipe) -> dict[str, str]:
    """The recipe as short table columns (the training table, and the blend report through the
    prediction file): each group's option with the hyper-parameters that differ, and the extras."""

    def option(group: str) -> str:
        chosen = getattr(recipe, group)
        changed = GROUPS[group][chosen["name"]].changed(chosen)
        return " ".join([chosen["name"], *(f"{k}={v}" for k, v in changed.items())])

    extras = [extra.column(recipe) for extra in EXTRAS.values() if extra.used(recipe)]
    return {group: option(group) for group in GROUPS} | {"extras": ", ".join(extras) or "-"}


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
