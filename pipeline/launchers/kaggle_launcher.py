"""hydra/launcher=kaggle: each job of a multirun becomes a Kaggle notebook (pipeline/kaggle/kernels.py).

Hydra imports hydra_plugins/paddy_pipeline, which names this class, at start-up, so this module imports
nothing heavy at the top. A failed notebook makes its job return JobFailed, so
pipeline.errors.MultirunFailures lists it and the command exits 2 once every job has been followed to
its end.
"""

from __future__ import annotations

import copy
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, setup_globals
from omegaconf import OmegaConf, open_dict

from pipeline.launchers.base import SweepLauncher


class KaggleLauncher(SweepLauncher):
    def __init__(self, **options: Any) -> None:
        self.options = OmegaConf.create(options)

    def setup(self, **kwargs: Any) -> None:
        """Check the credentials first: Hydra's sweeper makes the sweep folder (multirun.yaml) between setup
        and launch, so without them an error here leaves nothing behind."""
        from pipeline.errors import PipelineError
        from pipeline.kaggle.client import credentials_source

        try:
            credentials_source()
        except PipelineError as e:
            stop(e)
        super().setup(**kwargs)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from pipeline.errors import JobFailed, PipelineError
        from pipeline.kaggle.kernels import Job, run_jobs

        assert self.config is not None and self.hydra_context is not None
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        self.refuse_clashing_runs(job_overrides, initial_job_idx)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        log_to(sweep_dir / "kaggle.log")
        labels = job_labels(job_overrides)
        jobs, configs = [], []
        for num, overrides in enumerate(job_overrides, start=initial_job_idx):
            cfg = self.job_config(num, overrides)
            HydraConfig.instance().set_config(cfg)  # the sweep subdir may use Hydra's resolvers
            task = copy.deepcopy(cfg)
            with open_dict(task):
                del task["hydra"]
            job_dir = sweep_dir / str(OmegaConf.select(cfg, "hydra.sweep.subdir"))
            jobs.append(Job(num, labels[num - initial_job_idx], task, job_dir))
            configs.append(cfg)
        HydraConfig.instance().set_config(self.config)
        try:
            errors = run_jobs(jobs, self.options)
        except PipelineError as e:  # nothing could start (the code upload, ...)
            stop(e)
        except KeyboardInterrupt:
            print(
                "interrupted: the notebooks go on on Kaggle; the same command follows them, python -m pipeline.kernels"
                " lists them, and a notebook's page on kaggle.com cancels it",
                file=sys.stderr,
            )
            sys.exit(130)
        returns = []
        for job, cfg, error in zip(jobs, configs, errors, strict=True):
            ret = JobReturn(
                overrides=list(cfg.hydra.overrides.task),
                cfg=job.cfg,
                hydra_cfg=cfg,
                working_dir=str(job.job_dir),
                task_name=cfg.hydra.job.name,
                status=JobStatus.COMPLETED,
                _return_value=JobFailed(error) if error else None,
            )
            self.hydra_context.callbacks.on_job_end(config=cfg, job_return=ret)
            returns.append(ret)
        return returns


def stop(error: Exception) -> NoReturn:
    """Nothing could start: one line, as every CLI, and exit 2."""
    print(f"error: {error}", file=sys.stderr)
    sys.exit(2)


def job_labels(job_overrides: Sequence[Sequence[str]]) -> list[str]:
    """What tells the jobs apart: the overrides not shared by all of them (all of them for a single job)."""
    jobs = [filter_overrides(overrides) for overrides in job_overrides]
    shared = set.intersection(*(set(o) for o in jobs)) if len(jobs) > 1 else set()
    return [" ".join(o for o in overrides if o not in shared) for overrides in jobs]


def log_to(path: Path) -> None:
    """The launcher's progress (pipeline.* loggers) on the console and in the sweep's kaggle.log, with
    levels: Hydra's own launcher logging shows neither."""
    logger = logging.getLogger("pipeline")
    formatter = logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    logger.handlers = [logging.StreamHandler(sys.stdout), logging.FileHandler(path)]
    for handler in logger.handlers:
        handler.setFormatter(formatter)
    logger.setLevel(logging.INFO)
    logger.propagate = False
