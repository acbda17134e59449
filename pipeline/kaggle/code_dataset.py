"""This project's code as a private Kaggle dataset that notebooks attach: a wheel, uploaded once per source.

The source hash covers every file the wheel is built from (SOURCES). Each dataset version holds the
wheel and a marker file named after that hash, so the dataset's file list says whether its latest
version is this source: unchanged code is never built or uploaded twice. The wheel is built from a
copy of the sources, so the checkout gains no build/ or .egg-info folders.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pipeline
from pipeline.errors import PipelineError
from pipeline.kaggle.client import call_api

if TYPE_CHECKING:
    from kaggle.api.kaggle_api_extended import KaggleApi

log = logging.getLogger(__name__)

SOURCES = ("pyproject.toml", "README.md", "pipeline", "hydra_plugins")
SKIPPED = ("__pycache__", ".pyc", ".egg-info")
WHEEL_PREFIX = "paddy_pipeline-"  # the distribution in pyproject.toml, as wheel file names spell it


@dataclass
class CodeDataset:
    ref: str  # owner/slug
    source_hash: str
    wheel: str  # the wheel's file name in the dataset
    uploaded: bool  # a new version was uploaded by this call


def source_root() -> Path:
    """The checkout `pipeline` is imported from: the wheel is built from its sources."""
    root = Path(pipeline.__file__).resolve().parents[1]
    if not (root / "pyproject.toml").is_file():
        raise PipelineError(
            f"pipeline is imported from {root}, not a source checkout with pyproject.toml: Kaggle notebooks "
            "get this project as a wheel built from its sources; install it with `pip install -e .` from a clone"
        )
    return root


def source_files(root: Path) -> list[Path]:
    files = []
    for name in SOURCES:
        path = root / name
        found = sorted(path.rglob("*")) if path.is_dir() else [path]
        files += [f for f in found if f.is_file() and not any(s in f.as_posix() for s in SKIPPED)]
    return files


def source_hash(root: Path, extra: list[Path] | None = None) -> str:
    """Of the sources' names and bytes, and of any `extra` files uploaded with them (dependency wheels)."""
    h = hashlib.sha256()
    for f in source_files(root):
        h.update(f"\0{f.relative_to(root).as_posix()}\0".encode())
        h.update(f.read_bytes())
    for f in extra or []:
        h.update(f"\0{f.name}\0".encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def extra_wheels(opts: Any) -> list[Path]:
    """hydra.launcher.wheels: dependency wheels uploaded with the code (notebooks with the internet off)."""
    extra = sorted(Path(opts.wheels).glob("*.whl")) if opts.wheels else []
    if opts.wheels and not extra:
        raise PipelineError(f"hydra.launcher.wheels={opts.wheels} holds no .whl files")
    return extra


def build_wheel(root: Path, out: Path) -> Path:
    """`pip wheel --no-deps` of a copy of the sources; offline (no build isolation, no index)."""
    with tempfile.TemporaryDirectory(prefix="pipeline-wheel-") as tmp:
        src = Path(tmp) / "src"
        for f in source_files(root):
            (src / f.relative_to(root)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, src / f.relative_to(root))
        command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index"]
        done = subprocess.run([*command, "--quiet", "-w", str(out), str(src)], capture_output=True, text=True)
        if done.returncode:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise PipelineError(f"building the project's wheel failed ({last}): try `pip wheel --no-deps .`")
    (wheel,) = out.glob("*.whl")
    return wheel


def ensure(api: KaggleApi, username: str, opts: Any, root: Path | None = None) -> CodeDataset:
    """The dataset <username>/<opts.code_dataset> holding this source's wheel: found, or uploaded (a new
    dataset, or a new version of it) and waited for until Kaggle has processed it."""
    root = root or source_root()
    extra = extra_wheels(opts)
    digest = source_hash(root, extra)
    ref, marker = f"{username}/{opts.code_dataset}", f"source-{digest}.sha256"
    names = list_files(api, ref, opts.kaggle)
    if names is not None and marker in names:
        wheel = next((n for n in names if n.endswith(".whl") and n.startswith(WHEEL_PREFIX)), None)
        if wheel:
            log.info("code: %s already holds this source (%s)", ref, digest)
            return CodeDataset(ref, digest, wheel, uploaded=False)
    with tempfile.TemporaryDirectory(prefix="pipeline-code-") as tmp:
        folder = Path(tmp)
        wheel = build_wheel(root, folder)
        files = [f.relative_to(root).as_posix() for f in source_files(root)]
        (folder / marker).write_text(json.dumps({"source_hash": digest, "wheel": wheel.name, "files": files}))
        for f in extra:
            shutil.copy2(f, folder / f.name)
        metadata = {
            "title": opts.code_dataset,
            "id": ref,
            "licenses": [{"name": "other"}],
            "description": "paddy-pipeline's code (Apache-2.0), for its Kaggle notebooks.",
        }
        (folder / "dataset-metadata.json").write_text(json.dumps(metadata, indent=1))
        log.info("code: uploading %s (source %s) to %s", wheel.name, digest, ref)
        response = call_api(
            lambda: (
                api.dataset_create_new(str(folder), public=False, quiet=True)
                if names is None
                else api.dataset_create_version(str(folder), f"source {digest}", quiet=True)
            ),
            f"upload of the code to {ref}",
            opts.kaggle,
        )
        if response.error:
            raise PipelineError(f"Kaggle refused the code dataset {ref}: {response.error}")
        wait_until_ready(api, ref, opts)
        return CodeDataset(ref, digest, wheel.name, uploaded=True)


def list_files(api: KaggleApi, ref: str, retry: Any) -> list[str] | None:
    """The file names of the dataset's latest version; None when there is no such dataset."""
    import requests

    def page(token: str | None) -> Any:
        try:
            return api.dataset_list_files(ref, page_token=token, page_size=100)
        except requests.HTTPError as e:
            if getattr(e.response, "status_code", None) == 404:
                return None
            raise

    names: list[str] = []
    token = None
    while True:
        found = call_api(lambda: page(token), f"listing the files of {ref}", retry)
        if found is None:
            return None
        names += [f.name for f in found.dataset_files or []]
        if not (token := found.next_page_token):
            return names


def wait_until_ready(api: KaggleApi, ref: str, opts: Any, timeout_s: float = 1800) -> None:
    """Kaggle processes an upload before notebooks can attach it."""
    deadline, delay = time.monotonic() + timeout_s, min(opts.poll_s, 5.0)
    while (status := call_api(lambda: api.dataset_status(ref), f"status of {ref}", opts.kaggle)) != "ready":
        if status in ("failed", "deleted") or time.monotonic() > deadline:
            raise PipelineError(f"the code dataset {ref} is {status} on Kaggle: https://www.kaggle.com/datasets/{ref}")
        time.sleep(delay)
