"""`python -m pipeline.kernels [key=value ...]`: the Kaggle notebooks this project pushed.

Status, sessions, GPU hours and what came home, from the ledger that hydra/launcher=kaggle keeps; the
unfinished ones are asked of Kaggle first (kernels.refresh). See conf/kernels.yaml.
"""

from __future__ import annotations

import logging

import hydra

from pipeline.config import KernelsAppConfig, register_configs
from pipeline.errors import exit_on_error

register_configs()
log = logging.getLogger(__name__)


@hydra.main(config_path="../conf", config_name="kernels", version_base="1.3")
@exit_on_error
def main(cfg: KernelsAppConfig) -> None:
    from pipeline.kaggle import notebook_ledger
    from pipeline.kaggle.kernels import refresh

    quota = refresh(cfg) if cfg.kernels.refresh else ""
    log.info("\n%s", notebook_ledger.table(cfg.kernels.ledger) + (f"\n{quota}" if quota else ""))


if __name__ == "__main__":
    main()
