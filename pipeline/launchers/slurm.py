"""hydra/launcher=slurm: one SLURM job per job of a multirun, through submitit.

hydra-submitit-launcher's SlurmLauncher runs each job inside SLURM and, on the time-out signal
(USR2, `signal_delay_s` before the limit) or a preemption, resubmits it through its checkpoint()
while `max_num_timeout` allows; the requeued job resumes from the run's epoch checkpoint and skips
the runs already saved. It submits the sweep as one job array under one name; this launcher submits
each job on its own, named after its run, so that squeue and sacct say which run is where, and turns
a job that ended without a result into a failed job record instead of an exception that would stop
the sweep's report. With nodes x tasks_per_node > 1 a job is one run on that many DDP ranks (`RankedJob`).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from omegaconf import OmegaConf

from pipeline.errors import PipelineError, one_line
from pipeline.launchers.base import SweepLauncher
from pipeline.launchers.report import record_lost_job

if TYPE_CHECKING:
    from pipeline.config import TrainAppConfig

log = logging.getLogger(__name__)


def job_name(cfg: TrainAppConfig) -> str:
    """The run's name when the job trains one run, else the model's (with its fold, if one is chosen)."""
    from pipeline.training.specs import resolve_runs

    try:
        runs = resolve_runs(cfg)
    except PipelineError:
        runs = []
    if len(runs) == 1:
        return runs[0].name
    model = cfg.get("model")
    name = model.name if model and not OmegaConf.is_missing(model, "name") else "train"
    return name if cfg.train.get("fold") is None else f"{name}_fold{cfg.train.fold}"


class Slurm(SweepLauncher):
    def __init__(self, name: str | None = None, **params: Any) -> None:
        self.name = name
        self.params = params

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        try:
            import submitit
            from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
            from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher
        except ImportError:
            raise PipelineError(
                "hydra/launcher=slurm needs submitit and hydra-submitit-launcher: pip install -e .[cluster]"
            ) from None
        from hydra.core.singleton import Singleton

        assert self.config is not None and self.hydra_context is not None and self.task_function is not None
        self.refuse_clashing_runs(job_overrides, initial_job_idx)
        # Hydra's launcher is what each SLURM job runs: its __call__ runs the Hydra job, its checkpoint()
        # is what submitit calls to requeue it.
        hydra_job = SlurmLauncher(**self.params)
        hydra_job.setup(hydra_context=self.hydra_context, task_function=self.task_function, config=self.config)
        job_fn = RankedJob(hydra_job)
        params = dict(hydra_job.params)
        executor = submitit.AutoExecutor(
            folder=params.pop("submitit_folder"), cluster="slurm", slurm_max_num_timeout=params.pop("max_num_timeout")
        )
        generic = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(**{k if k in generic else f"slurm_{k}": v for k, v in params.items()})
        if params["nodes"] * params["tasks_per_node"] > 1:  # one task that fails ends the job's others at once
            executor.update_parameters(slurm_srun_args=["--kill-on-bad-exit=1"])
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        jobs: list[tuple[Any, list[str], Any]] = []
        try:
            for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
                sweep_config = self.job_config(idx, overrides)
                name = self.name or job_name(sweep_config)
                executor.update_parameters(name=name)
                job = executor.submit(
                    job_fn, list(overrides), "hydra.sweep.dir", idx, f"job_id_for_{idx}", Singleton.get_state()
                )
                shown = " ".join(filter_overrides(overrides))
                log.info("\t#%d : %s -> SLURM job %s (%s)", idx, shown, job.job_id, name)
                jobs.append((job, list(overrides), sweep_config))
            return [_result(*job) for job in jobs]
        except KeyboardInterrupt:
            # the jobs are SLURM's now: Ctrl-C ends the wait, not them
            ids = [job.job_id for job, _, _ in jobs]
            print(
                f"interrupted: {len(ids)} SLURM job(s) go on; follow them with squeue -j {','.join(ids) or '-'}, "
                f"cancel them with scancel {' '.join(ids) or '-'}; once they end, the same command trains what is "
                "missing",
                file=sys.stderr,
            )
            sys.exit(130)


class RankedJob:
    """What each task of a SLURM job runs: hydra-submitit's job (Hydra's job in the task, requeued through
    its checkpoint()), once the task's DDP rank is in the environment. A job of N tasks (nodes x
    tasks_per_node) is one run on N ranks (pipeline.training.distributed): submitit's
    TorchDistributedEnvironment exports RANK, WORLD_SIZE, LOCAL_RANK and MASTER_ADDR/PORT (the first node,
    a port drawn from the job id); tasks other than rank 0 write neither config copies nor a log file
    (nor, through the report's callbacks, the job record), and log their warnings to the task's stderr."""

    def __init__(self, hydra_job: Any) -> None:
        self.hydra_job = hydra_job

    def __call__(self, sweep_overrides: list[str], *args: Any) -> JobReturn:
        import submitit

        from pipeline.training.distributed import WORKER_OVERRIDES

        if submitit.JobEnvironment().num_tasks > 1:
            ranks = submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
            if ranks.rank > 0:
                sweep_overrides = [*sweep_overrides, *WORKER_OVERRIDES]
        return self.hydra_job(sweep_overrides, *args)

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """submitit's requeue at a time-out or preemption (rank 0's task asks it): the same call again."""
        import submitit

        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


def _result(job: Any, overrides: list[str], sweep_config: Any) -> JobReturn:
    """The job's return once it ends; a job that ended without one gets a failed record."""
    try:
        return job.results()[0]
    except Exception as e:  # submitit's UncompletedJobError and kin: the job left no result
        ret = JobReturn(overrides=overrides, status=JobStatus.COMPLETED)
        error = f"SLURM job {job.job_id} ended without a result ({one_line(e)}): see {job.paths.stdout}"
        ret.return_value = record_lost_job(sweep_config, error)
        return ret
