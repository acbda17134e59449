"""`python -m pipeline.probe +model=NAME [probe.budget_gb=16] [probe.write=true]`: the smallest accum
with which each variant of a model fits in memory (options: the probe section of conf/config.yaml)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path

import hydra

from pipeline.config import check_ranges, register_configs
from pipeline.errors import PipelineError, exit_on_error

register_configs()
log = logging.getLogger(__name__)


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
@exit_on_error
def main(cfg) -> None:
    from pipeline.data import scan_competition
    from pipeline.learner import pick_device
    from pipeline.memory_probe import chosen_accums, probe_run, probe_table, smallest_class, write_accums
    from pipeline.runs import resolve_runs
    from pipeline.weights import timm_kwargs

    check_ranges(cfg)
    runs = resolve_runs(cfg)
    subset = smallest_class(scan_competition(cfg.data.root))
    device = pick_device(cfg.train.device)
    p = cfg.probe
    log.info(
        "probing %d runs on %s with %d images of class %s, budget %g GB",
        len(runs),
        device,
        len(subset.train_files),
        subset.train_files[0].parent.name,
        p.budget_gb,
    )
    measurements = []
    for run in runs:
        measurements += probe_run(subset, run, device, timm_kwargs(run), list(p.accums), p.budget_gb, p.steps)
    log.info("\n%s", probe_table(measurements, p.budget_gb))
    chosen = chosen_accums(measurements)
    if missing := [r.name for r in runs if r.name not in chosen]:
        raise PipelineError(
            f"no accum in {list(p.accums)} fits {p.budget_gb:g} GB for {', '.join(missing)}: "
            "try larger accums (probe.accums), a smaller size or batch_size"
        )
    if p.write:
        note = f"pipeline.probe on {device}, budget {p.budget_gb:g} GB, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
        log.info(
            "chosen accums written to %s", write_accums(Path(cfg.paths.probe) / f"{cfg.model.name}.yaml", chosen, note)
        )


if __name__ == "__main__":
    main()
