"""model: a timm architecture and its variants (conf/model/<name>.yaml, chosen with +model=NAME)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from omegaconf import MISSING

from pipeline.config.ranges import COUNT, NON_NEGATIVE, POSITIVE, Range, ranged


class ResizeMethod(StrEnum):
    squish = "squish"
    crop = "crop"
    pad = "pad"


@dataclass
class VariantConfig:
    resize: ResizeMethod = ResizeMethod.crop
    item_size: list[int] = ranged(MISSING, COUNT)
    size: list[int] = ranged(MISSING, COUNT)
    min_scale: float = ranged(0.75, Range(0, 1, low_open=True))
    name: str | None = None
    accum: int | None = ranged(None, COUNT)
    epochs: int | None = ranged(None, COUNT)
    lr: float | None = ranged(None, POSITIVE)
    batch_size: int | None = ranged(None, COUNT)
    weight: float = ranged(1.0, NON_NEGATIVE)


@dataclass
class ModelConfig:
    name: str = MISSING
    arch: str = MISSING
    pretrained: bool = True
    weights: str | None = None
    accum: int = ranged(1, COUNT)
    epochs: int = ranged(12, COUNT)
    lr: float = ranged(0.01, POSITIVE)
    batch_size: int = ranged(64, COUNT)
    variants: list[VariantConfig] = field(default_factory=list)
