"""Learning beyond the labels (issue 19, the training side): a student distilled from a blend's out-of-fold
probabilities (loss=distill), pseudo-labelled test images (data.pseudo) and training images left out
(data.exclude). The loss against a hand computation, with MixUp's mixed targets; real tiny students and
pseudo-labelled runs trained from a real kfold teacher blend (tests/factories.blend_file_of builds the blend
file from the kfold_teacher_runs fixture's prediction files)."""

import logging
import math
import re

import pandas as pd
import pytest
import torch

from pipeline import blend_file, predictions
from pipeline.data.competition import scan_competition
from pipeline.data.exclude import excluding
from pipeline.data.soft_targets import select_pseudo
from pipeline.errors import PipelineError
from pipeline.fileio import write_atomic
from pipeline.training.losses import SoftTargetLoss
from pipeline.training.provenance import run_hash
from pipeline.training.recipe import recipe_columns
from pipeline.training.specs import resolve_runs
from pipeline.training.targets import MultiTargetLoss
from pipeline.training.teachers import load_teachers
from tests.conftest import DEVICE, compose, tiny_run_overrides
from tests.factories import blend_file_of


def _softmax(row):
    exps = [math.exp(x) for x in row]
    return [e / sum(exps) for e in exps]


def test_the_distillation_loss_is_hintons_mixed_with_the_labels_cross_entropy():
    # by hand: image 0 has a teacher, image 1 (a validation image) none: its loss is the label's cross-entropy
    out = [[2.0, 0.5, -1.0], [0.0, 1.0, 0.0]]
    teacher = [0.7, 0.2, 0.1]
    alpha, t = 0.3, 2.0
    ce0 = -math.log(_softmax(out[0])[0])
    kl0 = sum(p * math.log(p / q) for p, q in zip(teacher, _softmax([x / t for x in out[0]]), strict=True))
    by_hand = [(1 - alpha) * ce0 + alpha * t * t * kl0, -math.log(_softmax(out[1])[1])]
    assert by_hand == pytest.approx([0.200307, 0.551445], abs=1e-6)

    loss = SoftTargetLoss(alpha=alpha, temperature=t)
    args = torch.tensor(out), torch.tensor([0, 1]), torch.eye(3)[[0, 1]], torch.tensor([teacher, [0.0, 0.0, 0.0]])
    assert float(loss(*args)) == pytest.approx(sum(by_hand) / 2, abs=1e-6)
    loss.reduction = "none"
    assert loss(*args).tolist() == pytest.approx(by_hand, abs=1e-6)
    # label smoothing's eps on probability targets is fastai's LabelSmoothingCrossEntropy on the one-hot row
    from fastai.losses import LabelSmoothingCrossEntropyFlat

    smoothed = SoftTargetLoss(eps=0.1)(args[0], args[1], args[2], torch.zeros(2, 3))
    assert float(smoothed) == pytest.approx(float(LabelSmoothingCrossEntropyFlat(eps=0.1)(args[0], args[1])))


@pytest.mark.parametrize("kind", ["mixup", "cutmix"])
def test_mixup_and_cutmix_mix_the_teachers_probabilities_as_the_images(kind):
    """fastai's Learner with the multi-target MixUp/CutMix: the teacher rows mixed by each image's lambda, and
    the loss, by hand: (1 - alpha) * the labels' cross-entropies mixed + alpha * T^2 * KL(mixed teacher)."""
    from fastai.test_utils import synth_learner

    from pipeline.training.callbacks import CutMixTargets, MixUpTargets

    alpha, t, n = 0.3, 2.0, 6
    g = torch.Generator().manual_seed(0)
    learn = synth_learner()
    learn.loss_func = MultiTargetLoss([n], [1.0], lambda: None, SoftTargetLoss(alpha=alpha, temperature=t))
    cb = (MixUpTargets if kind == "mixup" else CutMixTargets)()
    learn.add_cb(cb)
    labels = torch.arange(n)  # one class an image: the other image mixed into image i is labels1[i]
    one_hot = torch.eye(n)
    teacher = torch.softmax(torch.randn(n, n, generator=g), 1)
    learn.xb, learn.yb = (torch.randn(n, 3, 4, 4, generator=g),), (labels, one_hot[labels], teacher)
    learn.training = True
    torch.manual_seed(0)
    cb.before_train()
    cb.before_batch()
    lam = cb.lam.expand(n) if kind == "cutmix" else cb.lam
    other = cb.yb1[0]
    mixed = lam[:, None] * teacher + (1 - lam[:, None]) * teacher[other]
    assert not torch.equal(other, labels)  # another image was mixed in
    torch.testing.assert_close(learn.yb[2], mixed)
    torch.testing.assert_close(learn.yb[1], lam[:, None] * one_hot[labels] + (1 - lam[:, None]) * one_hot[other])
    assert torch.equal(learn.yb[0], labels)  # the category stays: fastai mixes its loss

    out = torch.randn(n, n, generator=g)
    logp, logq = torch.log_softmax(out, 1), torch.log_softmax(out / t, 1)
    ce = -logp.gather(1, labels[:, None]).squeeze(1), -logp.gather(1, other[:, None]).squeeze(1)
    kl = (mixed * (mixed.log() - logq)).sum(1)
    by_hand = (1 - alpha) * (lam * ce[0] + (1 - lam) * ce[1]) + alpha * t * t * kl
    torch.testing.assert_close(learn.loss_func(out, *learn.yb), by_hand.mean())


