"""What made a run: its identity (a hash of the inputs that shape its predictions) and the environment."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
from dataclasses import asdict
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.data.layout import KEYS as LAYOUT_KEYS
from pipeline.training.specs import RunSpec

if TYPE_CHECKING:
    from pipeline.config import DataConfig, TTAConfig

PACKAGES = ("torch", "torchvision", "timm", "fastai", "fastcore", "numpy", "pandas", "pillow", "hydra-core")
REPO = Path(__file__).resolve().parents[1]


# data keys left out of the identity: where files are and how they are read, not what they hold; data.pseudo's
# settings are the recipe's (RunSpec), its blend and data.exclude's list are hashed by content instead
UNHASHED_DATA = ("root", "num_workers", "test_labels", "pseudo", "pseudo_threshold", "pseudo_hard",
                 "pseudo_cap_per_class", "exclude", *LAYOUT_KEYS)  # fmt: skip


def run_hash(
    run: RunSpec, data: DataConfig, tta: TTAConfig, data_fingerprint: str, teachers: dict[str, str] | None = None
) -> str:
    """Identity of a run: same hash, same training. `data_fingerprint` (Competition.fingerprint_for) stands
    for the images: an image added, removed, relabelled or changed, another test set or another data.exclude
    list retrains. `teachers`: the content hash of each blend the run learns from (training/teachers: loss.teacher,
    data.pseudo), so that a new blend retrains it. Paths and worker counts are left out (they do not change the
    predictions), so moving outputs or the data folder, or changing num_workers, keeps finished runs; so are the
    layout's names (data.train_dir, ...): the fingerprint already holds the files they find, and runs trained
    before they were keys keep their hash, as runs without pseudo-labels or a teacher keep theirs. Hash the run
    as configured: an out-of-memory retry with a larger accum keeps the identity."""
    spec = asdict(run)
    spec["recipe"]["loss"].pop("teacher", None)  # a path: the blend's content is in `teachers`
    if not spec["recipe"]["pseudo"]:
        del spec["recipe"]["pseudo"]
    identity = {
        "run": spec,
        "data": {k: data[k] for k in sorted(data) if k not in UNHASHED_DATA},
        "data_fingerprint": data_fingerprint,
        "tta": {k: tta[k] for k in sorted(tta)},
    }
    if teachers:
        identity["teachers"] = teachers
    blob = json.dumps(identity, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def placement() -> dict[str, Any]:
    """Where this process runs: the host, the GPUs it was given (CUDA_VISIBLE_DEVICES, set per job by Ray
    and SLURM), the Hydra launcher and the job's id there (SLURM job id, Ray task id), and how many times
    SLURM restarted the job (a requeue after a time-out or preemption)."""
    from hydra.core.hydra_config import HydraConfig

    launcher = HydraConfig.get().runtime.choices.get("hydra/launcher") if HydraConfig.initialized() else None
    job_id = os.environ.get("SLURM_JOB_ID")
    ray = sys.modules.get("ray")  # imported only in a Ray worker
    if job_id is None and ray is not None and ray.is_initialized():
        job_id = ray.get_runtime_context().get_task_id()
    restarts = os.environ.get("SLURM_RESTART_COUNT")
    return {
        "host": platform.node(),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "launcher": launcher,
        "job_id": job_id,
        "restarts": int(restarts) if restarts else 0,
    }


def environment(device: str) -> dict[str, Any]:
    """Package versions, the project's git commit (and whether the tree had changes), the device, and
    where the run was trained (`placement`)."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "python": platform.python_version(),
        "packages": versions,
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": None if status is None else bool(status),
        "device": device,
        "device_name": _device_name(device),
    } | placement()


def _device_name(device: str) -> str:
    import torch

    if device == "cuda":
        return torch.cuda.get_device_name()
    return platform.processor() or platform.machine()
