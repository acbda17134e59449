"""End to end on the demo data: three tiny runs on a shared holdout (the session's demo_runs), one variant
in two folds, blended with every weighting; the report and the refusal to search over mismatched validation sets."""

import json
import shutil
import sys

import pandas as pd
import pytest

from pipeline import predictions
from pipeline.ensemble.writing import blend
from pipeline.training.jobs import train_model
from tests import warm_python
from tests.conftest import REPO, compose, tiny_run_overrides

pytestmark = pytest.mark.slow


def train(demo_root, weights_dir, preds, *extra):
    cfg = compose("config", [*tiny_run_overrides(demo_root, weights_dir, preds), *extra])
    return train_model(cfg)


@pytest.fixture
def holdout_preds(demo_runs):
    """The session's three holdout runs (conftest.demo_runs: three variants, trained once)."""
    return demo_runs.preds


@pytest.fixture(scope="module")
def kfold_preds(demo_root, weights_dir, tmp_path_factory):
    preds = tmp_path_factory.mktemp("kfold") / "preds"
    train(demo_root, weights_dir, preds, "model.name=tinyk", "data.split=kfold", "data.folds=2")
    return preds


def blend_cfg(demo_root, preds, output, *extra):
    return compose(
        "blend", ["data=demo", f"data.root={demo_root}", f"paths.preds={preds}", f"blend.output={output}", *extra]
    )


def test_three_holdout_runs_blended_with_every_weighting(demo_root, holdout_preds, tmp_path):
    runs = [predictions.load(p) for p in sorted(holdout_preds.glob("*.pt"))]
    assert len(runs) == 3 and len({tuple(r.valid_ids) for r in runs}) == 1  # one shared validation set
    assert all(
        r.split == {"strategy": "holdout", "seed": 42, "fold": None, "n_folds": None, "n_images": 60} for r in runs
    )
    assert all(r.valid_probs_plain.shape == r.valid_probs.shape for r in runs)

    output = tmp_path / "sub.csv"
    result = blend(blend_cfg(demo_root, holdout_preds, output, "blend.weighting=greedy"))
    assert list(pd.read_csv(output).image_id) == list(pd.read_csv(demo_root / "sample_submission.csv").image_id)
    rows = {r["weighting"]: r for r in result.weighting_rows}
    assert list(rows) == ["config", "equal", "greedy *", "optimize", "best"]
    for row in rows.values():
        assert all(0 <= row[k] <= 1 for k in ("valid acc", "nested acc", "test acc"))
        assert row["valid log loss"] > 0 and row["nested log loss"] > 0
    assert rows["equal"]["nested acc"] == rows["equal"]["valid acc"]  # nothing fitted, nothing to flatter
    assert rows["best"]["runs used"] == 1
    assert result.chosen.weights.sum() == pytest.approx(1.0)
    for row in result.run_rows:
        assert row["acc no TTA"] is not None and row["blend acc without it"] is not None

    report = output.with_suffix(".report.html").read_text()
    assert "Weightings" in report and "nested acc" in report and "precision" in report
    assert "data:image/png;base64," in report and output.with_suffix(".confusion.png").stat().st_size > 1000
    record = json.loads((tmp_path / "sub.csv.json").read_text())
    assert record["weighting"] == "greedy" and len(record["runs"]) == 3 and len(record["weightings"]) == 5


def test_kfold_variant_becomes_one_out_of_fold_member(demo_root, kfold_preds, tmp_path):
    files = sorted(p.name for p in kfold_preds.glob("*.pt"))
    assert files == ["tinyk_squish32_32_fold0.pt", "tinyk_squish32_32_fold1.pt"]
    folds = [predictions.load(kfold_preds / f) for f in files]
    assert [(f.split["fold"], f.split["n_folds"], f.member) for f in folds] == [
        (0, 2, "tinyk_squish32_32"),
        (1, 2, "tinyk_squish32_32"),
    ]
    assert not set(folds[0].valid_ids) & set(folds[1].valid_ids)

    result = blend(blend_cfg(demo_root, kfold_preds, tmp_path / "sub.csv", "blend.weighting=optimize"))
    (member,) = result.members
    train_ids = {str(p.relative_to(demo_root / "train_images")) for p in (demo_root / "train_images").glob("*/*")}
    assert sorted(member.valid_ids) == sorted(train_ids)  # out-of-fold: every training image once
    assert result.weighted["optimize"].weights.tolist() == [1.0]
    assert result.chosen.test_acc is not None


def _cli(*args):
    return warm_python.run(
        [sys.executable, "-m", "pipeline.blend", *args], cwd=REPO, capture_output=True, text=True, timeout=600
    )


def test_cli_prints_the_table_and_refuses_to_search_over_holdout_and_kfold_together(
    demo_root, holdout_preds, kfold_preds, tmp_path
):
    common = ["data=demo", f"data.root={demo_root}", f"paths.outputs={tmp_path / 'out'}"]
    ok = _cli(*common, f"paths.preds={holdout_preds}", "blend.weighting=optimize", "blend.mean=geometric")
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert "nested acc" in ok.stdout and "optimize *" in ok.stdout and "geometric mean of 3 runs" in ok.stdout

    mixed = tmp_path / "mixed"
    shutil.copytree(holdout_preds, mixed)
    for f in kfold_preds.glob("*.pt"):
        shutil.copy(f, mixed)
    refused = _cli(*common, f"paths.preds={mixed}", "blend.weighting=greedy")
    assert refused.returncode == 2
    (line,) = refused.stderr.strip().splitlines()
    assert "blend.weighting=greedy" in line and "were validated on different images" in line
    assert "tinyk_squish32_32 (kfold)" in line
