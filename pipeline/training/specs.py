"""Expand a model config into its runs, one per variant (one per variant and fold under
data.split=kfold), with every setting resolved.

Precedence for epochs and lr: `train.*` on the command line, then the variant, then the model
file. accum likewise, with the probe's choice (pipeline.training.memory_probe) between `train.accum` and the
variant. batch_size: the variant, then the model file. The training recipe (pipeline.training.recipe) is
the same for every run of a job; a run's name is <model>_<variant> plus the recipe's tag (what differs from
the reference recipe), so runs of different recipes keep their own prediction files.

`train.variant` and `train.fold` keep one variant, one fold or both, after the expansion: a multirun over
them (`-m train.fold=0,1,2,3,4`) gives one job per run, which a launcher can run side by side.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from pipeline.config import TTAConfig
from pipeline.errors import PipelineError
from pipeline.training.recipe import Recipe, recipe_from_config, recipe_tag

if TYPE_CHECKING:
    from pipeline.config import DataConfig, ModelConfig, TrainAppConfig


@dataclass(frozen=True)
class RunSpec:
    name: str
    model: str
    arch: str
    pretrained: bool
    weights: str | None
    resize: str
    item_size: tuple[int, ...]
    size: tuple[int, ...]
    min_scale: float
    accum: int
    epochs: int
    lr: float
    batch_size: int
    weight: float
    fold: int | None = None
    n_folds: int | None = None
    recipe: Recipe = field(default_factory=Recipe)

    @property
    def micro_batch(self) -> int:
        return self.batch_size // self.accum

    @property
    def member(self) -> str:
        """The ensemble member this run belongs to: its name without the fold suffix."""
        return self.name if self.fold is None else self.name.removesuffix(f"_fold{self.fold}")


def variant_name(resize: str, item_size: tuple[int, ...], size: tuple[int, ...]) -> str:
    """squish, (480,), (224,) -> 'squish480_224'; crop, (640, 480), (320, 224) -> 'crop640x480_320x224'."""
    return f"{resize}{'x'.join(map(str, item_size))}_{'x'.join(map(str, size))}"


def tta_tag(tta: TTAConfig) -> str:
    """The TTA settings in a run's name, as recipes are: '' at the reference (tta.n=4, tta.beta=0.25), so
    files trained so keep their names; else '_tta2', '_tta-beta0.5', '_tta8-beta0'. TTA changes the
    predictions and the run hash, so a sweep over tta.n gives each value a file of its own."""
    reference = TTAConfig()
    if tta.n == reference.n and tta.beta == reference.beta:
        return ""
    n = "" if tta.n == reference.n else str(tta.n)
    beta = "" if tta.beta == reference.beta else f"-beta{format(tta.beta, 'g')}"
    return f"_tta{n}{beta}"


def _size(value: Any, what: str) -> tuple[int, ...]:
    size = tuple(int(v) for v in value)
    if len(size) not in (1, 2):  # each number's range: pipeline.config.check_ranges
        raise PipelineError(f"{what} must be [n] or [height, width], got {list(value)}")
    return size


def chosen_model(cfg: TrainAppConfig) -> ModelConfig:
    """cfg.model, once +model=NAME chose one; else one clear error."""
    from omegaconf import OmegaConf

    model = cfg.get("model")
    if model is None or OmegaConf.is_missing(model, "name"):
        raise PipelineError("no model chosen: add +model=NAME (a file in conf/model/, e.g. +model=vit_large)")
    return model


def resolve_runs(cfg: TrainAppConfig, probed: dict[str, int] | None = None) -> list[RunSpec]:
    """The runs of `cfg.model`, checked: fails with one line on a missing model or variant list.
    `probed` maps run names to the accum the memory probe chose."""
    model = chosen_model(cfg)
    if not model.variants:
        raise PipelineError(f"model {model.name} has no variants: list at least one under variants:")
    recipe = recipe_from_config(cfg)
    lr = None if recipe.lr_find else cfg.train.lr  # with train.lr=find the variant's lr stands in until found
    runs = []
    for i, v in enumerate(model.variants):
        where = f"model {model.name} variant {i}"
        resize = getattr(v.resize, "value", v.resize)
        item_size, size = _size(v.item_size, f"{where} item_size"), _size(v.size, f"{where} size")
        base = f"{model.name}_{v.name or variant_name(resize, item_size, size)}"
        name = base + recipe_tag(recipe) + tta_tag(cfg.tta)
        # the probe's choice for this recipe, else for the variant under the reference recipe
        accum = cfg.train.accum or (probed or {}).get(name) or (probed or {}).get(base) or v.accum or model.accum
        batch_size = v.batch_size or model.batch_size
        if batch_size % accum:
            raise PipelineError(f"{where}: batch_size {batch_size} is not divisible by accum {accum}")
        runs.append(
            RunSpec(
                name=name,
                model=model.name,
                arch=model.arch,
                pretrained=model.pretrained,
                weights=model.weights,
                resize=resize,
                item_size=item_size,
                size=size,
                min_scale=v.min_scale,
                accum=accum,
                epochs=cfg.train.epochs or v.epochs or model.epochs,
                lr=lr or v.lr or model.lr,
                batch_size=batch_size,
                weight=v.weight,
                recipe=recipe,
            )
        )
    names = [r.name for r in runs]
    if len(set(names)) < len(names):
        raise PipelineError(f"model {model.name} has two variants named alike ({names}): give them names")
    runs = _select_variant(runs, model.name, cfg.train.get("variant"))
    fold = cfg.train.get("fold")
    if cfg.data.split != "kfold":
        if fold is not None:
            raise PipelineError(f"train.fold={fold} needs data.split=kfold (now {cfg.data.split}): drop train.fold")
        return runs
    runs = _per_fold(runs, cfg.data)
    if fold is None:
        return runs
    if not 0 <= fold < cfg.data.folds:
        last = cfg.data.folds - 1
        raise PipelineError(f"train.fold={fold} does not exist: data.folds={cfg.data.folds} has folds 0..{last}")
    return [run for run in runs if run.fold == fold]


def _select_variant(runs: list[RunSpec], model: str, variant: str | None) -> list[RunSpec]:
    """train.variant: the run at that index of the model file, or of that variant name or run name."""
    if variant is None:
        return runs
    for i, run in enumerate(runs):
        if variant in (str(i), run.name, run.name.removeprefix(f"{model}_")):
            return [run]
    choices = ", ".join(f"{i}: {run.name.removeprefix(f'{model}_')}" for i, run in enumerate(runs))
    raise PipelineError(f"model {model} has no variant {variant!r}: set train.variant to one of {choices}")


def _per_fold(runs: list[RunSpec], data: DataConfig) -> list[RunSpec]:
    """Each variant once per fold, named <run>_fold<k>."""
    return [
        replace(run, name=f"{run.name}_fold{k}", fold=k, n_folds=data.folds) for run in runs for k in range(data.folds)
    ]
