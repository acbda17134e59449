"""Real tiny runs of the training recipe: every optimizer, every schedule (interrupted and resumed), a
seeded run reproduced, and lesson 7's multi-target model on the demo data and on real Paddy photos,
blended beside a single-target run. 32 px, a few images: seconds each on a CPU."""

import logging
import math
import shutil

import pandas as pd
import pytest
import torch

from pipeline import predictions
from pipeline.data.competition import scan_competition
from pipeline.data.demo import GROUPS
from pipeline.ensemble.writing import blend
from pipeline.training.jobs import RunsFailed, train_model
from pipeline.training.learner import MAX_SKIPPED_STEPS, run_learner
from pipeline.training.pretrained import timm_kwargs
from pipeline.training.run import run_split
from pipeline.training.schedules import fit
from pipeline.training.specs import resolve_runs
from tests.conftest import DEVICE, PADDY_SAMPLE, compose, tiny_run_overrides, write_competition

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def few_root(demo_root, tmp_path_factory):
    """4 training images a class (30 to train, 10 to validate) and 10 test images from the demo data."""
    train = {d.name: sorted(d.glob("*.jpg"))[:4] for d in sorted((demo_root / "train_images").iterdir())}
    root = write_competition(tmp_path_factory.mktemp("few"), train, sorted((demo_root / "test_images").iterdir())[:10])
    names = {f.name for files in train.values() for f in files}
    table = pd.read_csv(demo_root / "train.csv")
    table[table.image_id.isin(names)].to_csv(root / "train.csv", index=False)
    return root


def tiny(root, weights_dir, tmp_path, *extra):
    overrides = [
        *tiny_run_overrides(root, weights_dir, tmp_path / "preds"),
        f"paths.outputs={tmp_path / 'outputs'}",
        "data.valid_pct=0.25",
        *extra,
    ]
    return compose("config", overrides)


@pytest.mark.parametrize(
    ("optimizer", "step"),
    [
        ("sgd", "momentum_step"),
        ("rmsprop", "rms_prop_step"),
        ("radam", "radam_step"),
        ("qhadam", "qhadam_step"),
        ("lamb", "lamb_step"),
        ("ranger", "radam_step"),
    ],
)
def test_every_optimizer_trains_the_whole_network(few_root, weights_dir, tmp_path, optimizer, step):
    """One one-cycle epoch of the run's own Learner (run_learner, fit) per optimizer."""
    from tests.callbacks import StepLog

    # On CUDA fp16's gradient scaler skips steps while it halves its scale from 2**16: here about 10, as this 32 px
    # network's early gradients reach about 800, overflowing fp16 at any scale over 64. On an H200, 8 epochs (12
    # steps) sometimes moved no weight. With fastai's MixedPrecision on the CPU's fp16 autocast, 34 epochs (51
    # steps) took their first step at the 10th to 12th, early in one-cycle, and moved every weight, 6 runs of 6.
    epochs = 1 if DEVICE == "cpu" else 2 * (1 + MAX_SKIPPED_STEPS)
    recipe = f"optimizer={optimizer}", "schedule=one_cycle", f"train.epochs={epochs}"
    cfg = tiny(few_root, weights_dir, tmp_path, *recipe)
    (run,) = resolve_runs(cfg)
    comp = scan_competition(cfg.data.root)
    split = run_split(cfg, comp, run, cfg.data.seed)
    learn = run_learner(cfg, comp, run, DEVICE, timm_kwargs(run), valid_idx=split.valid_idx, cbs=[steps := StepLog()])
    before = [p.detach().cpu().clone() for p in learn.model.parameters()]  # the fit moves the model to DEVICE
    with learn.no_bar(), learn.no_logging():
        fit(learn, run)
    opt = getattr(learn.opt, "opt", learn.opt)  # ranger: Lookahead around RAdam
    assert step in [getattr(f, "func", f).__name__ for f in opt.cbs]
    assert (type(learn.opt).__name__ == "Lookahead") == (optimizer == "ranger")
    changed = [not torch.equal(b, p.cpu()) for b, p in zip(before, learn.model.parameters(), strict=True)]
    assert changed[0] and changed[-1], f"{steps}"  # the pretrained body's stem and the head: nothing frozen
    assert all(math.isfinite(v) for v in learn.recorder.values[-1])


