"""What made a run: its identity (a hash of the inputs that shape its predictions) and the environment."""

from __future__ import annotations

import hashlib
import json
import platform
import subprocess
from dataclasses import asdict
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from pipeline.training.specs import RunSpec

PACKAGES = ("torch", "torchvision", "timm", "fastai", "fastcore", "numpy", "pandas", "pillow", "hydra-core")
REPO = Path(__file__).resolve().parents[1]


def run_hash(run: RunSpec, data: Any, tta: Any) -> str:
    """Identity of a run: same hash, same training. Output paths, worker counts and where the data
    lives (data.root) are left out (they do not change the predictions), so moving outputs or data,
    changing num_workers, or training in a Kaggle notebook on /kaggle/input keeps finished runs.
    Hash the run as configured: an out-of-memory retry with a larger accum keeps the identity."""
    identity = {
        "run": asdict(run),
        "data": {k: data[k] for k in sorted(data) if k not in ("num_workers", "test_labels", "root")},
        "tta": {k: tta[k] for k in sorted(tta)},
    }
    blob = json.dumps(identity, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def environment(device: str) -> dict[str, Any]:
    """Package versions, the project's git commit (and whether the tree had changes), and the device."""
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
        "host": platform.node(),
    }


def _device_name(device: str) -> str:
    import torch

    if device == "cuda":
        return torch.cuda.get_device_name()
    return platform.processor() or platform.machine()
