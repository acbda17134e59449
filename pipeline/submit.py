"""`python -m pipeline.submit [key=value ...]`: check a submission CSV, upload it to Kaggle, record its score.

`submit.dry_run=true` does every step but the upload; `submit.list=true` prints the submissions log.
See conf/submit.yaml for the options.
"""

from __future__ import annotations

import logging

import hydra

from pipeline.config import SubmitAppConfig, register_configs
from pipeline.errors import exit_on_error

register_configs()
log = logging.getLogger(__name__)


@hydra.main(config_path="../conf", config_name="submit", version_base="1.3")
@exit_on_error
def main(cfg: SubmitAppConfig) -> None:
    from pipeline.kaggle.uploads import log_table, submit

    if not cfg.submit.list:
        result = submit(cfg)
        if result.ref is not None:
            log.info("submission %s: %s, public score %s", result.ref, result.status, result.public_score or "n/a")
    log.info("\n%s", log_table(cfg.submit.log))


if __name__ == "__main__":
    main()
