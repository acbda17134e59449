"""Jobs running at once share files safely: the image cache is built once, a run is trained by one job."""

import logging
import subprocess
import sys
import time

import pytest

from pipeline.training.jobs import run_lock, train_model
from tests import warm_python
from tests.conftest import PADDY_SAMPLE, REPO, compose, tiny_run_overrides

OPEN_CACHE = """
import hashlib, logging, sys, time
from pathlib import Path
logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")
import fastai.vision.core  # its 8 s import before the start, so that both jobs open the cache together
from pipeline.data.image_cache import open_cache
from tests.factories import make_run
cache_dir, sample, go = sys.argv[1:]
files = sorted(Path(sample).glob("train_images/*/*.jpg"))
print("ready", flush=True)
while not Path(go).exists():
    time.sleep(0.005)
cache = open_cache(cache_dir, make_run(resize="squish", item_size=(192,)), files)
print("rows", len(cache.rows), "digest", hashlib.sha256(cache.array.tobytes()).hexdigest())
"""


@pytest.mark.slow  # two processes importing fastai (seconds each) before they start together
def test_two_jobs_starting_together_build_the_image_cache_once(tmp_path):
    cache_dir, go = tmp_path / "cache", tmp_path / "go"
    jobs = [
        warm_python.Popen(
            [sys.executable, "-c", OPEN_CACHE, str(cache_dir), str(PADDY_SAMPLE), str(go)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(2)
    ]
    try:
        for job in jobs:  # both have imported everything
            assert "ready\n" in iter(job.stdout.readline, ""), job.wait()
        go.touch()
        outputs = [job.communicate(timeout=300)[0] for job in jobs]
    finally:
        for job in jobs:
            if job.poll() is None:
                job.kill()
    assert [job.returncode for job in jobs] == [0, 0], outputs
    assert sum(out.count("caching 30 decoded squish192 images") for out in outputs) == 1, outputs
    digests = {line for out in outputs for line in out.splitlines() if line.startswith("rows")}
    assert len(digests) == 1 and next(iter(digests)).startswith("rows 30 digest"), outputs
    names = sorted(p.name for p in cache_dir.iterdir())
    assert [n.rsplit(".", 1)[-1] for n in names] == ["lock", "json", "npy"], names  # no temporary file left


def test_a_run_another_job_is_training_is_skipped_with_a_clear_line(demo_root, weights_dir, tmp_path, caplog):
    preds = tmp_path / "preds"
    cfg = compose("config", tiny_run_overrides(demo_root, weights_dir, preds))
    with run_lock(preds / "tiny_squish32_32.pt") as held, caplog.at_level(logging.WARNING):
        assert held
        start = time.perf_counter()
        (result,) = train_model(cfg)
    assert result.status == "busy" and time.perf_counter() - start < 30  # skipped at once, not trained
    lock = preds / ".tiny_squish32_32.lock"
    assert f"run tiny_squish32_32: another job is training it ({lock} is held): skipped here" in caplog.text
    assert not list(preds.glob("*.pt"))
