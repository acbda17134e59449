"""The config schema, one module per config group: every option's type, default and range.

The YAML files in `conf/` document each option for users; these dataclasses make Hydra reject a
mistyped key or a wrong type at start-up, and `check_ranges` a number out of the range declared on
its field, before any data is read. The options of the named choices (optimizer, schedule, loss,
weighting, launcher) are declared by their registries (pipeline/registry.py) beside their builders.
"""

from pipeline.config.apps import (
    AppConfig,
    BenchAppConfig,
    BlendAppConfig,
    DownloadAppConfig,
    KernelsAppConfig,
    PrepareDemoAppConfig,
    RunsAppConfig,
    SubmitAppConfig,
    TrainAppConfig,
)
from pipeline.config.blend import BlendConfig, GreedyConfig
from pipeline.config.data import DataConfig
from pipeline.config.kaggle import KaggleConfig, KaggleLauncherConfig
from pipeline.config.model import ModelConfig, VariantConfig
from pipeline.config.paths import PathsConfig
from pipeline.config.ranges import check_ranges
from pipeline.config.store import JOB_SUFFIX, register_configs, to_container
from pipeline.config.train import PerfConfig, TrainConfig, TTAConfig

__all__ = [
    "JOB_SUFFIX",
    "AppConfig",
    "BenchAppConfig",
    "BlendAppConfig",
    "BlendConfig",
    "DataConfig",
    "DownloadAppConfig",
    "GreedyConfig",
    "KaggleConfig",
    "KaggleLauncherConfig",
    "KernelsAppConfig",
    "ModelConfig",
    "PathsConfig",
    "PerfConfig",
    "PrepareDemoAppConfig",
    "RunsAppConfig",
    "SubmitAppConfig",
    "TTAConfig",
    "TrainAppConfig",
    "TrainConfig",
    "VariantConfig",
    "check_ranges",
    "register_configs",
    "to_container",
]
