"""Real training on real images: tiny runs of tf_efficientnet_lite0 with its real ImageNet weights."""

import sys

import pandas as pd
import pytest
import torch

from pipeline import predictions
from pipeline.errors import PipelineError
from pipeline.training.jobs import train_model
from tests import warm_python
from tests.conftest import DEVICE, REPO, compose, tiny_run_overrides

pytestmark = pytest.mark.slow


def test_train_one_run_on_the_demo_data(demo_root, demo_runs):
    """The session's shared demo runs (conftest.demo_runs: trained once, read here): one run's file."""
    result = demo_runs.results[0]
    assert result.status == "trained" and result.path == demo_runs.preds / "tiny_squish32_32.pt"
    raw = torch.load(result.path, weights_only=True)
    preds = predictions.load(result.path)
    sample = pd.read_csv(demo_root / "sample_submission.csv")
    assert preds.test_ids == list(sample.image_id) and raw["test_ids"] == preds.test_ids
    assert preds.test_probs.shape == (20, 10) and preds.valid_probs.shape == (12, 10)
    torch.testing.assert_close(preds.test_probs.sum(1), torch.ones(20))  # softmax probabilities
    assert len(set(preds.valid_ids)) == 12 and all("/" in i for i in preds.valid_ids)
    assert preds.vocab == sorted(p.name for p in (demo_root / "train_images").iterdir())
    assert 0 <= preds.metrics["valid_error"] <= 1 and 0 <= preds.metrics["valid_error_tta"] <= 1
    assert preds.metrics["valid_error_tta"] == pytest.approx(1 - preds.valid_accuracy)
    # the plain pass is what the recorder scored; the TTA pass differs from it
    plain_error = float((preds.valid_probs_plain.argmax(1) != preds.valid_targets).float().mean())
    assert plain_error == pytest.approx(preds.metrics["valid_error"])
    assert not torch.equal(preds.valid_probs_plain, preds.valid_probs)
    assert preds.split == {"strategy": "holdout", "seed": 42, "fold": None, "n_folds": None, "n_images": 60}
    assert preds.member == preds.run == "tiny_squish32_32"
    assert preds.run_spec["accum"] == 2 and preds.run_spec["epochs"] == 1
    assert preds.config["data"]["root"] == str(demo_root) and preds.device == DEVICE
    assert preds.config["tta"]["n"] == 4  # the reference TTA: no tag in the run name
    assert preds.timings["fit_s"] > 0 and preds.timings["tta_s"] > 0
    # every validation target is the label folder of its image
    assert [preds.vocab[t] for t in preds.valid_targets] == [i.split("/")[0] for i in preds.valid_ids]
    assert "valid err TTA" in demo_runs.log and "tiny_squish32_32" in demo_runs.log


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["model.batch_size=512"],
            "data.valid_pct=0.2 holds out 12 of the 60 training images, leaving 48 to train on, fewer than one "
            "batch of 512: lower data.valid_pct or model.batch_size",
        ),
        (
            ["data.valid_pct=0.99"],
            "data.valid_pct=0.99 holds out 60 of the 60 training images, leaving 0 to train on, fewer than one "
            "batch of 16: lower data.valid_pct or model.batch_size",
        ),
        (
            ["data.split=kfold", "data.folds=2", "data.seed=0", "model.batch_size=128"],
            "data.folds=2 holds out 30 of the 60 training images, leaving 30 to train on, fewer than one "
            "batch of 128: lower data.folds or model.batch_size",
        ),
    ],
)
def test_too_few_images_for_one_batch_is_refused_before_any_run(demo_root, weights_dir, tmp_path, overrides, message):
    cfg = compose("config", [*tiny_run_overrides(demo_root, weights_dir, tmp_path), *overrides])
    with pytest.raises(PipelineError) as e:
        train_model(cfg)
    assert str(e.value) == message
    assert not (tmp_path / "cache").exists()  # refused before anything was cached (images, file hashes)


def _run(*args):
    return warm_python.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True, timeout=600)


def test_cli_trains_two_runs_on_real_paddy_photos_and_blends_them(paddy_root, weights_dir, tmp_path):
    preds_dir, output = tmp_path / "preds", tmp_path / "sub" / "submission.csv"
    # 3 photos a class are too few to stratify: each run its own random split, as the reference recipe
    common = [
        *tiny_run_overrides(paddy_root, weights_dir, preds_dir),
        f"paths.outputs={tmp_path / 'outputs'}",
        "data.split=random",
        "data.seed=null",
    ]
    two_variants = (
        "model.variants=[{resize: squish, item_size: [32], size: [32]}, {resize: pad, item_size: [40], size: [32]}]"
    )
    train = _run("pipeline.train", *common, two_variants)
    assert train.returncode == 0, train.stderr[-3000:]
    assert "tiny_squish32_32" in train.stdout and "tiny_pad40_32" in train.stdout and "valid err TTA" in train.stdout
    assert sorted(p.name for p in preds_dir.glob("*.pt")) == ["tiny_pad40_32.pt", "tiny_squish32_32.pt"]

    blend = _run(
        "pipeline.blend",
        f"data.root={paddy_root}",
        f"paths.preds={preds_dir}",
        f"blend.output={output}",
        f"paths.outputs={tmp_path / 'outputs'}",
        "+blend.weights.tiny_pad40_32=2",
    )
    assert blend.returncode == 0, blend.stderr[-3000:]
    sub, sample = pd.read_csv(output), pd.read_csv(paddy_root / "sample_submission.csv")
    assert list(sub.columns) == ["image_id", "label"]
    assert list(sub.image_id) == list(sample.image_id)
    assert set(sub.label) <= {p.name for p in (paddy_root / "train_images").iterdir()}
    assert "config *" in blend.stdout and f"written: {output}" in blend.stdout
    # each job's config and log are kept with its outputs
    assert list((tmp_path / "outputs" / "runs" / "train").glob("*/.hydra/config.yaml"))
