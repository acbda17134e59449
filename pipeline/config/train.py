"""train, tta, probe, perf: how pipeline.train trains, predicts and measures (conf/config.yaml, conf/perf/)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from pipeline.config.ranges import COUNT, FRACTION, MOMENTUM, NON_NEGATIVE, POSITIVE, ranged


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
class TrainConfig:
    epochs: int | None = ranged(None, COUNT)
    lr: float | int | str | None = ranged(None, POSITIVE)  # a number, or "find" (fastai's lr_find)
    lr_find_steps: int = ranged(100, COUNT)
    accum: int | None = ranged(None, COUNT)
    device: Device = Device.auto
    force: bool = False
    checkpoint: bool = True
    oom_retries: int = ranged(3, NON_NEGATIVE)
    callbacks: list[Any] = field(default_factory=list)
    hooks: list[Any] = field(default_factory=list)  # listeners of a run's events (pipeline.training.events)
    variant: str | None = None
    fold: int | None = ranged(None, NON_NEGATIVE)
    time_budget_h: float | None = ranged(None, POSITIVE)
    seed: int | None = ranged(None, NON_NEGATIVE)
    mixup: Mix = Mix.none
    mixup_alpha: float | None = ranged(None, POSITIVE)
    ema: bool = False
    ema_decay: float = ranged(0.9999, MOMENTUM)
    ema_warmup: bool = True
    devices: int = ranged(1, COUNT)  # DDP ranks started for each run (pipeline.training.distributed)
    sync_bn: bool = False
    ddp_timeout_min: float = ranged(30.0, POSITIVE)


@dataclass
class TTAConfig:
    n: int = ranged(4, COUNT)
    beta: float = ranged(0.25, FRACTION)


@dataclass
class ProbeConfig:
    budget_gb: float = ranged(16.0, POSITIVE)
    accums: list[int] = ranged(allowed=COUNT, default_factory=lambda: [1, 2, 4, 8])
    steps: int = ranged(3, COUNT)
    write: bool = False


@dataclass
class PerfConfig:
    cache: bool = True
    cache_dir: str = "${paths.outputs}/cache"
    fused_augment: bool = True
    channels_last: Switch = Switch.auto
    fast_tta: bool = True
