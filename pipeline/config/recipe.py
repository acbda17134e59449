"""optimizer, schedule, loss: the training recipe's groups (conf/optimizer/, conf/schedule/, conf/loss/).

These are the groups' base schemas, what every option has. Each option's own schema, with its
hyper-parameters and their ranges, is declared beside its builder in its registry
(pipeline/training/optimizers.py, schedules.py, losses.py), so that a hyper-parameter the option
does not take fails at composition.
"""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import MISSING

from pipeline.config.ranges import NON_NEGATIVE, ranged


@dataclass
class OptimizerConfig:
    name: str = MISSING
    wd: float = ranged(0.0, NON_NEGATIVE)
    decouple_wd: bool = True


@dataclass
class ScheduleConfig:
    name: str = MISSING


@dataclass
class LossConfig:
    name: str = MISSING
