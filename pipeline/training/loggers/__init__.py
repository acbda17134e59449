"""The logger registry (conf/logger/, `logger=NAME`): where a training job reports its runs as they train.

A logger is a set of listeners of the runs' events (pipeline.training.events), made once per job from its
config and attached beside train.hooks, so that it follows each run's whole life: started, every epoch
(with the run's history so far), finished, failed; a run skipped as already trained logs nothing new.
Every logger but `none` writes the job's files (`files.RunFiles`: each run's history CSV and curves PNG
beside the job's log); `mlflow` and `tensorboard` also feed their trackers. A logger never fails a run:
a tracker that cannot be reached is one warning (`guarded.Guarded`), and the run's prediction file holds its
history anyway.

Adding one (e.g. Weights & Biases): its schema on LoggerConfig, its builder returning its listeners,
one `LOGGERS.add`, a documented conf/logger/<name>.yaml and a test.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.config.logger import LoggerConfig
from pipeline.config.ranges import COUNT, NON_NEGATIVE, ranged
from pipeline.errors import PipelineError
from pipeline.registry import Registry

Build = Callable[[Any], list[object]]  # the job's config -> its listeners
LOGGERS: Registry[Build] = Registry("logger", where="conf/logger/", group="logger")


@dataclass
class NoLoggerConfig(LoggerConfig):
    name: str = "none"


@dataclass
class CsvLoggerConfig(LoggerConfig):
    name: str = "csv"
    dir: str | None = None  # None: the job's Hydra folder, beside its log


@dataclass
class MlflowLoggerConfig(CsvLoggerConfig):
    name: str = "mlflow"
    tracking_uri: str = "sqlite:///${paths.outputs}/mlflow.db"
    experiment: str = "${data.name}"
    artifact_location: str | None = None  # None: beside a SQLite store (mlartifacts/), else the server's
    http_retries: int = ranged(1, NON_NEGATIVE)
    http_timeout_s: int = ranged(10, COUNT)


@dataclass
class TensorBoardLoggerConfig(CsvLoggerConfig):
    name: str = "tensorboard"
    log_dir: str = "${paths.outputs}/tensorboard"


def files_dir(cfg: Any) -> Path | None:
    """Where the job's run files go: logger.dir, else the job's Hydra folder; None outside a Hydra job
    (code calling pipeline.training.jobs.train_model), where nothing is written."""
    from hydra.core.hydra_config import HydraConfig

    if cfg.logger.get("dir"):
        return Path(cfg.logger.dir)
    return Path(HydraConfig.get().runtime.output_dir) if HydraConfig.initialized() else None


def _files(cfg: Any) -> list[object]:
    from pipeline.training.loggers.files import RunFiles

    folder = files_dir(cfg)
    return [RunFiles(folder)] if folder else []


def _needs(module: str, logger: str) -> None:
    """A tracker's package is an optional extra: missing, the job stops at its start, in one line."""
    if importlib.util.find_spec(module) is None:
        raise PipelineError(f"logger={logger} needs {module}: pip install -e .[tracking] (or choose logger=csv)")


def _mlflow(cfg: Any) -> list[object]:
    _needs("mlflow", "mlflow")
    from pipeline.training.loggers.mlflow_logger import MlflowLogger

    return [*_files(cfg), MlflowLogger(cfg)]


def _tensorboard(cfg: Any) -> list[object]:
    _needs("tensorboard", "tensorboard")
    from pipeline.training.loggers.tensorboard_logger import TensorBoardLogger

    return [*_files(cfg), TensorBoardLogger(Path(cfg.logger.log_dir))]


LOGGERS.add(
    "none", lambda cfg: [], "nothing beyond the prediction file, which keeps every run's history", NoLoggerConfig
)
LOGGERS.add(
    "csv",
    _files,
    "each run's history (CSV) and learning curves (PNG) beside the job's log; the default",
    CsvLoggerConfig,
)
LOGGERS.add(
    "mlflow",
    _mlflow,
    "csv's files, and an MLflow run per run: params, per-epoch metrics, final errors, curves, tags",
    MlflowLoggerConfig,
)
LOGGERS.add(
    "tensorboard",
    _tensorboard,
    "csv's files, and TensorBoard event files per run under logger.log_dir",
    TensorBoardLoggerConfig,
)


def job_loggers(cfg: Any) -> list[object]:
    """The listeners of logger=NAME for one job (pipeline.training.events.job_events attaches them)."""
    return LOGGERS[cfg.logger.name].build(cfg)
