"""hydra/launcher=gpus: a multirun's jobs side by side on a Ray cluster, one GPU each, queued by Ray.

Ray does the scheduling: a job asks for `gpus_per_job` GPUs, Ray starts it in a fresh worker process
with its own CUDA_VISIBLE_DEVICES and keeps the others waiting until a GPU is free. Where the cluster
has no GPUs, a job asks for `cpus_per_job` cores instead (Ray sets OMP_NUM_THREADS to match). The
cluster is a local one started for the command and ended with it, or, with RAY_ADDRESS set, a running
one. The rest is hydra-ray-launcher's own job function; this class adds the choice of resources, the
working directory of the command for every job, and a failed job record for a job whose worker died.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from omegaconf import DictConfig, OmegaConf

from pipeline.errors import JobFailed, PipelineError, one_line
from pipeline.launchers.base import SweepLauncher
from pipeline.launchers.report import record_lost_job

log = logging.getLogger(__name__)

# ray.init options that size a local instance; refused by Ray when connecting to a running cluster
LOCAL_ONLY = ("num_cpus", "num_gpus", "object_store_memory", "resources")


def _run_job(cwd: str, **kwargs: Any) -> JobReturn:
    """In the Ray worker: relative paths (outputs/, the sweep folder) mean what they mean for the command."""
    from hydra_plugins.hydra_ray_launcher._launcher_util import _run_job as run_hydra_job

    os.chdir(cwd)
    return run_hydra_job(**kwargs)


class GpuPool(SweepLauncher):
    def __init__(self, ray: DictConfig, gpus_per_job: float, cpus_per_job: int) -> None:
        self.ray_cfg = ray
        self.gpus_per_job = gpus_per_job
        self.cpus_per_job = cpus_per_job

    def _start_ray(self) -> Any:
        try:
            import ray
        except ImportError:
            raise PipelineError(
                "hydra/launcher=gpus needs Ray and hydra-ray-launcher: pip install -e .[cluster]"
            ) from None
        init = {k: v for k, v in OmegaConf.to_container(self.ray_cfg.init, resolve=True).items() if v is not None}
        address = init.get("address") or os.environ.get("RAY_ADDRESS")
        if address:
            init = {k: v for k, v in init.items() if k not in LOCAL_ONLY}
            log.info("connecting to the Ray cluster at %s", address)
        if not ray.is_initialized():
            ray.init(**init)
        return ray

    def remote_options(self, nodes: list[dict[str, float]]) -> dict[str, Any]:
        """GPUs per job where the cluster has GPUs, else cores (no more than its largest node has, or no
        job would ever start); hydra.launcher.ray.remote adds to that, or overrides it."""
        if any(node.get("GPU") for node in nodes):
            need = {"num_gpus": self.gpus_per_job}
        else:
            need = {"num_cpus": min(self.cpus_per_job, max(node.get("CPU", 1) for node in nodes))}
        return need | OmegaConf.to_container(self.ray_cfg.remote, resolve=True)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from hydra.core.singleton import Singleton
        from hydra.core.utils import setup_globals

        assert self.config is not None and self.hydra_context is not None and self.task_function is not None
        setup_globals()
        ray = self._start_ray()
        cluster = ray.cluster_resources()
        options = self.remote_options([node["Resources"] for node in ray.nodes() if node["Alive"]])
        log.info(
            "Ray: %d jobs on %g GPUs and %g CPUs, each job %s; sweep folder %s",
            len(job_overrides),
            cluster.get("GPU", 0),
            cluster.get("CPU", 0),
            options,
            self.config.hydra.sweep.dir,
        )
        run_job = ray.remote(**options)(_run_job)
        pending = {}
        for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
            log.info("\t#%d : %s", idx, " ".join(filter_overrides(overrides)))
            sweep_config = self.job_config(idx, overrides)
            ref = run_job.remote(
                os.getcwd(),
                hydra_context=self.hydra_context,
                sweep_config=sweep_config,
                task_function=self.task_function,
                singleton_state=Singleton.get_state(),
            )
            pending[ref] = (idx, list(overrides), sweep_config)
        returns = {}
        while pending:
            (ref,), _ = ray.wait(list(pending), num_returns=1)
            idx, overrides, sweep_config = pending.pop(ref)
            try:
                returns[idx] = ray.get(ref)
            except ray.exceptions.RayError as e:  # the worker died: no job record from the job itself
                ret = JobReturn(overrides=overrides, status=JobStatus.COMPLETED)
                ret.return_value = record_lost_job(sweep_config, f"the job's Ray worker failed: {one_line(e)}")
                returns[idx] = ret
            value = returns[idx]._return_value
            outcome = (
                f"failed: {value}"
                if isinstance(value, JobFailed) or returns[idx].status != JobStatus.COMPLETED
                else "ok"
            )
            log.info("job %d %s; %d running or queued", idx, outcome, len(pending))
        return [returns[idx] for idx in sorted(returns)]