def test_pseudo_labels_are_the_confident_rows_at_most_cap_a_class():
    probs = torch.tensor([[0.95, 0.05], [0.5, 0.5], [0.92, 0.08], [0.1, 0.9], [0.97, 0.03], [0.2, 0.8]])
    assert select_pseudo(probs, 0.9) == [0, 2, 3, 4]
    assert select_pseudo(probs, 0.9, cap_per_class=2) == [0, 3, 4]  # class 0's two most confident
    assert select_pseudo(probs, 0.8, cap_per_class=1) == [3, 4]
    assert select_pseudo(probs, 0.99) == []


@pytest.mark.parametrize(
    ("overrides", "tag", "column"),
    [
        (["loss=distill", "loss.teacher=b.csv"], "_kd", "distill teacher=b.csv"),
        (
            ["loss=distill", "loss.teacher=b.csv", "loss.alpha=0.5", "loss.temperature=2"],
            "_kd-alpha0.5-temperature2",
            None,
        ),
        (["data.pseudo=b.csv"], "_pl0.9", None),
        (["data.pseudo=b.csv", "data.pseudo_threshold=0.8", "data.pseudo_hard=true"], "_pl0.8-hard", None),
        (["data.pseudo=b.csv", "data.pseudo_cap_per_class=50", "train.mixup=mixup"], "_mixup_pl0.9-cap50", None),
    ],
)
def test_students_and_pseudo_labelled_runs_are_named_by_a_tag(overrides, tag, column):
    (run,) = resolve_runs(compose("config", ["+model=effnet_lite0", *overrides]))
    assert run.name == f"effnet_lite0_squish64_64{tag}"
    if column:
        assert recipe_columns(run.recipe)["loss"] == column


def test_the_run_hash_covers_the_blends_content_not_their_paths():
    cfg = compose("config", ["+model=effnet_lite0", "loss=distill", "loss.teacher=here/b.csv", "data.pseudo=b.csv"])
    moved = compose("config", ["+model=effnet_lite0", "loss=distill", "loss.teacher=there/b.csv", "data.pseudo=c.csv"])
    (run,), (run_moved,) = resolve_runs(cfg), resolve_runs(moved)
    same = run_hash(run, cfg.data, cfg.tta, "data", {"distill": "h1"})
    assert same == run_hash(run_moved, moved.data, moved.tta, "data", {"distill": "h1"})
    assert same != run_hash(run, cfg.data, cfg.tta, "data", {"distill": "h2"})
    plain = compose("config", ["+model=effnet_lite0"])
    (reference,) = resolve_runs(plain)
    assert run_hash(reference, plain.data, plain.tta, "data") == run_hash(reference, plain.data, plain.tta, "data", {})


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["data.pseudo=b.csv", "data.aux_targets=[group]"], "data.pseudo with data.aux_targets"),
        (["data.pseudo_threshold=0"], "data.pseudo_threshold must be in (0, 1], got 0.0"),
        (["loss=distill", "loss.alpha=1.5"], "loss.alpha must be in [0, 1], got 1.5"),
        (["loss=distill", "loss.temperature=0"], "loss.temperature must be > 0, got 0.0"),
    ],
)
def test_bad_settings_are_one_line(overrides, message):
    from pipeline.config import check_ranges

    cfg = compose("config", ["+model=effnet_lite0", *overrides])
    with pytest.raises(PipelineError, match=re.escape(message)) as e:
        check_ranges(cfg)
        resolve_runs(cfg)
    assert "\n" not in str(e.value)


