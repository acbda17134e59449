"""blend: which prediction files are blended, how they are weighted, and where the CSV goes (conf/blend.yaml)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from pipeline.config.ranges import COUNT, NON_NEGATIVE, POSITIVE, Range, ranged


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
class StackConfig:
    # the inner cross-validation that chooses C: stratified folds; a class with fewer images than this
    # (on the images the stacker is fitted on) makes it unfittable
    folds: int = ranged(5, Range(2))
    C: list[float] = ranged(allowed=POSITIVE, default_factory=lambda: [0.01, 0.1, 1.0, 10.0, 100.0])


@dataclass
class ReviewConfig:
    top: int = ranged(40, NON_NEGATIVE)  # training images listed as label suspects; 0: no review


@dataclass
class BlendConfig:
    runs: list[str] = field(default_factory=list)
    # a name in pipeline/ensemble/weightings.py: WEIGHTINGS, checked at start-up
    weighting: str = "config"
    weights: dict[str, float] = ranged(allowed=NON_NEGATIVE, default_factory=dict)
    mean: BlendMean = BlendMean.arithmetic
    greedy: GreedyConfig = field(default_factory=GreedyConfig)
    stack: StackConfig = field(default_factory=StackConfig)
    review: ReviewConfig = field(default_factory=ReviewConfig)
    seed: int = ranged(0, NON_NEGATIVE)
    output: str = "${paths.submissions}/submission.csv"
