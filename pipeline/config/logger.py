"""logger: where a training job reports its runs as they train (conf/logger/).

This is the group's base schema, what every option has; each option's own schema, with its keys and
their ranges, is declared beside its builder in the logger registry (pipeline/training/loggers/).
"""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import MISSING


@dataclass
class LoggerConfig:
    name: str = MISSING
