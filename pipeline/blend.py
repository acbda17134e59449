"""`python -m pipeline.blend [key=value ...]`: blend prediction files -> submission CSV and report.

See conf/blend.yaml for the options.
"""

from __future__ import annotations

import logging

import hydra

from pipeline.config import BlendAppConfig, register_configs
from pipeline.errors import exit_on_error

register_configs()
log = logging.getLogger(__name__)


@hydra.main(config_path="../conf", config_name="blend", version_base="1.3")
@exit_on_error
def main(cfg: BlendAppConfig) -> None:
    from pipeline.ensemble.report import terminal_table
    from pipeline.ensemble.writing import blend

    log.info("\n%s", terminal_table(blend(cfg)))


if __name__ == "__main__":
    main()
