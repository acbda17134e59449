"""The config schema: the only place where option types and defaults are declared.

The YAML files in `conf/` document each option for users; these dataclasses make Hydra
reject a mistyped key or a wrong type at start-up, and `check_ranges` (table RANGES) a number out
of its range, before any data is read.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

from pipeline.errors import PipelineError

# Tells apart the folders of jobs started in the same second (conf/*.yaml hydra.run.dir and
# hydra.sweep.dir): the process id, unique on a host, and a random part, for jobs on several hosts
# writing one outputs folder. One value per process, so a job's folder is the same wherever it is asked.
JOB_SUFFIX = f"{os.getpid()}-{secrets.token_hex(2)}"


class ResizeMethod(StrEnum):
    squish = "squish"
    crop = "crop"
    pad = "pad"


class SplitStrategy(StrEnum):
    random = "random"
    holdout = "holdout"
    kfold = "kfold"


class Device(StrEnum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class Switch(StrEnum):
    auto = "auto"
    on = "on"
    off = "off"


class Mix(StrEnum):
    none = "none"
    mixup = "mixup"
    cutmix = "cutmix"


@dataclass
class PathsConfig:
    outputs: str = "outputs"
    preds: str = "${paths.outputs}/preds"
    submissions: str = "${paths.outputs}/submissions"
    weights: str = "${paths.outputs}/weights"
    data: str = "${paths.outputs}/data"
    checkpoints: str = "${paths.outputs}/checkpoints"
    probe: str = "${paths.outputs}/probe"


@dataclass
class DataConfig:
    name: str = MISSING
    root: str = MISSING
    competition: str = "paddy-disease-classification"
    split: SplitStrategy = SplitStrategy.holdout
    valid_pct: float = 0.2
    folds: int = 5
    seed: int | None = 42
    num_workers: int | None = None
    test_labels: str | None = None
    aux_targets: list[str] = field(default_factory=list)
    aux_weights: dict[str, float] = field(default_factory=dict)


@dataclass
class VariantConfig:
    resize: ResizeMethod = ResizeMethod.crop
    item_size: list[int] = MISSING
    size: list[int] = MISSING
    min_scale: float = 0.75
    name: str | None = None
    accum: int | None = None
    epochs: int | None = None
    lr: float | None = None
    batch_size: int | None = None
    weight: float = 1.0


@dataclass
class ModelConfig:
    name: str = MISSING
    arch: str = MISSING
    pretrained: bool = True
    weights: str | None = None
    accum: int = 1
    epochs: int = 12
    lr: float = 0.01
    batch_size: int = 64
    variants: list[VariantConfig] = field(default_factory=list)


@dataclass
class TrainConfig:
    epochs: int | None = None
    lr: float | int | str | None = None  # a number, or "find" (fastai's lr_find)
    lr_find_steps: int = 100
    accum: int | None = None
    device: Device = Device.auto
    force: bool = False
    checkpoint: bool = True
    oom_retries: int = 3
    callbacks: list[Any] = field(default_factory=list)
    hooks: list[Any] = field(default_factory=list)
    variant: str | None = None
    fold: int | None = None
    time_budget_h: float | None = None
    seed: int | None = None
    mixup: Mix = Mix.none
    mixup_alpha: float | None = None
    ema: bool = False
    ema_decay: float = 0.9999
    ema_warmup: bool = True


# --- The training recipe's groups: conf/optimizer/, conf/schedule/, conf/loss/ ---
# Each option has its own dataclass, so a hyper-parameter the option does not take fails at composition.
# Its defaults are the option's reference values (fastai's own, but SGD's momentum); a run's name tags
# what differs from them (pipeline/training/recipe.py: recipe_tag).


@dataclass
class OptimizerConfig:
    name: str = MISSING
    wd: float = 0.0
    decouple_wd: bool = True


@dataclass
class AdamConfig(OptimizerConfig):
    name: str = "adam"
    mom: float = 0.9
    sqr_mom: float = 0.99
    eps: float = 1e-5
    wd: float = 0.01


@dataclass
class SGDConfig(OptimizerConfig):
    name: str = "sgd"
    mom: float = 0.9


@dataclass
class RMSPropConfig(OptimizerConfig):
    name: str = "rmsprop"
    mom: float = 0.0
    sqr_mom: float = 0.99
    eps: float = 1e-8


@dataclass
class RAdamConfig(OptimizerConfig):
    name: str = "radam"
    mom: float = 0.9
    sqr_mom: float = 0.99
    eps: float = 1e-5
    beta: float = 0.0


@dataclass
class QHAdamConfig(OptimizerConfig):
    name: str = "qhadam"
    mom: float = 0.999
    sqr_mom: float = 0.999
    nu_1: float = 0.7
    nu_2: float = 1.0
    eps: float = 1e-8


@dataclass
class LambConfig(OptimizerConfig):
    name: str = "lamb"
    mom: float = 0.9
    sqr_mom: float = 0.99
    eps: float = 1e-5


@dataclass
class RangerConfig(OptimizerConfig):
    name: str = "ranger"
    mom: float = 0.95
    sqr_mom: float = 0.99
    eps: float = 1e-6
    beta: float = 0.0
    k: int = 6
    alpha: float = 0.5
    wd: float = 0.01


@dataclass
class ScheduleConfig:
    name: str = MISSING


@dataclass
class FineTuneConfig(ScheduleConfig):
    name: str = "fine_tune"
    freeze_epochs: int = 1
    lr_mult: float = 100.0
    pct_start: float = 0.3
    div: float = 5.0


@dataclass
class OneCycleConfig(ScheduleConfig):
    name: str = "one_cycle"
    lr_mult: float = 1.0
    pct_start: float = 0.25
    div: float = 25.0
    div_final: float = 1e5


@dataclass
class FlatCosConfig(ScheduleConfig):
    name: str = "flat_cos"
    lr_mult: float = 1.0
    pct_start: float = 0.75
    div_final: float = 1e5


@dataclass
class LossConfig:
    name: str = MISSING


@dataclass
class CrossEntropyConfig(LossConfig):
    name: str = "cross_entropy"


@dataclass
class LabelSmoothingConfig(LossConfig):
    name: str = "label_smoothing"
    eps: float = 0.1


RECIPE_OPTIONS: dict[str, dict[str, type]] = {
    "optimizer": {
        c.name: c for c in (AdamConfig, SGDConfig, RMSPropConfig, RAdamConfig, QHAdamConfig, LambConfig, RangerConfig)
    },
    "schedule": {c.name: c for c in (FineTuneConfig, OneCycleConfig, FlatCosConfig)},
    "loss": {c.name: c for c in (CrossEntropyConfig, LabelSmoothingConfig)},
}
REFERENCE_RECIPE = {"optimizer": "adam", "schedule": "fine_tune", "loss": "cross_entropy"}  # config.yaml's defaults


def changed_params(group: str, chosen: dict[str, Any]) -> dict[str, Any]:
    """The hyper-parameters of a recipe group's chosen option (e.g. {"name": "adam", "wd": 0.1, ...})
    that differ from the option's defaults; all of them for an option this version does not know."""
    option = RECIPE_OPTIONS[group].get(chosen["name"])
    reference = asdict(option()) if option else {}
    return {k: v for k, v in chosen.items() if k != "name" and (k not in reference or reference[k] != v)}


