"""`python -m pipeline.train +model=NAME [key=value ...]`: train every variant of a model.

Writes one prediction file per run into paths.preds; see conf/config.yaml for the options.
"""

from __future__ import annotations

import hydra

from pipeline.config import register_configs
from pipeline.errors import exit_on_error

register_configs()


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
@exit_on_error
def main(cfg) -> list[dict]:
    from pipeline.training.runner import train_model

    return [result.summary() for result in train_model(cfg)]  # for a multirun's report


if __name__ == "__main__":
    main()
