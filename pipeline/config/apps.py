"""The root schemas, one per command: which groups each command's config holds (conf/<command>.yaml)."""

from __future__ import annotations

from dataclasses import dataclass, field

from omegaconf import MISSING

from pipeline.config.blend import BlendConfig
from pipeline.config.data import DataConfig
from pipeline.config.kaggle import DownloadConfig, KaggleConfig, KernelsConfig, SubmitConfig
from pipeline.config.logger import LoggerConfig
from pipeline.config.model import ModelConfig
from pipeline.config.paths import PathsConfig
from pipeline.config.recipe import LossConfig, OptimizerConfig, ScheduleConfig
from pipeline.config.tools import BenchConfig, DemoConfig, RunsConfig
from pipeline.config.train import PerfConfig, ProbeConfig, TrainConfig, TTAConfig


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
    logger: LoggerConfig = MISSING  # the logger group (conf/logger/): its option's schema comes with it
    tta: TTAConfig = field(default_factory=TTAConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    perf: PerfConfig = field(default_factory=PerfConfig)


@dataclass
class BlendAppConfig(AppConfig):
    blend: BlendConfig = field(default_factory=BlendConfig)


@dataclass
class PrepareDemoAppConfig:
    paths: PathsConfig = field(default_factory=PathsConfig)
    demo: DemoConfig = field(default_factory=DemoConfig)


@dataclass
class BenchAppConfig(AppConfig):
    perf: PerfConfig = field(default_factory=PerfConfig)
    bench: BenchConfig = field(default_factory=BenchConfig)


@dataclass
class DownloadAppConfig(AppConfig):
    kaggle: KaggleConfig = field(default_factory=KaggleConfig)
    download: DownloadConfig = field(default_factory=DownloadConfig)


@dataclass
class SubmitAppConfig(AppConfig):
    # Only for blend.output, the default of submit.file: one source of truth for where blends go.
    blend: BlendConfig = field(default_factory=BlendConfig)
    kaggle: KaggleConfig = field(default_factory=KaggleConfig)
    submit: SubmitConfig = field(default_factory=SubmitConfig)


@dataclass
class RunsAppConfig(AppConfig):
    perf: PerfConfig = field(default_factory=PerfConfig)  # perf.cache_dir: the images' hashes, for staleness
    runs: RunsConfig = field(default_factory=RunsConfig)


@dataclass
class KernelsAppConfig:
    paths: PathsConfig = field(default_factory=PathsConfig)
    kaggle: KaggleConfig = field(default_factory=KaggleConfig)
    kernels: KernelsConfig = field(default_factory=KernelsConfig)


ROOTS = {  # conf/<file>.yaml's defaults name <file>_schema
    "train": TrainAppConfig,
    "blend": BlendAppConfig,
    "prepare_demo": PrepareDemoAppConfig,
    "bench": BenchAppConfig,
    "download": DownloadAppConfig,
    "submit": SubmitAppConfig,
    "kernels": KernelsAppConfig,
    "runs": RunsAppConfig,
}
