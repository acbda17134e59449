"""`python -m pipeline.download [key=value ...]`: the competition's files -> data.root, unzipped and checked.

See conf/download.yaml for the options.
"""

from __future__ import annotations

import logging

import hydra

from pipeline.config import DownloadAppConfig, register_configs
from pipeline.errors import exit_on_error

register_configs()
log = logging.getLogger(__name__)


@hydra.main(config_path="../conf", config_name="download", version_base="1.3")
@exit_on_error
def main(cfg: DownloadAppConfig) -> None:
    from pipeline.kaggle.competition_files import download, layout_table

    log.info("\n%s", layout_table(download(cfg)))


if __name__ == "__main__":
    main()
