"""kaggle, download, submit, kernels and hydra/launcher=kaggle: the round trip with Kaggle
(conf/kaggle/, conf/download.yaml, conf/submit.yaml, conf/kernels.yaml, conf/hydra/launcher/kaggle.yaml)."""

from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.config.ranges import COUNT, NON_NEGATIVE, POSITIVE, Range, ranged


@dataclass
class KaggleConfig:
    attempts: int = ranged(4, COUNT)
    backoff_s: float = ranged(2.0, NON_NEGATIVE)
    max_backoff_s: float = ranged(60.0, NON_NEGATIVE)


@dataclass
class DownloadConfig:
    zip_dir: str | None = None
    force: bool = False


@dataclass
class SubmitConfig:
    file: str = "${blend.output}"
    message: str | None = None
    force: bool = False
    dry_run: bool = False
    list: bool = False
    timeout_s: float = ranged(600.0, POSITIVE)
    poll_s: float = ranged(10.0, POSITIVE)
    log: str = "${paths.outputs}/kaggle_submissions.csv"


@dataclass
class KernelsConfig:
    ledger: str = "${paths.outputs}/kaggle_kernels.json"
    refresh: bool = True


@dataclass
class KaggleLauncherConfig:
    _target_: str = "hydra_plugins.paddy_pipeline.launchers.KaggleLauncher"
    ledger: str = "${paths.outputs}/kaggle_kernels.json"
    max_parallel: int = ranged(2, COUNT)
    max_sessions: int = ranged(3, COUNT)
    # Kaggle ends a session at 12 hours and keeps nothing of it
    time_budget_h: float = ranged(11.0, Range(0, 12, low_open=True, high_open=True))
    accelerator: str | None = "NvidiaTeslaT4"
    internet: bool = True
    code_dataset: str = "paddy-pipeline-code"
    wheels: str | None = None
    prefix: str = "paddy"
    datasets: list[str] = field(default_factory=list)
    poll_s: float = ranged(60.0, POSITIVE)
    max_poll_s: float = ranged(600.0, POSITIVE)
    retry_failed: bool = False
    kaggle: KaggleConfig = field(default_factory=KaggleConfig)
