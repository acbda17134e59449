"""paths: where every command reads and writes (conf/paths/default.yaml)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class PathsConfig:
    outputs: str = "outputs"
    preds: str = "${paths.outputs}/preds"
    submissions: str = "${paths.outputs}/submissions"
    weights: str = "${paths.outputs}/weights"
    data: str = "${paths.outputs}/data"
    checkpoints: str = "${paths.outputs}/checkpoints"
    probe: str = "${paths.outputs}/probe"
