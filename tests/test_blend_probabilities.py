"""The blend's outputs beyond the CSV, on hand-made prediction files with known contents: its probabilities
file (pipeline/blend_file.py), stack refused or left out on too few images, members' inference speed, and
the teacher marks and warnings."""

import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline import blend_file, predictions
from pipeline.ensemble.members import assemble_members
from pipeline.ensemble.report import terminal_table
from pipeline.ensemble.teachers import teacher_mark, teacher_warnings
from pipeline.ensemble.writing import blend
from pipeline.errors import PipelineError
from tests.conftest import compose
from tests.factories import make_preds

TEST_IDS = ["c.jpg", "a.jpg", "b.jpg"]  # the sample submission's order
TRAIN = ["cat/t1.jpg", "dog/t2.jpg", "cat/t3.jpg", "dog/t4.jpg"]


@pytest.fixture
def comp_root(tmp_path):
    root = tmp_path / "comp"
    root.mkdir()
    pd.DataFrame({"image_id": TEST_IDS, "label": ""}).to_csv(root / "sample_submission.csv", index=False)
    return root


def run_blend(tmp_path, comp_root, *extra):
    cfg = compose(
        "blend",
        [f"data.root={comp_root}", f"paths.preds={tmp_path / 'preds'}", f"blend.output={tmp_path / 'sub.csv'}", *extra],
    )
    return blend(cfg)


def save(tmp_path, preds):
    return predictions.save(preds, tmp_path / "preds" / f"{preds.run}.pt")


def kfold_run(name, fold, seed, **kw):
    """Fold `fold` of 2 over TRAIN: validated on two of the four training images."""
    valid_ids = TRAIN[2 * fold : 2 * fold + 2]
    return make_preds(
        f"{name}_fold{fold}",
        member=name,
        seed=seed,
        valid_ids=valid_ids,
        valid_probs=torch.tensor([[0.8, 0.2], [0.3, 0.7]]),
        valid_targets=torch.tensor([0, 1]),
        split={"strategy": "kfold", "seed": 7, "fold": fold, "n_folds": 2, "n_images": 4},
        run_hash=f"{name}{fold}",
        **kw,
    )


def test_holdout_blend_writes_its_probabilities_beside_the_csv_without_out_of_fold(tmp_path, comp_root):
    save(tmp_path, make_preds("x", run_hash="hx")), save(tmp_path, make_preds("y", seed=1, run_hash="hy"))
    result = run_blend(tmp_path, comp_root, "+blend.weights.y=3")
    path = tmp_path / "sub.probs.pt"
    assert blend_file.probs_path(tmp_path / "sub.csv") == path and path.is_file()
    loaded = blend_file.load(tmp_path / "sub.csv", "data.pseudo")
    assert loaded.test_ids == TEST_IDS and loaded.weighting == "config" and loaded.vocab == ["cat", "dog"]
    np.testing.assert_allclose(loaded.test_probs.numpy(), result.chosen.test_probs, atol=1e-6)
    x, y = (predictions.load(tmp_path / "preds" / f"{r}.pt") for r in "xy")
    by_id = {i: 0.25 * x.test_probs[x.test_ids.index(i)] + 0.75 * y.test_probs[y.test_ids.index(i)] for i in TEST_IDS}
    np.testing.assert_allclose(loaded.test_probs.numpy(), torch.stack([by_id[i] for i in TEST_IDS]), atol=1e-6)
    assert not loaded.has_oof and loaded.fold_test_probs.numel() == 0 and loaded.split == {}
    assert [(m["member"], m["weight"], [r["run_hash"] for r in m["runs"]]) for m in loaded.members] == [
        ("x", 0.25, ["hx"]),
        ("y", 0.75, ["hy"]),
    ]
    assert result.suspects is None and not (tmp_path / "sub.suspects.csv").exists()  # no out-of-fold members
    # the same blend again: the same bytes, so the runs that learned from it are not retrained
    before = blend_file.content_hash(path)
    run_blend(tmp_path, comp_root, "+blend.weights.y=3")
    assert blend_file.content_hash(path) == before
    run_blend(tmp_path, comp_root, "+blend.weights.y=4")
    assert blend_file.content_hash(path) != before


