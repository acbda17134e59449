"""`python -m pipeline.prepare_demo`: the offline demo's data and pretrained weights (conf/prepare_demo.yaml)."""

from __future__ import annotations

import logging
from pathlib import Path

import hydra

from pipeline.config import PrepareDemoAppConfig, check_ranges, register_configs
from pipeline.errors import exit_on_error

register_configs()
log = logging.getLogger(__name__)


@hydra.main(config_path="../conf", config_name="prepare_demo", version_base="1.3")
@exit_on_error
def main(cfg: PrepareDemoAppConfig) -> None:
    from pipeline.data.demo import build_demo
    from pipeline.training.pretrained import LITE_PACKAGES, convert_lite_weights

    check_ranges(cfg)
    d = cfg.demo
    root = build_demo(
        d.source,
        Path(cfg.paths.data) / "demo",
        train_per_class=d.train_per_class,
        test_per_class=d.test_per_class,
        seed=d.seed,
    )
    log.info("demo data: %s", root)
    for arch in LITE_PACKAGES:
        log.info("weights: %s", convert_lite_weights(arch, cfg.paths.weights))


if __name__ == "__main__":
    main()