@pytest.mark.parametrize("schedule", ["one_cycle", "flat_cos"])
def test_every_schedule_trains_and_resumes_after_an_interruption(few_root, weights_dir, tmp_path, schedule, caplog):
    from fastai.callback.schedule import combined_cos

    log, flag = tmp_path / "batches.log", tmp_path / "fired"
    checkpoints = tmp_path / "outputs" / "checkpoints"
    callbacks = (
        f"train.callbacks=[{{_target_: tests.callbacks.LogBatches, path: '{log}'}},"
        f" {{_target_: tests.callbacks.FailOnceCheckpointed, pattern: '{checkpoints}/*/epoch1.pth', flag: '{flag}'}}]"
    )
    cfg = tiny(few_root, weights_dir, tmp_path, f"schedule={schedule}", "train.epochs=2", callbacks)
    with pytest.raises(RunsFailed, match="interrupted by the test"):
        train_model(cfg)
    assert sorted(p.name for p in checkpoints.glob("*/epoch*.pth")) == ["epoch1.callbacks.pth", "epoch1.pth"]
    lr, s = 0.01, cfg.schedule
    first = [float(x) for x in log.read_text().split()]
    log.unlink()

    with caplog.at_level(logging.INFO):
        (result,) = train_model(cfg)
    assert result.status == "trained" and "(1 of 2 epochs done)" in caplog.text
    # the resumed run trains its second epoch only (fastai's own fit_flat_cos would start again from epoch 0)
    resumed = [float(x) for x in log.read_text().split()]
    per_epoch = 30 // 8
    assert len(first) == len(resumed) == per_epoch
    # each at the schedule's learning rate for its place in the whole run (the second half starts at 0.5)
    if schedule == "one_cycle":
        at = combined_cos(s.pct_start, lr / s.div, lr, lr / s.div_final)
    else:
        at = combined_cos(s.pct_start, lr, lr, lr / s.div_final)
    assert first[0] == pytest.approx(float(at(0.0))) and resumed[0] == pytest.approx(float(at(0.5)))
    assert not list(checkpoints.iterdir())
    assert result.path.name == f"tiny_squish32_32_{schedule}.pt"
    assert predictions.load(result.path).run_spec["recipe"]["schedule"]["name"] == schedule


def test_a_seeded_run_repeated_gives_identical_predictions(few_root, weights_dir, tmp_path):
    recipe = ["train.seed=1", "optimizer=ranger", "loss=label_smoothing", "train.mixup=cutmix", "train.ema=true"]
    (first,) = train_model(tiny(few_root, weights_dir, tmp_path, *recipe))
    assert first.path.name == "tiny_squish32_32_ranger_ls0.1_cutmix_ema_seed1.pt"
    a = predictions.load(first.path)
    (again,) = train_model(tiny(few_root, weights_dir, tmp_path, *recipe, "train.force=true"))
    b = predictions.load(again.path)
    assert a.created <= b.created and a.run_hash == b.run_hash
    for field in ("valid_probs_plain", "valid_probs", "test_probs"):
        assert torch.equal(getattr(a, field), getattr(b, field)), field
    assert a.run_spec["recipe"]["seed"] == 1 and a.split["seed"] == 42  # the split keeps data.seed


def test_multi_target_run_on_the_demo_data(few_root, weights_dir, tmp_path, caplog):
    cfg = tiny(few_root, weights_dir, tmp_path, "data.aux_targets=[group]", "train.mixup=mixup")
    with caplog.at_level(logging.INFO):
        (result,) = train_model(cfg)
    assert result.path.name == "tiny_squish32_32_mixup_aux-group.pt"
    preds = predictions.load(result.path)
    # the main target's softmax only, over its 10 classes, in TTA and without
    assert preds.test_probs.shape == (10, 10) and preds.valid_probs.shape == (10, 10)
    for probs in (preds.test_probs, preds.valid_probs, preds.valid_probs_plain):
        torch.testing.assert_close(probs.sum(1), torch.ones(10))
    plain_error = float((preds.valid_probs_plain.argmax(1) != preds.valid_targets).float().mean())
    assert plain_error == pytest.approx(preds.metrics["valid_error"])  # what the recorder's error_rate said
    group = preds.aux_targets["group"]
    assert group["vocab"] == sorted(set(GROUPS.values())) and group["weight"] == 1.0
    assert group["valid_probs"].shape == (10, 5)
    torch.testing.assert_close(group["valid_probs"].sum(1), torch.ones(10))
    truth = [group["vocab"].index(GROUPS[i.split("/")[0]]) for i in preds.valid_ids]
    assert group["valid_targets"].tolist() == truth
    error = float((group["valid_probs"].argmax(1) != group["valid_targets"]).float().mean())
    assert preds.metrics["valid_error_group"] == pytest.approx(error)
    # each head's metric, from fastai's recorder: in the run's history and its per-epoch line (not a terminal)
    assert all("error_rate_group" in epoch for epoch in preds.history)
    assert "error_rate_group" in caplog.text
    assert f"group {error:.4f}" in caplog.text  # the training table