@dataclass
class TTAConfig:
    n: int = 4
    beta: float = 0.25


@dataclass
class ProbeConfig:
    budget_gb: float = 16.0
    accums: list[int] = field(default_factory=lambda: [1, 2, 4, 8])
    steps: int = 3
    write: bool = False


@dataclass
class PerfConfig:
    cache: bool = True
    cache_dir: str = "${paths.outputs}/cache"
    fused_augment: bool = True
    channels_last: Switch = Switch.auto
    fast_tta: bool = True


@dataclass
class AppConfig:
    """What every command on a competition's data shares: where files go, and the data."""

    paths: PathsConfig = field(default_factory=PathsConfig)
    data: DataConfig = MISSING


@dataclass
class TrainAppConfig(AppConfig):
    # chosen with +model=NAME (a file in conf/model/); present unnamed before that, so that a sweep over
    # +model=a,b composes with model.* overrides (Hydra composes the sweep's own config without +model)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    optimizer: OptimizerConfig = MISSING
    schedule: ScheduleConfig = MISSING
    loss: LossConfig = MISSING
    tta: TTAConfig = field(default_factory=TTAConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    perf: PerfConfig = field(default_factory=PerfConfig)


class Weighting(StrEnum):
    config = "config"
    equal = "equal"
    greedy = "greedy"
    optimize = "optimize"


class BlendMean(StrEnum):
    arithmetic = "arithmetic"
    geometric = "geometric"


@dataclass
class GreedyConfig:
    steps: int = 50
    init: int = 1
    bags: int = 1
    bag_fraction: float = 0.5


@dataclass
class BlendConfig:
    runs: list[str] = field(default_factory=list)
    weighting: Weighting = Weighting.config
    weights: dict[str, float] = field(default_factory=dict)
    mean: BlendMean = BlendMean.arithmetic
    greedy: GreedyConfig = field(default_factory=GreedyConfig)
    seed: int = 0
    output: str = "${paths.submissions}/submission.csv"


@dataclass
class BlendAppConfig(AppConfig):
    blend: BlendConfig = field(default_factory=BlendConfig)


@dataclass
class DemoConfig:
    source: str = "/usr/share/datasets/fashion-mnist"
    train_per_class: int = 150
    test_per_class: int = 50
    seed: int = 0


@dataclass
class PrepareDemoAppConfig:
    paths: PathsConfig = field(default_factory=PathsConfig)
    demo: DemoConfig = field(default_factory=DemoConfig)


@dataclass
class BenchConfig:
    sample: str = "../shared/paddy-sample"
    images: int = 330
    test_images: int = 100
    arch: str = "tf_efficientnet_lite0"
    item_size: int = 480
    size: int = 128
    batch_size: int = 64
    accum: int = 2
    epochs: int = 1
    lr: float = 0.002
    tta_n: int = 4
    repeats: int = 2
    limit_steps: int = 6


@dataclass
class BenchAppConfig(AppConfig):
    perf: PerfConfig = field(default_factory=PerfConfig)
    bench: BenchConfig = field(default_factory=BenchConfig)


@dataclass(frozen=True)
class Range:
    """An interval of allowed values; None: unbounded on that side."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, x: float) -> bool:
        above = self.low is None or x > self.low or (x == self.low and not self.low_open)
        below = self.high is None or x < self.high or (x == self.high and not self.high_open)
        return above and below

    def __str__(self) -> str:
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"


COUNT, NON_NEGATIVE, POSITIVE = Range(1), Range(0), Range(0, low_open=True)

# Every numeric option and what it allows, by key ("*": every item of a list or dict). Keys absent
# from a command's config are not checked, and null means "not set" (e.g. train.epochs).
RANGES: dict[str, Range] = {
    **{f"model.{k}": COUNT for k in ("batch_size", "accum", "epochs")},
    "model.lr": POSITIVE,
    **{f"model.variants.*.{k}": COUNT for k in ("batch_size", "accum", "epochs", "item_size.*", "size.*")},
    "model.variants.*.lr": POSITIVE,
    "model.variants.*.min_scale": Range(0, 1, low_open=True),
    "model.variants.*.weight": NON_NEGATIVE,
    "train.epochs": COUNT,
    "train.lr": POSITIVE,
    "train.accum": COUNT,
    "train.oom_retries": NON_NEGATIVE,
    "tta.n": COUNT,
    "tta.beta": Range(0, 1),
    "data.valid_pct": Range(0, 1, low_open=True, high_open=True),
    "data.folds": Range(2),
    "data.num_workers": NON_NEGATIVE,
    "probe.budget_gb": POSITIVE,
    "probe.accums.*": COUNT,
    "probe.steps": COUNT,
    "blend.weights.*": NON_NEGATIVE,
    "blend.greedy.steps": NON_NEGATIVE,  # 0: the sorted initialisation alone
    "blend.greedy.init": COUNT,
    "blend.greedy.bags": COUNT,
    "blend.greedy.bag_fraction": Range(0, 1, low_open=True),
    "kaggle.attempts": COUNT,
    "kaggle.backoff_s": NON_NEGATIVE,
    "kaggle.max_backoff_s": NON_NEGATIVE,
    "submit.timeout_s": POSITIVE,
    "submit.poll_s": POSITIVE,
    **{
        f"bench.{k}": COUNT
        for k in ("images", "test_images", "item_size", "size", "batch_size", "accum", "epochs", "tta_n", "repeats")
    },
    "bench.limit_steps": COUNT,
    "bench.lr": POSITIVE,
    "demo.train_per_class": COUNT,
    "demo.test_per_class": COUNT,
}


def _values(node: Any, keys: list[str], prefix: str) -> Iterator[tuple[str, Any]]:
    """(full key, value) for each value at `keys` below `node`, expanding "*"; absent, unset and null ones skipped."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if not keys:
        if node is not None:
            yield prefix, node
        return
    if isinstance(node, ListConfig):
        children = [str(i) for i in range(len(node))] if keys[0] == "*" else []
    elif isinstance(node, DictConfig):
        children = [str(k) for k in node] if keys[0] == "*" else [keys[0]] if keys[0] in node else []
    else:
        children = []
    for child in children:
        key = int(child) if isinstance(node, ListConfig) else child
        if not OmegaConf.is_missing(node, key):
            yield from _values(node[key], keys[1:], f"{prefix}.{child}" if prefix else child)


def check_ranges(cfg: Any) -> None:
    """Every command's first step: raises PipelineError on the first option out of its range, naming
    the key as typed on the command line, its value and what is allowed."""
    for pattern, allowed in RANGES.items():
        for key, value in _values(cfg, pattern.split("."), ""):
            if isinstance(value, str):  # a word where the schema allows one (train.lr=find), checked where used
                continue
            if value not in allowed:
                raise PipelineError(f"{key} must be {allowed}, got {value}")


def register_configs() -> None:
    """The schemas, and the job_suffix resolver the job folders use; before Hydra composes a config."""
    if not OmegaConf.has_resolver("job_suffix"):
        # cached in the config like Hydra's ${now:}, so a launcher's jobs in other processes keep its value
        OmegaConf.register_new_resolver("job_suffix", lambda: JOB_SUFFIX, use_cache=True)
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainAppConfig)
    cs.store(name="bench_schema", node=BenchAppConfig)
    cs.store(name="blend_schema", node=BlendAppConfig)
    cs.store(name="prepare_demo_schema", node=PrepareDemoAppConfig)
    for group, options in RECIPE_OPTIONS.items():  # conf/<group>/<option>.yaml names <option>_schema
        for name, node in options.items():
            cs.store(group=group, name=f"{name}_schema", node=node)
    register_kaggle_configs(cs)


