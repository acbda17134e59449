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
import signal
import sys
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
        from hydra.core.utils import setup_globals

        assert self.config is not None and self.hydra_context is not None and self.task_function is not None
        setup_globals()
        self.refuse_clashing_runs(job_overrides, initial_job_idx)
        ray = self._start_ray()
        started_here = not (self.ray_cfg.init.get("address") or os.environ.get("RAY_ADDRESS"))
        pending: dict[Any, tuple[int, list[str], DictConfig]] = {}
        # Ctrl-C (SIGINT to the command or its process group) and SIGTERM stop the sweep: Ray's workers run
        # in process groups of their own, so the command passes the interrupt on to each job
        previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            self._submit(ray, job_overrides, initial_job_idx, pending)
            return self._collect(ray, pending)
        except KeyboardInterrupt:
            _stop_jobs(ray, list(pending))
            if started_here:
                ray.shutdown()  # the local Ray started for this command: its raylet and workers end with it
            print(
                f"interrupted: {len(pending)} job(s) stopped, each keeping its last epoch checkpoint; "
                "run the same command again to continue",
                file=sys.stderr,
            )
            sys.exit(130)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _submit(self, ray: Any, job_overrides: Sequence[Sequence[str]], first: int, pending: dict[Any, Any]) -> None:
        """Every job to Ray at once: Ray queues those that find no free GPU."""
        from hydra.core.singleton import Singleton

        assert self.config is not None
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
        for idx, overrides in enumerate(job_overrides, start=first):
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

    def _collect(self, ray: Any, pending: dict[Any, Any]) -> list[JobReturn]:
        """Each job's return as it ends; a job whose worker died gets a failed record. `pending` keeps the
        jobs not yet ended, for an interrupt."""
        returns = {}
        while pending:
            # a short wait: Python runs the interrupt handler between waits, not inside one
            done, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
            if not done:
                continue
            idx, overrides, sweep_config = pending.pop(done[0])
            try:
                returns[idx] = ray.get(done[0])
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


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def _stop_jobs(ray: Any, refs: list[Any], grace_s: float = 60.0) -> None:
    """Cancel the jobs: a queued one never starts; a running one gets a KeyboardInterrupt, on which the job
    (pipeline.errors.exit_on_error) ends as on Ctrl-C, its run's last epoch checkpoint on disk. A job still
    running after `grace_s` seconds has its worker killed."""
    for ref in refs:
        ray.cancel(ref, force=False)
    _, running = ray.wait(refs, num_returns=len(refs), timeout=grace_s) if refs else ([], [])
    for ref in running:
        ray.cancel(ref, force=True)