def test_an_edited_extra_target_retrains_only_the_multi_target_run(few_root, weights_dir, tmp_path):
    data = shutil.copytree(few_root, tmp_path / "few")  # the fixture is shared: edit a copy
    (single,) = train_model(tiny(data, weights_dir, tmp_path))
    (multi,) = train_model(tiny(data, weights_dir, tmp_path, "data.aux_targets=[group]"))
    table = pd.read_csv(data / "train.csv")
    first, other = table.group.iloc[0], next(g for g in table.group if g != table.group.iloc[0])
    table.loc[0, "group"] = other  # one image's extra target changed, the images are the same
    table.to_csv(data / "train.csv", index=False)
    (single_again,) = train_model(tiny(data, weights_dir, tmp_path))
    (multi_again,) = train_model(tiny(data, weights_dir, tmp_path, "data.aux_targets=[group]"))
    assert (single.status, multi.status, first != other) == ("trained", "trained", True)
    assert (single_again.status, multi_again.status) == ("skipped", "trained")


@pytest.fixture(scope="module")
def paddy_varieties(tmp_path_factory):
    """The 30 real Paddy photos with a train.csv as Kaggle's (image_id,label,variety,age). Their real
    varieties are not in the sample: three of Paddy's are assigned in turn."""
    if not PADDY_SAMPLE.is_dir():
        pytest.skip(f"{PADDY_SAMPLE} is not there")
    train = {d.name: sorted(d.glob("*.jpg")) for d in sorted((PADDY_SAMPLE / "train_images").iterdir())}
    root = write_competition(tmp_path_factory.mktemp("paddy"), train, [files[0] for files in train.values()])
    rows = [(f.name, label) for label, files in train.items() for f in files]
    varieties = ["ADT45", "KarnatakaPonni", "Ponni"]
    pd.DataFrame(
        [(i, label, varieties[n % 3], 45 + 5 * (n % 4)) for n, (i, label) in enumerate(rows)],
        columns=["image_id", "label", "variety", "age"],
    ).to_csv(root / "train.csv", index=False)
    return root


def test_multi_target_on_paddy_photos_blends_beside_a_single_target_run(paddy_varieties, weights_dir, tmp_path):
    (single,) = train_model(tiny(paddy_varieties, weights_dir, tmp_path))
    lr_find = ["train.lr=find", "train.lr_find_steps=20"]
    (multi,) = train_model(tiny(paddy_varieties, weights_dir, tmp_path, "data.aux_targets=[variety]", *lr_find))
    assert (single.path.name, multi.path.name) == ("tiny_squish32_32.pt", "tiny_squish32_32_lrfind20_aux-variety.pt")
    preds = predictions.load(multi.path)
    torch.testing.assert_close(preds.test_probs.sum(1), torch.ones(10))
    assert preds.test_probs.shape == (10, 10) and preds.aux_targets["variety"]["valid_probs"].shape[1] == 3
    assert 0 <= preds.metrics["valid_error_variety"] <= 1 and multi.aux_errors == {
        "variety": preds.metrics["valid_error_variety"]
    }
    assert 0 < preds.lr_found < 10 and preds.run_spec["lr"] == preds.lr_found

    output = tmp_path / "sub.csv"
    result = blend(
        compose(
            "blend",
            [f"data.root={paddy_varieties}", f"paths.preds={tmp_path / 'preds'}", f"blend.output={output}"],
        )
    )
    rows = {r["run"]: r for r in result.run_rows}
    assert set(rows) == {"tiny_squish32_32", "tiny_squish32_32_lrfind20_aux-variety"}
    assert rows["tiny_squish32_32"]["extras"] == "-" and rows["tiny_squish32_32"]["aux err"] == "-"
    assert rows["tiny_squish32_32_lrfind20_aux-variety"]["extras"] == "lr find, +variety"
    assert rows["tiny_squish32_32_lrfind20_aux-variety"]["aux err"].startswith("variety ")
    assert "optimize" in result.weighted  # one shared validation set: weights searched over both
    sub, sample = pd.read_csv(output), pd.read_csv(paddy_varieties / "sample_submission.csv")
    assert list(sub.image_id) == list(sample.image_id) and set(sub.label) <= set(preds.vocab)
    assert "lr find, +variety" in result.report_path.read_text()
