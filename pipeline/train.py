"""`python -m pipeline.train +model=NAME [key=value ...]`: train every variant of a model.

Writes one prediction file per run into paths.preds; see conf/config.yaml for the options. One run on
several processes: `torchrun --nproc_per_node=N -m pipeline.train ...` or train.devices=N
(pipeline/training/distributed.py).
"""

from __future__ import annotations

import sys

import hydra

from pipeline.config import TrainAppConfig, register_configs
from pipeline.errors import PipelineError, exit_on_error
from pipeline.launchers import LAUNCHERS
from pipeline.registry import refuse_unknown_choices
from pipeline.training.distributed import worker_overrides
from pipeline.training.loggers import LOGGERS
from pipeline.training.recipe import GROUPS

REGISTRIES = [*GROUPS.values(), LOGGERS, LAUNCHERS]
register_configs(*REGISTRIES)


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
@exit_on_error
def main(cfg: TrainAppConfig) -> list[dict]:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from pipeline.training.jobs import train_model

    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode == RunMode.RUN and str(hydra_cfg.launcher.get("_target_", "")).endswith(".KaggleLauncher"):
        # Hydra hands a single run to no launcher: without -m this would train here, not on Kaggle
        raise PipelineError("hydra/launcher=kaggle launches a sweep's jobs: add -m (python -m pipeline.train -m ...)")
    return [result.summary() for result in train_model(cfg)]  # for a multirun's report


if __name__ == "__main__":
    refuse_unknown_choices(REGISTRIES)
    try:  # under torchrun: the ranks other than 0 write no run folder, config copy or log file
        sys.argv += worker_overrides(sys.argv[1:])
    except PipelineError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    main()
