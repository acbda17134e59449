"""The training recipe from config: every group option composes to its schema, runs are named by what
differs from the reference recipe, the recipe is part of the run's identity, fastai's optimizers get the
configured hyper-parameters, and bad extra targets are one clear line each."""

import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from hydra.errors import ConfigCompositionException

from pipeline.config import to_container
from pipeline.data.competition import Competition
from pipeline.data.train_csv import read_aux_targets
from pipeline.errors import PipelineError
from pipeline.training.optimizers import opt_func
from pipeline.training.provenance import run_hash
from pipeline.training.recipe import GROUPS, Recipe, recipe_columns
from pipeline.training.specs import resolve_runs
from tests import warm_python
from tests.conftest import CONF, REPO, compose

GROUP_FILES = [(group, f.stem) for group in GROUPS for f in sorted((CONF / group).glob("*.yaml"))]


@pytest.mark.parametrize(("group", "option"), GROUP_FILES)
def test_every_recipe_option_composes_to_its_schema(group, option):
    """conf/<group>/<option>.yaml documents the values its registry entry's schema declares."""
    cfg = compose("config", ["+model=effnet_lite0", f"{group}={option}"])
    assert to_container(cfg[group]) == asdict(GROUPS[group][option].schema())


def test_every_schema_option_has_its_file():
    assert sorted(GROUP_FILES) == sorted((g, o) for g, registry in GROUPS.items() for o in registry)


def run(*overrides, model="effnet_lite0"):
    (spec,) = resolve_runs(compose("config", [f"+model={model}", *overrides]))
    return spec


def test_the_reference_recipe_keeps_todays_names():
    spec = run()
    assert spec.name == "effnet_lite0_squish64_64" and spec.recipe == Recipe()
    assert recipe_columns(spec.recipe) == {
        "optimizer": "adam",
        "schedule": "fine_tune",
        "loss": "cross_entropy",
        "extras": "-",
    }
    # the same values given explicitly are still the reference recipe
    assert run("optimizer=adam", "optimizer.wd=0.01", "train.mixup=none", "train.ema=false").name == spec.name


@pytest.mark.parametrize(
    ("overrides", "tag"),
    [
        (["optimizer=ranger", "loss=label_smoothing"], "_ranger_ls0.1"),
        (["optimizer=sgd", "optimizer.mom=0.8", "schedule=flat_cos"], "_sgd-mom0.8_flat_cos"),
        (["optimizer.wd=0.1", "schedule.freeze_epochs=2"], "_adam-wd0.1_fine_tune-freeze_epochs2"),
        (["optimizer=lamb", "optimizer.decouple_wd=false"], "_lamb-decouple_wdfalse"),
        (["loss=label_smoothing", "loss.eps=0.2", "train.mixup=cutmix"], "_ls0.2_cutmix"),
        (["train.mixup=mixup", "train.mixup_alpha=0.2", "train.ema=true"], "_mixup0.2_ema"),
        (["train.ema=true", "train.ema_decay=0.999", "train.ema_warmup=false"], "_ema0.999-nowarmup"),
        (["train.lr=find", "train.seed=3"], "_lrfind_seed3"),
        (["train.lr=find", "train.lr_find_steps=20"], "_lrfind20"),
        (["data.aux_targets=[variety,age]", "+data.aux_weights.age=0.5"], "_aux-variety_aux-age0.5"),
        (["schedule=one_cycle", "schedule.lr_mult=100"], "_one_cycle-lr_mult100"),
    ],
)
def test_runs_of_other_recipes_are_named_by_what_differs(overrides, tag):
    spec = run(*overrides)
    assert spec.name == "effnet_lite0_squish64_64" + tag
    assert spec.member == spec.name


def test_a_kfold_run_keeps_its_recipe_tag_in_its_member_name():
    specs = resolve_runs(compose("config", ["+model=effnet_lite0", "optimizer=ranger", "data.split=kfold"]))
    assert specs[1].name == "effnet_lite0_squish64_64_ranger_fold1"
    assert specs[1].member == "effnet_lite0_squish64_64_ranger"


