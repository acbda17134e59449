"""On real tiny kfold runs over a demo with 20 flipped labels (conftest.flipped_kfold_runs): the label review
finds them, stack fits on the out-of-fold predictions and is scored beside the weighted means, the blend's
probabilities carry out-of-fold and per-fold tables, and the report shows it all; on the holdout demo runs
(12 validation images for 10 classes) stack is refused in one line."""

import json

import pandas as pd
import pytest

from pipeline import blend_file
from pipeline.ensemble.compute import compute_blend
from pipeline.ensemble.report import terminal_table
from pipeline.ensemble.writing import blend
from pipeline.errors import PipelineError
from pipeline.kaggle.uploads import runs_text
from tests.conftest import compose

pytestmark = pytest.mark.slow
TOP = 40


def blend_cfg(root, preds, output, *extra):
    return compose(
        "blend", ["data=demo", f"data.root={root}", f"paths.preds={preds}", f"blend.output={output}", *extra]
    )


def blended(runs, folder, *extra):
    output = folder / "sub.csv"
    return blend(blend_cfg(runs.root, runs.preds, output, f"blend.review.top={TOP}", *extra)), output


@pytest.fixture(scope="module")
def stacked(flipped_kfold_runs, tmp_path_factory):
    """The flipped runs blended with stack: the result and the CSV's path."""
    return blended(flipped_kfold_runs, tmp_path_factory.mktemp("stacked"), "blend.weighting=stack")


def test_the_label_review_finds_the_flipped_labels(flipped_kfold_runs, tmp_path):
    # the default weighting: the one member's out-of-fold probabilities as they are
    result, output = blended(flipped_kfold_runs, tmp_path)
    assert result.out_of_fold and result.notes == []  # stack fitted for the comparison: nothing left out
    suspects = pd.read_csv(output.with_name("sub.suspects.csv"))
    assert list(suspects.columns) == ["image", "label", "guess", "guess_probability", "label_probability", "rank"]
    assert len(suspects) == TOP and suspects["rank"].tolist() == list(range(1, TOP + 1))
    assert suspects.label_probability.is_monotonic_increasing  # least likely label first
    assert (suspects.guess_probability >= suspects.label_probability).all()
    assert suspects.image.map(lambda i: i.split("/")[0]).tolist() == suspects.label.tolist()  # ids: <label>/<file>
    found = set(suspects.image) & set(flipped_kfold_runs.flipped)
    assert len(found) >= 10, f"{len(found)} of the 20 flipped labels among the {len(suspects)} suspects"


def test_stack_on_real_kfold_runs_is_scored_beside_the_weighted_means(stacked):
    result, output = stacked
    rows = {r["weighting"]: r for r in result.weighting_rows}
    assert list(rows) == ["config", "equal", "greedy", "optimize", "best", "stack *"]
    stack = rows["stack *"]
    assert 0 < stack["nested acc"] <= 1 and stack["nested log loss"] > 0 and stack["test acc"] is not None
    assert stack["runs used"] == 1 and stack["fit"].startswith("logistic regression, C=")
    assert result.chosen.weights is None and result.run_rows[0]["w stack"] is None
    table = terminal_table(result)
    assert "stack *" in table and "logistic regression" in table and "n/a" in table
    record = json.loads(output.with_suffix(".csv.json").read_text())
    assert record["weighting"] == "stack" and {r["weight"] for r in record["runs"]} == {None}
    assert runs_text(record) == ", ".join(f"tiny_squish64_64_fold{k} (stacked)" for k in range(3))  # the ledger's


def test_the_kfold_blend_hands_on_out_of_fold_and_per_fold_probabilities(flipped_kfold_runs, stacked):
    result, output = stacked
    loaded = blend_file.load(output, "loss.teacher")
    train = flipped_kfold_runs.root / "train_images"
    assert sorted(loaded.oof_ids) == sorted(str(p.relative_to(train)) for p in train.glob("*/*"))
    assert loaded.fold_test_probs.shape == (3, 20, 4) and loaded.test_probs.shape == (20, 4)
    assert loaded.split == {"strategy": "kfold", "seed": 0, "n_folds": 3, "n_images": 160}
    assert [r["run_hash"] for r in loaded.members[0]["runs"]] == [r.run_hash for r in result.members[0].runs]
    assert loaded.members[0]["weight"] is None and loaded.weighting == "stack"


def test_the_report_shows_stack_the_label_review_and_speed(stacked):
    result, output = stacked
    report = output.with_suffix(".report.html").read_text()
    assert "stack *" in report and "logistic regression, C=" in report
    assert "Label review" in report and "sub.suspects.csv" in report
    assert report.count('class="thumb"') == TOP and "data:image/jpeg;base64," in report
    assert "img/s" in report and "images/s through every run it uses" in report
    assert result.run_rows[0]["img/s"] > 0


def test_stack_on_the_holdout_demo_runs_is_refused_in_one_line(demo_root, demo_runs, tmp_path):
    with pytest.raises(PipelineError) as e:
        compute_blend(blend_cfg(demo_root, demo_runs.preds, tmp_path / "sub.csv", "blend.weighting=stack"))
    message = str(e.value)
    assert "\n" not in message and message.startswith("blend.weighting=stack cannot be fitted: ")
    assert "fewer than blend.stack.folds=5 of the 12 images" in message
