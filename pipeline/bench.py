"""`python -m pipeline.bench [key=value ...]`: the reference recipe, this pipeline and the compute-only
limit, timed side by side in one process on the same data and model. See conf/bench.yaml."""

from __future__ import annotations

import hydra

from pipeline.config import BenchAppConfig, register_configs
from pipeline.errors import exit_on_error

register_configs()


@hydra.main(config_path="../conf", config_name="bench", version_base="1.3")
@exit_on_error
def main(cfg: BenchAppConfig) -> None:
    from pipeline.benchmark import run_benchmark

    print(run_benchmark(cfg), flush=True)


if __name__ == "__main__":
    main()
