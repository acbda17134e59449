import json

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline import predictions
from pipeline.ensemble.compute import select_files
from pipeline.ensemble.members import aligned
from pipeline.ensemble.writing import blend
from pipeline.errors import PipelineError
from tests.conftest import compose
from tests.factories import make_preds

IDS = ["a.jpg", "b.jpg", "c.jpg"]


@pytest.fixture
def comp_root(tmp_path):
    """A competition folder with just what blending reads: a sample submission in non-sorted order."""
    root = tmp_path / "comp"
    root.mkdir()
    pd.DataFrame({"image_id": ["c.jpg", "a.jpg", "b.jpg"], "label": ""}).to_csv(
        root / "sample_submission.csv", index=False
    )
    return root


def blend_cfg(tmp_path, comp_root, *extra):
    return compose(
        "blend",
        [f"data.root={comp_root}", f"paths.preds={tmp_path / 'preds'}", f"blend.output={tmp_path / 'sub.csv'}", *extra],
    )


def save(tmp_path, preds):
    return predictions.save(preds, tmp_path / "preds" / f"{preds.run}.pt")


def test_alignment_is_by_id_not_position():
    probs = np.array([[0.1, 0.9], [0.8, 0.2], [0.6, 0.4]])
    out = aligned(probs[::-1], IDS[::-1], IDS)
    assert np.array_equal(out, probs)


def test_blend_writes_sample_order_with_weights(tmp_path, comp_root):
    # run x says cat everywhere, run y says dog everywhere but is given rows in another order;
    # with weights 1 and 3 the blend must follow y, except where x is certain and y is not.
    x = make_preds("x", test_probs=torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.99, 0.01]]), weight=1.0)
    y = make_preds("y", test_ids=IDS[::-1], test_probs=torch.tensor([[0.45, 0.55], [0.3, 0.7], [0.3, 0.7]]))
    save(tmp_path, x), save(tmp_path, y)
    result = blend(blend_cfg(tmp_path, comp_root, "+blend.weights.y=3"))
    sub = pd.read_csv(tmp_path / "sub.csv")
    assert list(sub.columns) == ["image_id", "label"]
    assert list(sub.image_id) == ["c.jpg", "a.jpg", "b.jpg"]
    # c: 0.25*0.99 + 0.75*0.45 = 0.585 cat; a: 0.25*0.9 + 0.75*0.3 = 0.45 cat -> dog; b likewise dog
    assert list(sub.label) == ["cat", "dog", "dog"]
    assert result.chosen.weights.tolist() == [0.25, 0.75]
    record = json.loads((tmp_path / "sub.csv.json").read_text())
    assert [(r["run"], r["weight"]) for r in record["runs"]] == [("x", 0.25), ("y", 0.75)]
    assert record["weighting"] == "config" and record["mean"] == "arithmetic"


def test_run_weight_comes_from_training_config_by_default(tmp_path, comp_root):
    save(tmp_path, make_preds("vit", weight=2.0)), save(tmp_path, make_preds("convnext", seed=1))
    result = blend(blend_cfg(tmp_path, comp_root))
    weights = dict(zip([m.name for m in result.members], result.chosen.weights.tolist(), strict=True))
    assert weights == pytest.approx({"vit": 2 / 3, "convnext": 1 / 3})


def test_runs_selected_by_glob(tmp_path, comp_root):
    for name in ("vit_a", "vit_b", "swin_a"):
        save(tmp_path, make_preds(name))
    cfg = blend_cfg(tmp_path, comp_root, "blend.runs=[vit_*]")
    assert [p.stem for p in select_files(cfg.paths.preds, list(cfg.blend.runs))] == ["vit_a", "vit_b"]
    with pytest.raises(PipelineError, match="'conv\\*' matches no prediction file"):
        blend(blend_cfg(tmp_path, comp_root, "blend.runs=[conv*]"))


def test_no_prediction_files(tmp_path, comp_root):
    with pytest.raises(PipelineError, match="no prediction files in .*: train first"):
        blend(blend_cfg(tmp_path, comp_root))


def test_a_missing_data_folder_is_said_before_the_prediction_files(tmp_path):
    absent = tmp_path / "absent"
    with pytest.raises(PipelineError) as e:
        blend(blend_cfg(tmp_path, absent))  # no prediction files either: the data folder is named first
    assert str(e.value) == (
        f"data folder {absent} does not exist: set data.root to the competition folder "
        "(blend reads its sample_submission.csv)"
    )


def test_runs_disagreeing_on_vocab_are_refused_by_name(tmp_path, comp_root):
    save(tmp_path, make_preds("a"))
    save(tmp_path, make_preds("b", vocab=("dog", "cat")))
    with pytest.raises(PipelineError, match=r"b\.pt: its vocab \['dog', 'cat'\] differs"):
        blend(blend_cfg(tmp_path, comp_root))


