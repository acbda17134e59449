"""blend: which prediction files are blended, how they are weighted, and where the CSV goes (conf/blend.yaml)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from pipeline.config.ranges import COUNT, NON_NEGATIVE, Range, ranged


class BlendMean(StrEnum):
    arithmetic = "arithmetic"
    geometric = "geometric"


@dataclass
class GreedyConfig:
    steps: int = ranged(50, NON_NEGATIVE)  # 0: the sorted initialisation alone
    init: int = ranged(1, COUNT)
    bags: int = ranged(1, COUNT)
    bag_fraction: float = ranged(0.5, Range(0, 1, low_open=True))


@dataclass
class BlendConfig:
    runs: list[str] = field(default_factory=list)
    # a name in pipeline/ensemble/weightings.py: WEIGHTINGS, checked at start-up
    weighting: str = "config"
    weights: dict[str, float] = ranged(allowed=NON_NEGATIVE, default_factory=dict)
    mean: BlendMean = BlendMean.arithmetic
    greedy: GreedyConfig = field(default_factory=GreedyConfig)
    seed: int = ranged(0, NON_NEGATIVE)
    output: str = "${paths.submissions}/submission.csv"
