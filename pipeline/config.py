"""The config schema: the only place where option types and defaults are declared.

The YAML files in `conf/` document each option for users; these dataclasses make Hydra
reject a mistyped key or a wrong type at start-up, before any data is read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


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
    lr: float | None = None
    accum: int | None = None
    device: Device = Device.auto
    force: bool = False
    checkpoint: bool = True
    oom_retries: int = 3
    callbacks: list[Any] = field(default_factory=list)
    time_budget_h: float | None = None


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
    model: ModelConfig | None = None
    train: TrainConfig = field(default_factory=TrainConfig)
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


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainAppConfig)
    cs.store(name="bench_schema", node=BenchAppConfig)
    cs.store(name="blend_schema", node=BlendAppConfig)
    cs.store(name="prepare_demo_schema", node=PrepareDemoAppConfig)
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
    _target_: str = "hydra_plugins.pipeline_kaggle_launcher.kaggle_launcher.KaggleLauncher"
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