def test_stale_runs_are_all_named_with_how_to_retrain_them(tmp_path, comp_root):
    # a and c predict the sample's test images (in any order); b and d were trained before they changed
    save(tmp_path, make_preds("a"))
    save(tmp_path, make_preds("b", test_ids=["a.jpg", "b.jpg", "z.jpg"]))
    save(tmp_path, make_preds("c", test_ids=IDS[::-1]))
    save(tmp_path, make_preds("d", test_ids=IDS[:2], config={"model": {"name": "vit_large"}}))
    with pytest.raises(PipelineError) as err:
        blend(blend_cfg(tmp_path, comp_root))
    preds, sample = tmp_path / "preds", comp_root / "sample_submission.csv"
    assert str(err.value) == (
        f"2 prediction file(s) predict other test images than the rows of {sample}, so were trained on other data: "
        f"{preds / 'b.pt'}, {preds / 'd.pt'}; retrain them on this data with their other options unchanged "
        f"(python -m pipeline.train -m +model=m,vit_large data.root={comp_root}) or leave them out with blend.runs"
    )
    assert not (tmp_path / "sub.csv").exists()
    blend(blend_cfg(tmp_path, comp_root, "blend.runs=[a,c]"))  # the up-to-date ones blend
    assert (tmp_path / "sub.csv").exists()


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ("nope=2", r"names runs that are not blended: \['nope'\]"),
        ("a=-1", r"blend.weights.a must be >= 0, got -1.0"),
        ("a=0", "with a positive sum"),
    ],
)
def test_bad_weights(tmp_path, comp_root, weights, message):
    save(tmp_path, make_preds("a"))
    with pytest.raises(PipelineError, match=message):
        blend(blend_cfg(tmp_path, comp_root, f"+blend.weights.{weights}"))


def _valid_acc(result, weighting="config"):
    (row,) = [r for r in result.weighting_rows if r["weighting"].split()[0] == weighting]
    return row["valid acc"]


def test_blend_valid_accuracy_needs_a_shared_validation_set(tmp_path, comp_root):
    save(tmp_path, make_preds("a"))
    save(
        tmp_path,
        make_preds(
            "b",
            valid_ids=["dog/v2.jpg", "cat/v1.jpg"],
            valid_probs=torch.tensor([[0.2, 0.8], [0.6, 0.4]]),
            valid_targets=torch.tensor([1, 0]),
        ),
    )
    assert _valid_acc(blend(blend_cfg(tmp_path, comp_root))) == 1.0
    save(tmp_path, make_preds("c", valid_ids=["cat/v9.jpg", "dog/v2.jpg"]))
    result = blend(blend_cfg(tmp_path, comp_root))
    assert result.valid is None and _valid_acc(result) is None
    assert set(result.weighted) == {"config", "equal"}  # nothing to search on


@pytest.mark.parametrize("weighting", ["greedy", "optimize"])
def test_search_over_mismatched_validation_ids_is_refused(tmp_path, comp_root, weighting):
    save(tmp_path, make_preds("a"))
    save(tmp_path, make_preds("c", valid_ids=["cat/v9.jpg", "dog/v2.jpg"]))
    with pytest.raises(
        PipelineError,
        match=rf"blend.weighting={weighting} .* c \(holdout\) and a \(holdout\) were validated on different "
        r"images \(2 and 2, 1 in common\)",
    ):
        blend(blend_cfg(tmp_path, comp_root, f"blend.weighting={weighting}"))
    assert not (tmp_path / "sub.csv").exists()


def test_test_accuracy_against_true_labels(tmp_path, comp_root):
    pd.DataFrame({"image_id": IDS, "label": ["dog", "dog", "cat"]}).to_csv(comp_root / "truth.csv", index=False)
    save(tmp_path, make_preds("a", test_probs=torch.tensor([[0.1, 0.9], [0.9, 0.1], [0.9, 0.1]])))
    result = blend(blend_cfg(tmp_path, comp_root, f"data.test_labels={comp_root / 'truth.csv'}"))
    assert result.chosen.test_acc == pytest.approx(2 / 3)


def _outputs(tmp_path):
    names = ["sub.csv", "sub.report.html", "sub.csv.json", "sub.confusion.png", "sub.probs.pt"]
    return {n: (tmp_path / n).read_bytes() for n in names if (tmp_path / n).exists()}


def test_blend_outputs_are_replaced_as_one_set_or_not_at_all(tmp_path, comp_root, monkeypatch):
    from pipeline.ensemble import writing

    save(tmp_path, make_preds("x")), save(tmp_path, make_preds("y", seed=1))
    blend(blend_cfg(tmp_path, comp_root))
    before = _outputs(tmp_path)
    assert set(before) == {"sub.csv", "sub.report.html", "sub.csv.json", "sub.confusion.png", "sub.probs.pt"}

    # a second blend with other weights that fails while rendering its report: nothing is replaced
    def broken_report(result):
        raise RuntimeError("the report failed")

    monkeypatch.setattr(writing, "report_html", broken_report)
    with pytest.raises(RuntimeError, match="the report failed"):
        blend(blend_cfg(tmp_path, comp_root, "+blend.weights.y=5"))
    assert _outputs(tmp_path) == before
    assert not list(tmp_path.glob(".sub*.tmp")) and not list(tmp_path.glob(".sub*.link"))  # no temporary file
    assert len([p for p in (tmp_path / ".sub.csv.sets").iterdir() if not p.is_symlink()]) == 1  # no partial set
    monkeypatch.undo()

    # and when it succeeds, every file of the set is the new blend's
    blend(blend_cfg(tmp_path, comp_root, "+blend.weights.y=5"))
    after = _outputs(tmp_path)
    assert all(after[name] != before[name] for name in ("sub.report.html", "sub.csv.json", "sub.probs.pt"))
    assert json.loads(after["sub.csv.json"])["runs"][1]["weight"] == pytest.approx(5 / 6)


def test_atomic_paths_replace_nothing_when_the_block_fails(tmp_path):
    from pipeline.fileio import atomic_paths

    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("old a")
    with pytest.raises(ValueError), atomic_paths(a, b) as (ta, tb):
        ta.write_text("new a")
        raise ValueError("before b was written")
    assert a.read_text() == "old a" and not b.exists() and sorted(tmp_path.iterdir()) == [a]
    with atomic_paths(a, b) as (ta, tb):
        ta.write_text("new a"), tb.write_text("new b")
    assert (a.read_text(), b.read_text()) == ("new a", "new b")