def test_recipe_columns_show_what_a_run_trained_with():
    spec = run("optimizer=sgd", "optimizer.mom=0.8", "loss=label_smoothing", "train.mixup=cutmix", "train.ema=true",
               "train.seed=1", "train.lr=find", "data.aux_targets=[variety]")  # fmt: skip
    assert recipe_columns(spec.recipe) == {
        "optimizer": "sgd mom=0.8",
        "schedule": "fine_tune",
        "loss": "label_smoothing",
        "extras": "cutmix, ema 0.9999, lr find, seed 1, +variety",
    }


def test_the_recipe_is_part_of_the_run_identity():
    cfg = compose("config", ["+model=effnet_lite0"])
    hashes = {
        run_hash(run(*overrides), cfg.data, cfg.tta, "the same data")
        for overrides in (
            [],
            ["optimizer=sgd"],
            ["optimizer.wd=0.1"],
            ["schedule=flat_cos"],
            ["loss=label_smoothing"],
            ["train.mixup=mixup"],
            ["train.ema=true"],
            ["train.seed=1"],
            ["train.seed=2"],
            ["train.lr=find"],
        )
    }
    assert len(hashes) == 10
    # the same recipe, the same identity: a finished run is skipped
    same = "the same data"
    assert run_hash(run("optimizer=sgd"), cfg.data, cfg.tta, same) == run_hash(
        run("optimizer=sgd"), cfg.data, cfg.tta, same
    )


def test_train_lr_is_a_number_or_find():
    assert run("train.lr=find").recipe.lr_find and run("train.lr=find").lr == 0.01  # the model's until found
    assert run("train.lr=0.002").lr == 0.002 and not run("train.lr=0.002").recipe.lr_find
    assert run("train.lr=1").lr == 1
    with pytest.raises(PipelineError, match="train.lr must be a number or find, got 'fast'"):
        run("train.lr=fast")


@pytest.mark.parametrize(
    ("name", "steps"),
    [
        ("adam", ["weight_decay", "average_grad", "average_sqr_grad", "step_stat", "adam_step"]),
        ("sgd", ["weight_decay", "average_grad", "momentum_step"]),
        ("rmsprop", ["weight_decay", "average_sqr_grad", "rms_prop_step"]),
        ("radam", ["weight_decay", "average_grad", "average_sqr_grad", "step_stat", "radam_step"]),
        ("qhadam", ["weight_decay", "average_grad", "average_sqr_grad", "step_stat", "qhadam_step"]),
        ("lamb", ["weight_decay", "average_grad", "average_sqr_grad", "step_stat", "lamb_step"]),
        ("ranger", ["weight_decay", "average_grad", "average_sqr_grad", "step_stat", "radam_step"]),
    ],
)
def test_every_optimizer_is_fastais_with_the_configured_hyper_parameters(name, steps):
    spec = run(f"optimizer={name}", "optimizer.wd=0.05")
    params = [torch.nn.Parameter(torch.ones(3))]
    opt = opt_func(spec.recipe.optimizer)(params, lr=0.1)
    inner = getattr(opt, "opt", opt)  # ranger: Lookahead around RAdam
    assert [getattr(f, "func", f).__name__ for f in inner.cbs] == steps
    hypers = inner.hypers[0]
    assert hypers["wd"] == 0.05 and hypers["lr"] == 0.1
    for key, value in spec.recipe.optimizer.items():
        if key in hypers:
            assert hypers[key] == pytest.approx(value), key
    if name == "ranger":
        assert type(opt).__name__ == "Lookahead" and (opt.k, opt.alpha) == (6, 0.5)


def test_a_hyper_parameter_the_optimizer_does_not_take_fails():
    with pytest.raises(ConfigCompositionException, match="sqr_mom"):
        compose("config", ["+model=effnet_lite0", "optimizer=sgd", "optimizer.sqr_mom=0.9"])
    # adam's keys under sgd's name (optimizer.name overridden): one line from the optimizer's own signature
    with pytest.raises(PipelineError, match=r"optimizer sgd does not take \['eps', 'sqr_mom'\]"):
        opt_func(run("optimizer.name=sgd").recipe.optimizer)


def competition(root: Path, train_csv: str) -> Competition:
    """Two labels, two images each (files need not exist to read train.csv)."""
    (root / "train.csv").write_text(train_csv)
    files = [root / "train_images" / label / f"{i}.jpg" for label, i in (("a", 1), ("a", 2), ("b", 3), ("b", 4))]
    return Competition(root, ["a", "b"], files, [])


