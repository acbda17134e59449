"""bench, demo and runs: the benchmark's, the demo data's and the runs table's options (conf/bench.yaml,
conf/prepare_demo.yaml, conf/runs.yaml)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from pipeline.config.ranges import COUNT, NON_NEGATIVE, POSITIVE, ranged


@dataclass
class DemoConfig:
    source: str = "/usr/share/datasets/fashion-mnist"
    train_per_class: int = ranged(150, COUNT)
    test_per_class: int = ranged(50, COUNT)
    seed: int = ranged(0, NON_NEGATIVE)


@dataclass
class BenchConfig:
    sample: str = "../shared/paddy-sample"
    images: int = ranged(330, COUNT)
    test_images: int = ranged(100, COUNT)
    arch: str = "tf_efficientnet_lite0"
    pretrained: bool = True
    item_size: int = ranged(480, COUNT)
    size: int = ranged(128, COUNT)
    batch_size: int = ranged(64, COUNT)
    accum: int = ranged(2, COUNT)
    epochs: int = ranged(1, COUNT)
    lr: float = ranged(0.002, POSITIVE)
    tta_n: int = ranged(4, COUNT)
    repeats: int = ranged(2, COUNT)
    limit_steps: int = ranged(6, COUNT)


class RunsFormat(StrEnum):
    table = "table"
    csv = "csv"


@dataclass
class RunsConfig:
    sort: str = "run"
    filter: str = "*"
    format: RunsFormat = RunsFormat.table
    check_data: bool = True