def to_container(cfg: Any) -> dict:
    """The resolved config as plain data (str, numbers, lists, dicts), safe to store anywhere."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)


# --- Kaggle round trip: pipeline.download and pipeline.submit (conf/download.yaml, conf/submit.yaml) ---


@dataclass
class KaggleConfig:
    attempts: int = 4
    backoff_s: float = 2.0
    max_backoff_s: float = 60.0


@dataclass
class DownloadConfig:
    zip_dir: str | None = None
    force: bool = False


@dataclass
class DownloadAppConfig(AppConfig):
    kaggle: KaggleConfig = field(default_factory=KaggleConfig)
    download: DownloadConfig = field(default_factory=DownloadConfig)


@dataclass
class SubmitConfig:
    file: str = "${blend.output}"
    message: str | None = None
    force: bool = False
    dry_run: bool = False
    list: bool = False
    timeout_s: float = 600.0
    poll_s: float = 10.0
    log: str = "${paths.outputs}/kaggle_submissions.csv"


@dataclass
class SubmitAppConfig(AppConfig):
    # Only for blend.output, the default of submit.file: one source of truth for where blends go.
    blend: BlendConfig = field(default_factory=BlendConfig)
    kaggle: KaggleConfig = field(default_factory=KaggleConfig)
    submit: SubmitConfig = field(default_factory=SubmitConfig)


# --- Training in Kaggle notebooks: hydra/launcher=kaggle (conf/hydra/launcher/kaggle.yaml), pipeline.kernels ---


@dataclass
class KaggleLauncherConfig:
    _target_: str = "hydra_plugins.paddy_pipeline.launchers.KaggleLauncher"
    ledger: str = "${paths.outputs}/kaggle_kernels.json"
    max_parallel: int = 2
    max_sessions: int = 3
    time_budget_h: float = 11.0
    accelerator: str | None = "NvidiaTeslaT4"
    internet: bool = True
    code_dataset: str = "paddy-pipeline-code"
    wheels: str | None = None
    prefix: str = "paddy"
    datasets: list[str] = field(default_factory=list)
    poll_s: float = 60.0
    max_poll_s: float = 600.0
    retry_failed: bool = False
    kaggle: KaggleConfig = field(default_factory=KaggleConfig)


@dataclass
class KernelsConfig:
    ledger: str = "${paths.outputs}/kaggle_kernels.json"
    refresh: bool = True


@dataclass
class KernelsAppConfig:
    paths: PathsConfig = field(default_factory=PathsConfig)
    kaggle: KaggleConfig = field(default_factory=KaggleConfig)
    kernels: KernelsConfig = field(default_factory=KernelsConfig)


def register_kaggle_configs(cs: ConfigStore) -> None:
    cs.store(name="download_schema", node=DownloadAppConfig)
    cs.store(name="submit_schema", node=SubmitAppConfig)
    cs.store(name="kernels_schema", node=KernelsAppConfig)
    cs.store(group="hydra/launcher", name="kaggle_schema", node=KaggleLauncherConfig)