GOOD = "image_id,label,variety,age\n1.jpg,a,ADT45,45\n2.jpg,a,Ponni,50\n3.jpg,b,ADT45,45\n4.jpg,b,Ponni,45\n"


def test_extra_targets_are_read_from_train_csv(tmp_path):
    (variety, age) = read_aux_targets(competition(tmp_path, GOOD + "9.jpg,c,IR20,60\n"), {"variety": 1.0, "age": 0.5})
    assert (variety.vocab, variety.weight) == (["ADT45", "Ponni"], 1.0)
    assert [variety(f) for f in competition(tmp_path, GOOD).train_files] == ["ADT45", "Ponni", "ADT45", "Ponni"]
    assert (age.vocab, age.weight, age.values["a/2.jpg"]) == (["45", "50"], 0.5, "50")  # categories, as text


@pytest.mark.parametrize(
    ("train_csv", "targets", "message"),
    [
        (GOOD, {"breed": 1.0}, r"train.csv has no column 'breed' \(its columns: image_id, label, variety, age\)"),
        (GOOD.replace("4.jpg", "5.jpg"), {"variety": 1.0}, r"1 training image\(s\) have no row in .* \(e.g. b/4.jpg\)"),
        (GOOD.replace("Ponni", "ADT45"), {"variety": 1.0}, "variety in .* has one value \\('ADT45'\\) for every"),
        (GOOD + "4.jpg,b,IR20,45\n", {"variety": 1.0}, "lists training image b/4.jpg more than once"),
        (GOOD.replace(",Ponni,50", ",,50"), {"variety": 1.0}, r"1 training image\(s\) have no variety \(e.g. a/2\.jpg"),
        ("image_id\n1.jpg\n", {"variety": 1.0}, "has no column 'variety'"),
    ],
)
def test_bad_extra_targets_are_one_clear_line(tmp_path, train_csv, targets, message):
    with pytest.raises(PipelineError, match=message) as e:
        read_aux_targets(competition(tmp_path, train_csv), targets)
    assert "\n" not in str(e.value)


def test_extra_targets_are_looked_up_by_label_folder_and_name(tmp_path):
    comp = competition(tmp_path, GOOD.replace("3.jpg", "1.jpg"))  # a/1.jpg and b/1.jpg: two images
    comp.train_files[2] = comp.train_files[2].with_name("1.jpg")
    (variety,) = read_aux_targets(comp, {"variety": 1.0})
    assert [variety(f) for f in comp.train_files] == ["ADT45", "Ponni", "ADT45", "Ponni"]
    # without the label column, the name alone cannot tell them apart: one line, not a silent merge
    (tmp_path / "train.csv").write_text("image_id,variety\n1.jpg,ADT45\n2.jpg,Ponni\n4.jpg,Ponni\n")
    with pytest.raises(PipelineError) as e:
        read_aux_targets(comp, {"variety": 1.0})
    assert str(e.value) == (
        f"{tmp_path / 'train.csv'} names images by image_id alone, but 1.jpg is in two label folders (a and b): "
        "add a label column to it, or rename one of the images"
    )


def test_a_numeric_column_with_many_values_is_refused_as_an_extra_target(tmp_path):
    rows = "".join(f"{n}.jpg,{label},{20 + n}\n" for n, label in enumerate("ab" * 11))  # 22 ages
    comp = competition(tmp_path, "image_id,label,age\n" + rows)
    comp.train_files[:] = [tmp_path / "train_images" / label / f"{n}.jpg" for n, label in enumerate("ab" * 11)]
    with pytest.raises(PipelineError) as e:
        read_aux_targets(comp, {"age": 1.0})
    assert str(e.value).startswith("data.aux_targets: age in ") and "\n" not in str(e.value)
    assert "looks like a number, not a class (22 numeric values, more than 20)" in str(e.value)
    (tmp_path / "train.csv").write_text("image_id,label,age\n" + rows.replace(",2", ",x2"))  # text: classes
    assert len(read_aux_targets(comp, {"age": 1.0})[0].vocab) == 22


