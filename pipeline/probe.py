"""`python -m pipeline.probe +model=NAME [probe.budget_gb=16] [probe.write=true]`: the smallest accum
with which each variant of a model fits in memory (options: the probe section of conf/config.yaml)."""

from __future__ import annotations

import hydra

from pipeline.config import TrainAppConfig, register_configs
from pipeline.errors import exit_on_error
from pipeline.launchers import LAUNCHERS
from pipeline.registry import refuse_unknown_choices
from pipeline.training.loggers import LOGGERS
from pipeline.training.recipe import GROUPS

REGISTRIES = [*GROUPS.values(), LOGGERS, LAUNCHERS]
register_configs(*REGISTRIES)


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
@exit_on_error
def main(cfg: TrainAppConfig) -> None:
    from pipeline.training.memory_probe import probe_model

    probe_model(cfg)


if __name__ == "__main__":
    refuse_unknown_choices(REGISTRIES)
    main()