def test_kfold_blend_writes_out_of_fold_and_per_fold_probabilities(tmp_path, comp_root):
    for fold in (0, 1):
        save(tmp_path, kfold_run("x", fold, seed=fold))
        save(tmp_path, kfold_run("y", fold, seed=2 + fold))
    result = run_blend(tmp_path, comp_root, "+blend.weights.y=3")
    loaded = blend_file.load(tmp_path / "sub.probs.pt", "loss.teacher")
    assert sorted(loaded.oof_ids) == sorted(TRAIN) and loaded.oof_targets.tolist() == [0, 1, 0, 1]
    np.testing.assert_allclose(loaded.oof_probs.numpy(), np.tile([[0.8, 0.2], [0.3, 0.7]], (2, 1)), atol=1e-6)
    assert loaded.split == {"strategy": "kfold", "seed": 7, "n_folds": 2, "n_images": 4}
    assert loaded.fold_test_probs.shape == (2, 3, 2)
    for k in (0, 1):  # fold k: the members' fold-k runs only, weighted as the CSV's blend
        x, y = (predictions.load(tmp_path / "preds" / f"{m}_fold{k}.pt") for m in "xy")
        expected = [
            0.25 * x.test_probs[x.test_ids.index(i)] + 0.75 * y.test_probs[y.test_ids.index(i)] for i in TEST_IDS
        ]
        np.testing.assert_allclose(loaded.fold_test_probs[k].numpy(), torch.stack(expected), atol=1e-6)
    np.testing.assert_allclose(loaded.fold_test_probs.numpy().mean(0), result.chosen.test_probs, atol=1e-6)
    assert [[r["fold"] for r in m["runs"]] for m in loaded.members] == [[0, 1], [0, 1]]
    assert list(pd.read_csv(tmp_path / "sub.suspects.csv").columns) == [
        "image",
        "label",
        "guess",
        "guess_probability",
        "label_probability",
        "rank",
    ]


def test_a_damaged_or_unnormalised_probabilities_file_is_refused(tmp_path, comp_root):
    save(tmp_path, make_preds("x"))
    run_blend(tmp_path, comp_root)
    copy = shutil.copy(tmp_path / "sub.probs.pt", tmp_path / "copy.probs.pt")
    record = torch.load(copy, weights_only=True)
    torch.save(record | {"test_probs": record["test_probs"] * 0.5}, copy)
    with pytest.raises(PipelineError, match=r"test_probs rows do not sum to 1 .*: blend again"):
        blend_file.load(copy, "data.pseudo")
    copy.write_bytes((tmp_path / "sub.probs.pt").read_bytes()[:200])
    with pytest.raises(PipelineError, match="is truncated or unreadable: blend again"):
        blend_file.load(copy, "data.pseudo")
    with pytest.raises(PipelineError) as e:  # a numpy array pickled in: never unpickled
        torch.save(record | {"test_probs": np.ones((3, 2))}, copy)
        blend_file.load(copy, "data.pseudo")
    assert "holds objects other than tensors and plain data" in str(e.value)


