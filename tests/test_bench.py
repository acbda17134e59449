"""The benchmark CLI: its config, its data and one tiny real run (figures are not checked: timings
belong to the benchmark's output, never to assertions)."""

import sys

import pandas as pd
import pytest

from pipeline.benchmark import replicate_sample
from pipeline.data.competition import scan_competition
from tests import warm_python
from tests.conftest import PADDY_SAMPLE, REPO, compose


def test_bench_config_composes_with_the_shared_groups():
    cfg = compose("bench", ["paths.outputs=/o"])
    assert cfg.data.root == "/o/data/bench-paddy-330" and cfg.perf.cache_dir == "/o/cache"
    assert (cfg.bench.item_size, cfg.bench.size, cfg.bench.batch_size, cfg.bench.accum) == (480, 128, 64, 2)


def test_bench_with_random_weights_asks_for_none(tmp_path):
    from pipeline.benchmark import bench_run
    from pipeline.training.pretrained import timm_kwargs

    cfg = compose("bench", ["bench.arch=vit_large_patch16_224", "bench.pretrained=false", f"paths.weights={tmp_path}"])
    run = bench_run(cfg)
    assert not run.pretrained and run.weights is None and timm_kwargs(run) == {}
    assert list(tmp_path.iterdir()) == []  # no weights converted
    cfg = compose("bench", ["bench.pretrained=false", f"paths.weights={tmp_path}"])
    assert bench_run(cfg).weights is None and list(tmp_path.iterdir()) == []


def test_replicated_sample_is_a_valid_competition(tmp_path):
    if not PADDY_SAMPLE.is_dir():
        pytest.skip("no paddy sample")
    root = replicate_sample(PADDY_SAMPLE, tmp_path / "bench", 45, 7)
    comp = scan_competition(root)
    assert len(comp.train_files) == 45 and len(comp.test_files) == 7 and len(comp.vocab) == 10
    assert list(pd.read_csv(root / "sample_submission.csv").image_id) == comp.test_ids
    assert replicate_sample(PADDY_SAMPLE, root, 45, 7) == root  # built once


@pytest.mark.slow
def test_bench_cli_runs_and_reports_every_figure(tmp_path, weights_dir):
    if not PADDY_SAMPLE.is_dir():
        pytest.skip("no paddy sample")
    args = [
        f"paths.outputs={tmp_path}",
        f"paths.weights={weights_dir}",
        f"bench.sample={PADDY_SAMPLE}",
        "bench.images=80",
        "bench.test_images=6",
        "bench.item_size=64",
        "bench.size=32",
        "bench.batch_size=16",
        "bench.repeats=1",
        "bench.limit_steps=1",
    ]
    out = warm_python.run(
        [sys.executable, "-m", "pipeline.bench", *args], cwd=REPO, capture_output=True, text=True, timeout=900
    )
    assert out.returncode == 0, out.stderr[-3000:]
    for text in ("reference", "pipeline", "compute limit", "pipeline / reference", "pipeline / limit", "peak RSS"):
        assert text in out.stdout
