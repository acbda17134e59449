"""Ranges on schema fields: each numeric option declares what it allows where it is defined, and
`check_ranges` checks a composed config against them, every command's first step.

A field is declared with `ranged(default, allowed)`; `tests/test_config.py` fails for a numeric field
declared without one, so a new option cannot be added unchecked.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from pipeline.errors import PipelineError

RANGE = "range"  # the key of a field's metadata that holds its Range


@dataclass(frozen=True)
class Range:
    """An interval of allowed values; None: unbounded on that side."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, x: float) -> bool:
        above = self.low is None or x > self.low or (x == self.low and not self.low_open)
        below = self.high is None or x < self.high or (x == self.high and not self.high_open)
        return above and below

    def __str__(self) -> str:
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"


COUNT, NON_NEGATIVE, POSITIVE = Range(1), Range(0), Range(0, low_open=True)
FRACTION = Range(0, 1)  # [0, 1]
OPEN_FRACTION = Range(0, 1, low_open=True, high_open=True)  # (0, 1)
MOMENTUM = Range(0, 1, high_open=True)  # [0, 1): a moving average's decay


def ranged(default: Any = dataclasses.MISSING, allowed: Range = COUNT, **kw: Any) -> Any:
    """A dataclass field whose value (each item, for a list or dict) must lie in `allowed`."""
    if default is not dataclasses.MISSING:
        kw["default"] = default
    return field(metadata={RANGE: allowed}, **kw)


def _items(key: str, value: Any) -> list[tuple[str, Any]]:
    """(key, value) of a ranged field's value: itself, or each item of a list or dict (model.variants.0.size.1)."""
    from omegaconf import DictConfig, ListConfig

    if isinstance(value, ListConfig):
        return [(f"{key}.{i}", v) for i, v in enumerate(value)]
    if isinstance(value, DictConfig):
        return [(f"{key}.{k}", v) for k, v in value.items()]
    return [(key, value)]


def _checked(node: Any, prefix: str) -> Iterator[tuple[str, Any, Range]]:
    """(key, value, allowed) for every ranged value below a structured config node, its nested
    dataclasses and lists of them included; unset and null values are skipped."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(node, ListConfig):
        for i in range(len(node)):
            yield from _checked(node[i], f"{prefix}.{i}")
        return
    schema = OmegaConf.get_type(node) if isinstance(node, DictConfig) else None
    if schema is None or not dataclasses.is_dataclass(schema):
        return
    for f in dataclasses.fields(schema):
        if f.name not in node or OmegaConf.is_missing(node, f.name) or node[f.name] is None:
            continue
        key = f"{prefix}.{f.name}" if prefix else f.name
        if RANGE in f.metadata:
            yield from ((k, v, f.metadata[RANGE]) for k, v in _items(key, node[f.name]))
        else:
            yield from _checked(node[f.name], key)


def check_ranges(cfg: Any, prefix: str = "") -> None:
    """Raises PipelineError on the first option out of its range, naming the key as typed on the command
    line (below `prefix`, e.g. hydra.launcher), its value and what is allowed. A word where the schema
    allows one (train.lr=find) is checked where it is used."""
    for key, value, allowed in _checked(cfg, prefix):
        if isinstance(value, int | float) and not isinstance(value, bool) and value not in allowed:
            raise PipelineError(f"{key} must be {allowed}, got {value}")
