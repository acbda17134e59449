"""Train/validation splits, the runs they expand to, and out-of-fold assembly of a variant's folds."""

from collections import Counter

import numpy as np
import pytest
import torch

from pipeline.data.splits import make_split
from pipeline.ensemble.members import assemble_members
from pipeline.errors import PipelineError
from pipeline.training.specs import resolve_runs
from tests.conftest import compose
from tests.factories import make_preds

# 100 images: 40 a, 30 b, 20 c, 10 d
LABELS = ["a"] * 40 + ["b"] * 30 + ["c"] * 20 + ["d"] * 10
IDS = [f"{label}/{i}.jpg" for i, label in enumerate(LABELS)]


def test_holdout_is_stratified_and_the_same_for_every_run():
    first = make_split(LABELS, "holdout", valid_pct=0.2, seed=7)
    again = make_split(LABELS, "holdout", valid_pct=0.2, seed=7)
    assert np.array_equal(first.valid_idx, again.valid_idx)
    assert Counter(LABELS[i] for i in first.valid_idx) == {"a": 8, "b": 6, "c": 4, "d": 2}
    assert first.record() == {"strategy": "holdout", "seed": 7, "fold": None, "n_folds": None, "n_images": 100}
    other = make_split(LABELS, "holdout", valid_pct=0.2, seed=8)
    assert not np.array_equal(first.valid_idx, other.valid_idx)


def test_kfold_folds_are_stratified_disjoint_and_cover_every_image_once():
    folds = [make_split(LABELS, "kfold", valid_pct=0.2, seed=0, fold=k, n_folds=5).valid_idx for k in range(5)]
    assert sorted(np.concatenate(folds).tolist()) == list(range(100))
    assert all(Counter(LABELS[i] for i in f) == {"a": 8, "b": 6, "c": 4, "d": 2} for f in folds)


def test_random_without_seed_draws_a_split_per_run_and_records_its_seed():
    a, b = (make_split(LABELS, "random", valid_pct=0.2, seed=None) for _ in range(2))
    assert len(a.valid_idx) == 20 and a.seed != b.seed
    again = make_split(LABELS, "random", valid_pct=0.2, seed=a.seed)
    assert np.array_equal(a.valid_idx, again.valid_idx)  # the recorded seed reproduces it


def test_holdout_too_small_to_stratify_is_still_one_seeded_split(caplog):
    a, b = (make_split(LABELS, "holdout", valid_pct=0.03, seed=0) for _ in range(2))
    assert len(a.valid_idx) == 3 and np.array_equal(a.valid_idx, b.valid_idx)
    assert "holdout split not stratified" in caplog.text


@pytest.mark.parametrize(
    ("strategy", "kwargs", "message"),
    [
        ("holdout", {"seed": None}, "data.split=holdout shares one split between runs: set data.seed"),
        ("kfold", {"seed": 0, "fold": 0, "n_folds": 50}, "data.split=kfold is impossible on these 100 images"),
        ("random", {"seed": 0, "valid_pct": 1.5}, "data.valid_pct must be between 0 and 1"),
    ],
)
def test_impossible_splits_are_one_clear_error(strategy, kwargs, message):
    with pytest.raises(PipelineError, match=message):
        make_split(LABELS, strategy, **{"valid_pct": 0.2, **kwargs})


def test_kfold_expands_every_variant_once_per_fold():
    runs = resolve_runs(compose("config", ["+model=vit_large", "data.split=kfold", "data.folds=3"]))
    assert [r.name for r in runs] == [
        *(f"vit_large_squish480_224_fold{k}" for k in range(3)),
        *(f"vit_large_crop640x480_224_fold{k}" for k in range(3)),
    ]
    assert [(r.fold, r.n_folds) for r in runs[:3]] == [(0, 3), (1, 3), (2, 3)]
    assert {r.member for r in runs} == {"vit_large_squish480_224", "vit_large_crop640x480_224"}


def test_unknown_split_strategy_fails_at_composition():
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException):
        compose("config", ["+model=vit_large", "data.split=stratified"])


def fold_preds(n_folds=3, seed=0, name="v", **kw):
    """A variant's fold runs as training would write them, on a real kfold split of LABELS."""
    vocab = sorted(set(LABELS))
    out = []
    for k in range(n_folds):
        split = make_split(LABELS, "kfold", valid_pct=0.2, seed=seed, fold=k, n_folds=n_folds)
        targets = torch.tensor([vocab.index(LABELS[i]) for i in split.valid_idx])
        out.append(
            make_preds(
                f"{name}_fold{k}",
                member=name,
                vocab=vocab,
                seed=k,
                valid_ids=[IDS[i] for i in split.valid_idx],
                valid_probs=torch.nn.functional.one_hot(targets, 4).float(),
                valid_targets=targets,
                split=split.record(),
                **kw,
            )
        )
    return out


def test_out_of_fold_assembly_covers_every_training_image_exactly_once():
    folds = fold_preds()
    test_ids = folds[0].test_ids
    (member,) = assemble_members(folds[::-1], test_ids)  # in any order
    assert member.name == "v" and [r.run for r in member.runs] == ["v_fold0", "v_fold1", "v_fold2"]
    assert sorted(member.valid_ids) == sorted(IDS) and len(member.valid_ids) == len(IDS)
    # each image's out-of-fold prediction and label travel together
    assert [IDS.index(i) for i in member.valid_ids] == np.concatenate(
        [make_split(LABELS, "kfold", valid_pct=0.2, seed=0, fold=k, n_folds=3).valid_idx for k in range(3)]
    ).tolist()
    assert (member.valid_probs.argmax(1) == member.valid_targets).all()
    np.testing.assert_allclose(member.test_probs, np.mean([f.test_probs.numpy() for f in folds], axis=0))


def test_a_variant_with_missing_folds_is_refused_naming_them():
    folds = fold_preds(n_folds=4)
    with pytest.raises(PipelineError, match=r"v: of its 4 folds, \[1, 3\] missing and none repeated"):
        assemble_members([folds[0], folds[2]], folds[0].test_ids)


def test_folds_of_different_splits_are_refused():
    mixed = [*fold_preds(seed=0)[:2], fold_preds(seed=1)[2]]
    with pytest.raises(PipelineError, match="v: its fold files come from different kfold splits"):
        assemble_members(mixed, mixed[0].test_ids)
