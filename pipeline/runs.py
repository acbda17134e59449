"""`python -m pipeline.runs [runs.sort=COLUMN] [runs.filter=GLOB] [runs.format=csv]`: every run in paths.preds.

A table read from the prediction files alone (pipeline/training/listing.py); see conf/runs.yaml.
"""

from __future__ import annotations

import hydra

from pipeline.config import RunsAppConfig, register_configs
from pipeline.errors import exit_on_error

register_configs()


@hydra.main(config_path="../conf", config_name="runs", version_base="1.3")
@exit_on_error
def main(cfg: RunsAppConfig) -> None:
    from pipeline.training.listing import show_runs

    show_runs(cfg)


if __name__ == "__main__":
    main()
