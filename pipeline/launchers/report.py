"""The end of a sweep for every launcher: what each job did, where it ran, where its log is; exit 2 if
any failed.

Hydra calls a callback's `on_job_end` inside the job's own process, which with Ray or SLURM is another
process, often another machine, so nothing is collected in memory: each job writes `job.json` into its
own folder (at its start, then at its end), a launcher writes it for a job whose process died, and
`on_multirun_end`, in the command's process, reads them all from the sweep folder.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

from pipeline.errors import JobFailed
from pipeline.tables import format_table

log = logging.getLogger(__name__)

RECORD = "job.json"


def _job_dir(config: Any) -> Path:
    """The job's folder, from a job's config (as run_job sets it), else from a sweep config."""
    if out := config.hydra.runtime.get("output_dir"):
        return Path(out)
    return Path(config.hydra.sweep.dir) / str(config.hydra.sweep.subdir)


def _write(path: Path, record: dict[str, Any]) -> None:
    from pipeline.fileio import write_atomic  # imports pandas: not at Hydra's start-up, which imports this module

    write_atomic(path, json.dumps(record, indent=1, default=str))


def _read(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _base(config: Any) -> dict[str, Any]:
    job_dir = _job_dir(config)
    return {
        "num": int(config.hydra.job.num),
        "overrides": list(config.hydra.overrides.task),
        "folder": str(job_dir),
        "log": str(job_dir / f"{config.hydra.job.name}.log"),
    }


def record_lost_job(sweep_config: Any, error: str) -> JobFailed:
    """For a launcher: record a job whose process died without a result (killed, lost node, time-out
    without requeue); returns what the job would have returned."""
    path = _job_dir(sweep_config) / RECORD
    record = (_read(path) or {}) | _base(sweep_config) | {"status": "failed", "error": error, "ended": time.time()}
    _write(path, record)
    return JobFailed(error)


class SweepReport(Callback):
    """hydra.callbacks entry of conf/config.yaml: job records, and the report at the end of a multirun."""

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        # a sweep folder used again must not report the jobs of an earlier sweep
        for old in _records(Path(config.hydra.sweep.dir)):
            old.unlink()

    def on_job_start(self, config: Any, **kwargs: Any) -> None:
        if not _multirun(config):
            return
        from pipeline.training.provenance import placement

        path = _job_dir(config) / RECORD
        attempts = (_read(path) or {}).get("attempts", 0) + 1  # > 1: requeued or retried, resuming
        _write(path, _base(config) | {"status": "running", "attempts": attempts, "started": time.time()} | placement())

    def on_job_end(self, config: Any, job_return: Any, **kwargs: Any) -> None:
        if not _multirun(config):
            return
        from hydra.core.utils import JobStatus

        path = _job_dir(config) / RECORD
        record = _read(path) or _base(config)
        value = job_return._return_value
        if job_return.status != JobStatus.COMPLETED:
            record |= {"status": "failed", "error": f"{type(value).__name__}: {value}"}
        elif isinstance(value, JobFailed):
            record |= {"status": "failed", "error": str(value), "runs": list(value.runs)}
        else:
            record |= {"status": "ok", "error": "", "runs": value if isinstance(value, list) else []}
        _write(path, record | {"ended": time.time()})

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        jobs = sweep_jobs(sweep_dir)
        print(f"sweep {sweep_dir}: {summary(jobs)}\n{report_table(jobs)}")
        if failed := [j for j in jobs if j["status"] != "ok"]:
            lines = [f"job {j['num']} ({' '.join(j['overrides'])}): {j.get('error') or _died(j)}" for j in failed]
            print(f"error: {len(failed)} job(s) failed:", *lines, sep="\n  ", file=sys.stderr)
            sys.exit(2)


def _multirun(config: Any) -> bool:
    """Whether this is a sweep's job whose record this process keeps: rank 0's alone in a DDP job."""
    from hydra.types import RunMode

    from pipeline.training.distributed import is_worker

    return config.hydra.mode == RunMode.MULTIRUN and not is_worker()


def _records(sweep_dir: Path) -> list[Path]:
    if not sweep_dir.is_dir():
        return []
    return [p for p in sweep_dir.rglob(RECORD) if not any(part.startswith(".") for part in p.parts)]


def sweep_jobs(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """The job records of a sweep folder, by job number."""
    jobs = [r for p in _records(Path(sweep_dir)) if (r := _read(p))]
    return sorted(jobs, key=lambda j: j["num"])


def _died(job: dict[str, Any]) -> str:
    return f"its process ended without a result (killed?): see {job['log']}"


def summary(jobs: list[dict[str, Any]]) -> str:
    ok = sum(j["status"] == "ok" for j in jobs)
    return f"{len(jobs)} jobs, {ok} ok, {len(jobs) - ok} failed"


def report_table(jobs: list[dict[str, Any]]) -> str:
    """One row per job: status, where it ran (host, GPU, job id), its runs and what each did, its log."""

    def where(j: dict[str, Any]) -> str:
        parts = [j.get("host") or "?"]
        if j.get("cuda_visible_devices") is not None:
            parts.append(f"gpu {j['cuda_visible_devices']}")
        if j.get("job_id"):
            parts.append(f"job {j['job_id'][:16]}")
        if j.get("attempts", 1) > 1:
            parts.append(f"attempt {j['attempts']}")
        return " ".join(parts)

    def runs(j: dict[str, Any]) -> str:
        if j.get("runs"):
            return ", ".join(
                f"{r['run']} {r['status']}" + (f" ({r['error']})" if r["error"] else "") for r in j["runs"]
            )
        return j.get("error") or ("" if j["status"] == "ok" else _died(j))

    return format_table(
        [
            {
                "job": j["num"],
                "status": "failed" if j["status"] == "running" else j["status"],
                "where": where(j),
                "minutes": f"{(j['ended'] - j['started']) / 60:.1f}" if j.get("ended") and j.get("started") else "-",
                "runs": runs(j),
                "log": j["log"],
            }
            for j in jobs
        ]
    )