def tiny(root, weights_dir, tmp_path, *extra, name="student"):
    return compose("config", [*tiny_run_overrides(root, weights_dir, tmp_path / "preds", name=name), *extra])


@pytest.fixture(scope="module")
def teacher_blend(kfold_teacher_runs, tmp_path_factory):
    """The equal blend of the kfold teachers, beside its CSV: out-of-fold probabilities for every training image."""
    runs = [predictions.load(p) for p in sorted(kfold_teacher_runs.preds.glob("*.pt"))]
    csv = tmp_path_factory.mktemp("teacher_blend") / "teachers.csv"
    return csv, blend_file_of(runs, csv)


@pytest.mark.slow
def test_a_student_learns_from_a_kfold_blend_with_extra_targets_and_mixup(
    demo_root, weights_dir, teacher_blend, tmp_path
):
    csv, blend = teacher_blend
    student = ["loss=distill", f"loss.teacher={csv}", "data.aux_targets=[group]", "train.mixup=mixup"]
    cfg = tiny(demo_root, weights_dir, tmp_path, "data.split=kfold", "data.folds=3", "train.fold=0", *student)
    from pipeline.training.jobs import train_model

    (result,) = train_model(cfg)
    assert result.status == "trained"
    assert result.path.name == "student_squish32_32_kd_mixup_aux-group_fold0.pt"
    preds = predictions.load(result.path)
    digest = blend_file.content_hash(blend_file.probs_path(csv))
    assert preds.teacher == {"distill": {"blend": str(csv), "hash": digest, "alpha": 0.3, "temperature": 1.0}}
    assert preds.recipe_summary["loss"] == f"distill teacher={csv}"
    assert 0 <= preds.metrics["valid_error"] <= 1 and "valid_error_group" in preds.metrics

    # its soft targets: the blend's out-of-fold rows for its training images, none for its validation images
    comp = scan_competition(demo_root)
    run = resolve_runs(cfg)[0]
    valid = set(preds.valid_ids)
    held = [i for i, f in enumerate(comp.train_files) if comp.image_id(f) in valid]
    targets = load_teachers(cfg, comp).targets(comp, run, held)
    rows = dict(zip(blend.oof_ids, blend.oof_probs, strict=True))
    assert {comp.image_id(f) for f in targets.teacher} == {comp.image_id(f) for f in comp.train_files} - valid
    assert all(torch.equal(p, rows[comp.image_id(f)]) for f, p in targets.teacher.items())
    assert not targets.pseudo


@pytest.mark.slow
def test_a_blend_of_holdout_runs_cannot_teach_in_one_line(demo_root, weights_dir, demo_runs, tmp_path):
    from pipeline.training.jobs import train_model

    runs = [predictions.load(p) for p in sorted(demo_runs.preds.glob("*.pt"))]
    csv = tmp_path / "holdout.csv"
    blend_file_of(runs, csv)
    with pytest.raises(PipelineError) as e:
        train_model(tiny(demo_root, weights_dir, tmp_path, "loss=distill", f"loss.teacher={csv}"))
    message = str(e.value)
    assert "\n" not in message and "has no out-of-fold probabilities" in message
    assert "train the teachers with data.split=kfold" in message
    with pytest.raises(PipelineError, match="loss=distill needs loss.teacher="):
        train_model(tiny(demo_root, weights_dir, tmp_path, "loss=distill"))
    with pytest.raises(PipelineError, match="no blend probabilities at"):
        train_model(tiny(demo_root, weights_dir, tmp_path, "loss=distill", f"loss.teacher={tmp_path / 'none.csv'}"))