def test_extra_targets_need_train_csv(tmp_path):
    comp = competition(tmp_path, GOOD)
    (tmp_path / "train.csv").unlink()
    with pytest.raises(PipelineError, match=r"data.aux_targets needs .*train.csv \(columns image_id and variety\)"):
        read_aux_targets(comp, {"variety": 1.0})


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["data.aux_targets=[label]"], "the label folders are the main target"),
        (["data.aux_targets=[variety,variety]"], "lists a column twice"),
        (["data.aux_targets=[variety]", "+data.aux_weights.age=2"], r"data.aux_weights names \['age'\]"),
    ],
)
def test_bad_extra_target_settings_are_one_clear_line(overrides, message):
    with pytest.raises(PipelineError, match=message):
        run(*overrides)


def test_cli_names_a_missing_column_in_one_line(demo_root, tmp_path):
    command = ["pipeline.train", "+model=effnet_lite0", f"data.root={demo_root}", "data.aux_targets=[variety]"]
    out = warm_python.run(
        [sys.executable, "-m", *command, f"paths.outputs={tmp_path}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2
    csv = demo_root / "train.csv"
    assert out.stderr.strip().splitlines() == [
        f"error: data.aux_targets: {csv} has no column 'variety' (its columns: image_id, label, group)"
    ]


def test_multi_target_loss_is_the_weighted_sum_and_activates_the_main_slice():
    from fastai.losses import CrossEntropyLossFlat

    from pipeline.training.targets import MultiTargetLoss, error_rates

    torch.manual_seed(0)
    out, main, other = torch.randn(4, 5), torch.tensor([0, 2, 1, 2]), torch.tensor([1, 0, 1, 1])
    loss = MultiTargetLoss([3, 2], [1.0, 0.5], CrossEntropyLossFlat)
    ce = torch.nn.functional.cross_entropy
    torch.testing.assert_close(loss(out, main, other), ce(out[:, :3], main) + 0.5 * ce(out[:, 3:], other))
    loss.reduction = "none"  # as fastai's NoneReduce sets it for MixUp and CutMix
    per_image = loss(out, main, other)
    assert per_image.shape == (4,)
    torch.testing.assert_close(per_image.mean(), ce(out[:, :3], main) + 0.5 * ce(out[:, 3:], other))
    probs = loss.activation(out)  # what get_preds and TTA return: the main target's probabilities only
    assert probs.shape == (4, 3)
    torch.testing.assert_close(probs.sum(1), torch.ones(4))
    assert torch.equal(loss.decodes(out), out[:, :3].argmax(1))
    main_error, other_error = error_rates(["label", "variety"], [3, 2])
    assert (main_error.__name__, other_error.__name__) == ("error_rate", "error_rate_variety")
    assert float(other_error(out, main, other)) == float((out[:, 3:].argmax(1) != other).float().mean())


def test_weight_average_is_what_validation_sees_and_survives_a_checkpoint():
    from fastai.test_utils import synth_learner

    from pipeline.training.callbacks import WeightAverage

    torch.manual_seed(0)
    learn = synth_learner(cbs=WeightAverage(decay=0.9, warmup=False))
    with learn.no_logging():
        learn.fit(2, lr=0.1)
    average = learn.weight_average.ema.module
    trained = {k: v.clone() for k, v in learn.model.state_dict().items()}
    assert not torch.equal(trained["a"], average.a)  # the average lags behind the weights

    @torch.no_grad()
    def loss_with(model):
        x, y = learn.dls.valid_ds.tensors
        return float(torch.nn.functional.mse_loss(model(x).flatten(), y.flatten()))

    validated = float(learn.validate()[0])
    assert validated == pytest.approx(loss_with(average), rel=1e-5)
    assert validated != pytest.approx(loss_with(learn.model), rel=1e-5)
    assert all(torch.equal(v, trained[k]) for k, v in learn.model.state_dict().items())  # swapped back after

    state = learn.weight_average.checkpoint_state()
    resumed = WeightAverage(decay=0.9, warmup=False)
    resumed.learn = synth_learner()
    resumed.restore_checkpoint_state(state)
    assert resumed.steps == learn.weight_average.steps > 0
    assert torch.equal(resumed.ema.module.a, average.a)