def test_stack_chosen_on_too_few_images_is_refused_in_one_line_and_otherwise_left_out(tmp_path, comp_root):
    save(tmp_path, make_preds("x")), save(tmp_path, make_preds("y", seed=1))
    with pytest.raises(PipelineError) as e:
        run_blend(tmp_path, comp_root, "blend.weighting=stack")
    assert str(e.value) == (
        "blend.weighting=stack cannot be fitted: 2 of 2 classes have fewer than blend.stack.folds=5 of the 2 "
        "images it is fitted on (the rarest: 1) (the nested estimate fits it on each half of the validation "
        "images): blend runs validated on more images per class (data.split=kfold: every training image, out "
        "of fold) or choose another blend.weighting"
    )
    assert not (tmp_path / "sub.csv").exists()
    result = run_blend(tmp_path, comp_root, "blend.weighting=greedy")  # stack merely compared: left out, said
    assert "stack" not in result.weighted and "greedy" in result.weighted
    (note,) = result.notes
    assert note.startswith("stack is left out of the comparison: it cannot be fitted: 2 of 2 classes")
    assert f"note: {note}" in terminal_table(result)
    assert f"Note: {note}" in (tmp_path / "sub.report.html").read_text()


def test_inference_speed_per_member_and_for_the_blend(tmp_path, comp_root):
    # a run predicted 3 test + 2 validation images in 2 s: 2.5 images/s; a 2-fold variant, each fold
    # 5 images in 1 s: 5 images/s per model, 2.5 through both
    save(tmp_path, make_preds("x", timings={"fit_s": 9.0, "tta_s": 2.0}))
    result = run_blend(tmp_path, comp_root)
    assert result.run_rows[0]["img/s"] == pytest.approx(2.5)
    folds = [kfold_run("k", f, seed=f, timings={"tta_s": 1.0}) for f in (0, 1)]
    (member,) = assemble_members(folds, TEST_IDS)
    from pipeline.ensemble.compute import blend_images_per_second, images_per_second

    assert images_per_second(member.runs) == pytest.approx(2.5)
    assert images_per_second([make_preds("old")]) is None  # a file without timings
    rows = [{"img/s": 2.5}, {"img/s": 2.5}, {"img/s": 1.0}]
    assert blend_images_per_second(rows, np.array([0.5, 0.5, 0.0])) == pytest.approx(1.25)
    assert blend_images_per_second(rows, None) == pytest.approx(1 / (1 / 2.5 + 1 / 2.5 + 1))
    assert "img/s" in terminal_table(result) and "2.5000" in terminal_table(result)


def test_a_member_taught_by_a_blend_of_this_blends_runs_is_marked_and_warned(tmp_path, comp_root):
    # the teacher blend: runs a and b; the student s learned from it; this blend: a, c and s
    a, b, c = (make_preds(n, seed=i, run_hash=f"h{n}") for i, n in enumerate("abc"))
    save(tmp_path, a), save(tmp_path, b)
    run_blend(tmp_path, comp_root)
    teacher = tmp_path / "sub.csv"
    record = {"kind": "distill", "blend": str(teacher), "hash": blend_file.content_hash(tmp_path / "sub.probs.pt")}
    s = make_preds("s", seed=5, run_hash="hs")
    s.teacher = record  # the training side's field (loss=distill, data.pseudo); read with getattr
    members = assemble_members([a, c, s], TEST_IDS)
    assert teacher_mark([s]) == f"distill from sub.csv #{record['hash'][:8]}" and teacher_mark([a]) == "-"
    (warning,) = teacher_warnings(members)
    assert warning == (
        f"s learned from blend {teacher}, which holds a of this blend: the nested estimate is optimistic (its "
        "validation predictions carry what those runs learned from the same labels)"
    )
    assert teacher_warnings(assemble_members([c, s], TEST_IDS)) == []  # its teachers are not here

    save(tmp_path, c)  # the teacher blend is rewritten (now a, b and c): what s learned from is gone
    run_blend(tmp_path, comp_root)
    (warning,) = teacher_warnings(members)
    assert warning.endswith(
        f"cannot be checked for runs of this blend: {tmp_path / 'sub.probs.pt'} has been "
        "rewritten since (another blend to the same CSV)"
    )
    s.teacher = [record | {"blend": str(tmp_path / "gone.csv")}]
    assert teacher_warnings(members)[0].endswith(f"{tmp_path / 'gone.probs.pt'} is gone")