@pytest.mark.slow
def test_pseudo_labels_train_never_validate_and_a_new_blend_retrains(
    demo_root, weights_dir, teacher_blend, tmp_path, caplog
):
    """A holdout run with a kfold teacher blend: the warning line, the confident test images in its training
    items and none among its validation items, its record; the same blend skips it, a changed one retrains."""
    from pipeline.training.jobs import train_model
    from pipeline.training.learner import run_learner
    from pipeline.training.pretrained import timm_kwargs
    from pipeline.training.run import run_split

    csv, blend = teacher_blend
    threshold = round(float(blend.test_probs.max(1).values.median()), 3)  # tiny teachers: about half the images
    cfg = tiny(demo_root, weights_dir, tmp_path, f"data.pseudo={csv}", f"data.pseudo_threshold={threshold}")
    comp = scan_competition(demo_root)
    chosen = {blend.test_ids[i] for i in select_pseudo(blend.test_probs, threshold)}
    assert 0 < len(chosen) < len(comp.test_ids)

    with caplog.at_level(logging.INFO):
        (first,) = train_model(cfg)
    assert first.status == "trained" and first.path.name == f"student_squish32_32_pl{threshold:g}.pt"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("trained on this run's validation images: its validation figures are optimistic" in w for w in warnings)
    preds = predictions.load(first.path)
    digest = blend_file.content_hash(blend_file.probs_path(csv))
    record = {"blend": str(csv), "hash": digest, "threshold": threshold, "hard": False, "cap_per_class": 0}
    assert preds.teacher == {"pseudo": record | {"fold": None, "n_images": len(chosen)}}
    assert not set(preds.valid_ids) & set(comp.test_ids) and len(preds.valid_ids) == 12

    # the run's own learner: the chosen test images train, none validates
    run = resolve_runs(cfg)[0]
    teachers = load_teachers(cfg, comp)
    split = run_split(cfg, comp, run, cfg.data.seed)
    targets = teachers.targets(comp, run, split.valid_idx)
    learn = run_learner(cfg, comp, run, DEVICE, timm_kwargs(run), valid_idx=split.valid_idx, targets=targets)
    in_training = {p.name for p in learn.dls.train_ds.items if p.parent == comp.test_dir}
    assert in_training == chosen and len(learn.dls.train_ds) == 48 + len(chosen)
    assert all(p.parent.parent == comp.train_dir for p in learn.dls.valid_ds.items)
    label, probs, teacher = learn.dls.train_ds[len(learn.dls.train_ds) - 1][1:]
    assert float(probs.max()) >= threshold and int(label) == int(probs.argmax()) and not teacher.any()

    (again,) = train_model(cfg)
    assert again.status == "skipped"
    changed = blend_file.BlendFile(**(blend.__dict__ | {"test_probs": blend.test_probs.flip(0)}))
    write_atomic(blend_file.probs_path(csv), blend_file.encode(changed))
    with caplog.at_level(logging.INFO):
        (retrained,) = train_model(cfg)
    assert retrained.status == "trained"
    assert "learned from another blend (loss.teacher or data.pseudo changed): retraining" in caplog.text
    assert predictions.load(retrained.path).teacher["pseudo"]["hash"] != digest
    write_atomic(blend_file.probs_path(csv), blend_file.encode(blend))  # the module's blend as it was


@pytest.mark.slow
def test_under_kfold_fold_k_takes_its_pseudo_labels_from_the_fold_k_models_only(
    demo_root, weights_dir, teacher_blend, tmp_path
):
    _, blend = teacher_blend
    n_test, n_classes = len(blend.test_ids), len(blend.vocab)
    # each fold confident on its own third of the test images, the blend's mean on all of them
    folds = torch.full((3, n_test, n_classes), 1 / n_classes)
    for k in range(3):
        for i in range(k, n_test, 3):
            folds[k, i] = torch.eye(n_classes)[i % n_classes]
    everywhere = torch.eye(n_classes)[torch.arange(n_test) % n_classes]
    fields = {"csv": str(tmp_path / "folds.csv"), "test_probs": everywhere, "fold_test_probs": folds}
    constructed = blend_file.BlendFile(**(blend.__dict__ | fields))
    path = blend_file.probs_path(tmp_path / "folds.csv")
    path.write_bytes(blend_file.encode(constructed))
    kfold = [*tiny_run_overrides(demo_root, weights_dir, tmp_path / "preds"), "data.split=kfold"]
    cfg = compose("config", [*kfold, "data.folds=3", f"data.pseudo={tmp_path / 'folds.csv'}"])
    comp = scan_competition(demo_root)
    teachers = load_teachers(cfg, comp)
    position = {i: n for n, i in enumerate(blend.test_ids)}
    for run in resolve_runs(cfg):
        chosen = teachers.pseudo_labels(comp, run)
        assert {position[f.name] % 3 for f in chosen} == {run.fold} and len(chosen) == len(range(run.fold, n_test, 3))

    # another split than the blend's: one line
    other = compose("config", [*kfold, "data.folds=2", f"data.pseudo={tmp_path / 'folds.csv'}"])
    split = "blend's kfold split (seed 42, n_folds 3, n_images 60) is not this run's (seed 42, n_folds 2, n_images 60)"
    with pytest.raises(PipelineError, match=re.escape(split)):
        load_teachers(other, comp)
    holdout = blend_file.BlendFile(**(constructed.__dict__ | {"fold_test_probs": torch.zeros(0, 0, 0), "split": {}}))
    path.write_bytes(blend_file.encode(holdout))
    with pytest.raises(PipelineError, match=r"kfold split \(none\)"):
        load_teachers(cfg, comp)


@pytest.mark.slow
def test_excluded_images_leave_training_not_validation_and_change_the_fingerprint(
    demo_root, demo_runs, tmp_path, caplog
):
    from pipeline.data.loaders import make_dataloaders
    from pipeline.training.jobs import train_model
    from pipeline.training.run import run_split

    cfg = compose("config", [*demo_runs.overrides, "train.variant=0"])
    comp = scan_competition(demo_root)
    run = resolve_runs(cfg)[0]
    split = run_split(cfg, comp, run, cfg.data.seed)
    valid = [comp.image_id(comp.train_files[i]) for i in split.valid_idx]
    training = [i for i in map(comp.image_id, comp.train_files) if i not in valid]
    listed = [training[0], training[7], valid[0]]
    pd.DataFrame({"image": listed, "why": "suspect"}).to_csv(tmp_path / "suspects.csv", index=False)

    cleaned = excluding(comp, tmp_path / "suspects.csv")
    assert cleaned.excluded == set(listed)
    assert cleaned.fingerprint_for([]) != comp.fingerprint_for([]) == excluding(comp, None).fingerprint_for([])
    dls = make_dataloaders(cleaned, run, valid_idx=split.valid_idx, num_workers=0, device=DEVICE, perf=cfg.perf)
    assert {cleaned.image_id(p) for p in dls.train_ds.items} == set(training) - set(listed)
    assert [cleaned.image_id(p) for p in dls.valid_ds.items] == valid  # validation keeps every image

    preds = demo_runs.copy_to(tmp_path)
    cleaning = [f"paths.preds={preds}", f"data.exclude={tmp_path / 'suspects.csv'}"]
    with caplog.at_level(logging.INFO):
        (result,) = train_model(compose("config", [*demo_runs.overrides, "train.variant=0", *cleaning]))
    assert result.status == "trained" and result.path.name == "tiny_squish32_32.pt"
    assert "trained on other data (images, train.csv or data.exclude changed" in caplog.text
    made = predictions.load(result.path)
    assert made.environment["data_fingerprint"] == cleaned.fingerprint_for([]) and made.valid_ids == valid
    # python -m pipeline.runs checks a cleaned run against its list: current, not stale
    from pipeline.training.listing import list_runs

    listing = [f"paths.preds={preds}", "data=demo", f"data.root={demo_root}", "runs.filter=tiny_squish32_32"]
    rows, _ = list_runs(compose("runs", [*listing, f"perf.cache_dir={demo_runs.preds.parent / 'cache'}"]))
    assert [r["state"] for r in rows] == ["ok"]

    pd.DataFrame({"image": ["dress/nothing.jpg", training[1]]}).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(PipelineError, match=r"lists 1 image\(s\) that are not training images .*'dress/nothing.jpg'"):
        excluding(comp, tmp_path / "bad.csv")
    pd.DataFrame({"image_id": [training[1]]}).to_csv(tmp_path / "column.csv", index=False)
    with pytest.raises(PipelineError, match="has no 'image' column"):
        excluding(comp, tmp_path / "column.csv")
