import math
import re
import subprocess
import sys
import time

import pytest
import yaml
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ValidationError

from pipeline.errors import PipelineError
from pipeline.training.specs import resolve_runs, variant_name
from tests import warm_python
from tests.conftest import CONF, REPO, compose

REFERENCE = {  # fast.ai lesson 7's final six runs: arch, resize, item size, aug size, blend weight
    "convnext_large": ("convnext_large.fb_in22k", [("crop", (640, 480), (320, 224), 1.0)]),
    "vit_large": (
        "vit_large_patch16_224",
        [("squish", (480,), (224,), 2.0), ("crop", (640, 480), (224,), 2.0)],
    ),
    "swinv2_large": (
        "swinv2_large_window12_192.ms_in22k",
        [("squish", (480,), (192,), 1.0), ("crop", (640, 480), (192,), 1.0)],
    ),
    "swin_large": ("swin_large_patch4_window7_224", [("crop", (640, 480), (224,), 1.0)]),
}


@pytest.mark.parametrize("model", sorted(REFERENCE))
def test_reference_models_reproduce_lesson_7(model):
    runs = resolve_runs(compose("config", [f"+model={model}"]))
    arch, variants = REFERENCE[model]
    assert [(r.resize, r.item_size, r.size, r.weight) for r in runs] == variants
    for r in runs:
        assert (r.arch, r.accum, r.epochs, r.lr, r.batch_size, r.micro_batch) == (arch, 2, 12, 0.01, 64, 32)
        assert r.pretrained and r.weights is None


def test_every_model_file_composes_and_resolves():
    files = sorted((CONF / "model").glob("*.yaml"))
    assert len(files) >= 7
    for f in files:
        runs = resolve_runs(compose("config", [f"+model={f.stem}"]))
        assert runs and all(r.name.startswith(f"{r.model}_") for r in runs)


def test_train_overrides_beat_variants_and_model():
    cfg = compose("config", ["+model=vit_large", "train.epochs=1", "train.lr=0.002", "train.accum=4"])
    assert {(r.epochs, r.lr, r.accum, r.micro_batch) for r in resolve_runs(cfg)} == {(1, 0.002, 4, 16)}


def test_variant_overrides_beat_model():
    cfg = compose("config", ["+model=convnext_large", "model.variants.0.accum=8", "model.variants.0.epochs=3"])
    (run,) = resolve_runs(cfg)
    assert (run.accum, run.epochs, run.micro_batch) == (8, 3, 8)


def test_variant_names():
    assert variant_name("squish", (480,), (224,)) == "squish480_224"
    assert variant_name("crop", (640, 480), (320, 224)) == "crop640x480_320x224"


def test_mistyped_key_fails_at_composition():
    with pytest.raises(ConfigCompositionException, match="epoch"):
        compose("config", ["+model=vit_large", "train.epoch=3"])


def test_wrong_type_fails_at_composition():
    with pytest.raises(ConfigCompositionException):
        compose("config", ["+model=vit_large", "train.epochs=many"])


def test_unknown_resize_method_fails_at_composition():
    with pytest.raises((ConfigCompositionException, ValidationError)):
        compose("config", ["+model=vit_large", "model.variants.0.resize=stretch"])


def test_no_model_is_one_clear_error():
    with pytest.raises(PipelineError, match=r"add \+model=NAME"):
        resolve_runs(compose("config"))


def test_model_without_variants_is_one_clear_error():
    with pytest.raises(PipelineError, match="vit_large has no variants"):
        resolve_runs(compose("config", ["+model=vit_large", "model.variants=[]"]))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.variants.0.size=[1,2,3]", r"size must be \[n\] or \[height, width\]"),
        ("model.variants.0.item_size=[]", r"item_size must be \[n\] or \[height, width\]"),
        ("model.variants.0.accum=3", "batch_size 64 is not divisible by accum 3"),
    ],
)
def test_bad_variant_values_are_one_clear_error(override, message):
    with pytest.raises(PipelineError, match=message):
        resolve_runs(compose("config", ["+model=swin_large", override]))


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return warm_python.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=120, env=env)


def test_cli_prints_composed_reference_config():
    out = _cli("-m", "pipeline.train", "+model=vit_large", "--cfg", "job")
    assert out.returncode == 0, out.stderr
    assert "arch: vit_large_patch16_224" in out.stdout and "weight: 2.0" in out.stdout


def test_cli_errors_are_one_line_without_traceback(tmp_path):
    out = _cli("-m", "pipeline.train", "+model=vit_large", f"data.root={tmp_path / 'nowhere'}")
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        f"error: data folder {tmp_path / 'nowhere'} does not exist: set data.root to a competition folder"
    ]


def test_cli_modules_do_not_import_heavy_libraries():
    # --help, config errors and blending must not pay for fastai/timm/kaggle imports.
    code = (
        "import sys, pipeline.train, pipeline.blend, pipeline.ensemble.writing, pipeline.training.jobs,"
        " pipeline.prepare_demo, pipeline.probe, pipeline.training.memory_probe, pipeline.bench,"
        " pipeline.benchmark, pipeline.kernels, pipeline.runs, pipeline.training.listing,"
        " pipeline.training.loggers, hydra_plugins.paddy_pipeline.launchers;"
        "print(sorted(m for m in ('fastai', 'timm', 'kaggle') if m in sys.modules))"
    )
    # a fresh interpreter: the warm one the other CLI tests fork from has imported them all
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


BAD_VALUES = [  # (root config, overrides, the one-line error)
    ("config", ["tta.n=0"], "tta.n must be >= 1, got 0"),
    ("config", ["logger=mlflow", "logger.http_timeout_s=0"], "logger.http_timeout_s must be >= 1, got 0"),
    ("config", ["tta.n=-1"], "tta.n must be >= 1, got -1"),
    ("config", ["tta.beta=1.5"], "tta.beta must be in [0, 1], got 1.5"),
    ("config", ["tta.beta=-0.1"], "tta.beta must be in [0, 1], got -0.1"),
    ("config", ["+model=swin_large", "model.batch_size=0"], "model.batch_size must be >= 1, got 0"),
    ("config", ["+model=swin_large", "model.accum=0"], "model.accum must be >= 1, got 0"),
    ("config", ["+model=swin_large", "model.epochs=0"], "model.epochs must be >= 1, got 0"),
    ("config", ["+model=swin_large", "model.lr=0"], "model.lr must be > 0, got 0.0"),
    (
        "config",
        ["+model=swin_large", "model.variants.0.batch_size=0"],
        "model.variants.0.batch_size must be >= 1, got 0",
    ),
    ("config", ["+model=swin_large", "model.variants.0.accum=-2"], "model.variants.0.accum must be >= 1, got -2"),
    ("config", ["+model=swin_large", "model.variants.0.epochs=0"], "model.variants.0.epochs must be >= 1, got 0"),
    ("config", ["+model=swin_large", "model.variants.0.lr=-0.01"], "model.variants.0.lr must be > 0, got -0.01"),
    (
        "config",
        ["+model=swin_large", "model.variants.0.min_scale=0"],
        "model.variants.0.min_scale must be in (0, 1], got 0.0",
    ),
    (
        "config",
        ["+model=swin_large", "model.variants.0.min_scale=1.5"],
        "model.variants.0.min_scale must be in (0, 1], got 1.5",
    ),
    ("config", ["+model=swin_large", "model.variants.0.weight=-1"], "model.variants.0.weight must be >= 0, got -1.0"),
    (
        "config",
        ["+model=swin_large", "model.variants.0.item_size=[0]"],
        "model.variants.0.item_size.0 must be >= 1, got 0",
    ),
    ("config", ["+model=swin_large", "model.variants.0.size=[224,-1]"], "model.variants.0.size.1 must be >= 1, got -1"),
    ("config", ["train.epochs=0"], "train.epochs must be >= 1, got 0"),
    ("config", ["train.lr=0"], "train.lr must be > 0, got 0"),
    ("config", ["train.accum=0"], "train.accum must be >= 1, got 0"),
    ("config", ["train.oom_retries=-1"], "train.oom_retries must be >= 0, got -1"),
    ("config", ["data.valid_pct=0"], "data.valid_pct must be in (0, 1), got 0.0"),
    ("config", ["data.valid_pct=1"], "data.valid_pct must be in (0, 1), got 1.0"),
    ("config", ["data.folds=1"], "data.folds must be >= 2, got 1"),
    ("config", ["data.num_workers=-1"], "data.num_workers must be >= 0, got -1"),
    ("config", ["probe.budget_gb=0"], "probe.budget_gb must be > 0, got 0.0"),
    ("config", ["probe.accums=[1,0]"], "probe.accums.1 must be >= 1, got 0"),
    ("config", ["probe.steps=0"], "probe.steps must be >= 1, got 0"),
    ("blend", ["blend.greedy.steps=-1"], "blend.greedy.steps must be >= 0, got -1"),
    ("blend", ["blend.greedy.init=0"], "blend.greedy.init must be >= 1, got 0"),
    ("blend", ["blend.greedy.bags=0"], "blend.greedy.bags must be >= 1, got 0"),
    ("blend", ["blend.greedy.bag_fraction=0"], "blend.greedy.bag_fraction must be in (0, 1], got 0.0"),
    ("blend", ["blend.greedy.bag_fraction=1.5"], "blend.greedy.bag_fraction must be in (0, 1], got 1.5"),
    ("blend", ["+blend.weights.r1=-1"], "blend.weights.r1 must be >= 0, got -1.0"),
    ("blend", ["blend.stack.folds=1"], "blend.stack.folds must be >= 2, got 1"),
    ("blend", ["blend.stack.C=[1,0]"], "blend.stack.C.1 must be > 0, got 0.0"),
    ("blend", ["blend.review.top=-1"], "blend.review.top must be >= 0, got -1"),
    ("submit", ["kaggle.attempts=0"], "kaggle.attempts must be >= 1, got 0"),
    ("submit", ["kaggle.backoff_s=-1"], "kaggle.backoff_s must be >= 0, got -1.0"),
    ("submit", ["kaggle.max_backoff_s=-1"], "kaggle.max_backoff_s must be >= 0, got -1.0"),
    ("submit", ["submit.timeout_s=0"], "submit.timeout_s must be > 0, got 0.0"),
    ("submit", ["submit.poll_s=0"], "submit.poll_s must be > 0, got 0.0"),
    ("download", ["kaggle.attempts=-1"], "kaggle.attempts must be >= 1, got -1"),
    ("bench", ["bench.images=0"], "bench.images must be >= 1, got 0"),
    ("bench", ["bench.test_images=0"], "bench.test_images must be >= 1, got 0"),
    ("bench", ["bench.item_size=0"], "bench.item_size must be >= 1, got 0"),
    ("bench", ["bench.size=0"], "bench.size must be >= 1, got 0"),
    ("bench", ["bench.batch_size=0"], "bench.batch_size must be >= 1, got 0"),
    ("bench", ["bench.accum=0"], "bench.accum must be >= 1, got 0"),
    ("bench", ["bench.epochs=0"], "bench.epochs must be >= 1, got 0"),
    ("bench", ["bench.lr=0"], "bench.lr must be > 0, got 0.0"),
    ("bench", ["bench.tta_n=0"], "bench.tta_n must be >= 1, got 0"),
    ("bench", ["bench.repeats=0"], "bench.repeats must be >= 1, got 0"),
    ("bench", ["bench.limit_steps=0"], "bench.limit_steps must be >= 1, got 0"),
    ("prepare_demo", ["demo.train_per_class=0"], "demo.train_per_class must be >= 1, got 0"),
    ("prepare_demo", ["demo.test_per_class=0"], "demo.test_per_class must be >= 1, got 0"),
    # the recipe's options, ranged on their registry entries' schemas
    ("config", ["train.time_budget_h=0"], "train.time_budget_h must be > 0, got 0.0"),
    ("config", ["train.ema_decay=1.5"], "train.ema_decay must be in [0, 1), got 1.5"),
    ("config", ["train.mixup_alpha=-1"], "train.mixup_alpha must be > 0, got -1.0"),
    ("config", ["train.lr_find_steps=0"], "train.lr_find_steps must be >= 1, got 0"),
    ("config", ["train.seed=-1"], "train.seed must be >= 0, got -1"),
    ("config", ["train.fold=-1"], "train.fold must be >= 0, got -1"),
    ("config", ["loss=label_smoothing", "loss.eps=1.5"], "loss.eps must be in [0, 1), got 1.5"),
    ("config", ["optimizer.mom=1.5"], "optimizer.mom must be in [0, 1), got 1.5"),
    ("config", ["optimizer.wd=-0.1"], "optimizer.wd must be >= 0, got -0.1"),
    ("config", ["optimizer=ranger", "optimizer.k=0"], "optimizer.k must be >= 1, got 0"),
    ("config", ["schedule.pct_start=2"], "schedule.pct_start must be in [0, 1], got 2.0"),
    ("config", ["schedule=one_cycle", "schedule.div=0"], "schedule.div must be > 0, got 0.0"),
    ("config", ["+data.aux_weights.variety=-1"], "data.aux_weights.variety must be >= 0, got -1.0"),
    ("config", ["data.seed=-1"], "data.seed must be >= 0, got -1"),
    ("blend", ["blend.seed=-1"], "blend.seed must be >= 0, got -1"),
]


@pytest.mark.parametrize(
    ("config_name", "overrides", "message"), BAD_VALUES, ids=[" ".join(o) for _, o, _ in BAD_VALUES]
)
def test_out_of_range_options_are_one_clear_error(config_name, overrides, message):
    from pipeline.config import check_ranges

    with pytest.raises(PipelineError) as e:
        check_ranges(compose(config_name, overrides))
    assert str(e.value) == message


@pytest.mark.parametrize("config_name", ["config", "blend", "submit", "download", "bench", "prepare_demo", "runs"])
def test_shipped_configs_are_in_range(config_name):
    from pipeline.config import check_ranges

    check_ranges(compose(config_name))
    for f in sorted((CONF / "model").glob("*.yaml")):
        check_ranges(compose("config", [f"+model={f.stem}", "data=demo"]))


def _schemas() -> list[type]:
    """Every schema dataclass: the config package's and the registries' options."""
    import dataclasses
    import inspect

    import pipeline.config as package
    from pipeline.ensemble.weightings import WEIGHTINGS
    from pipeline.training.loggers import LOGGERS
    from pipeline.training.recipe import GROUPS

    modules = [getattr(package, m) for m in dir(package) if inspect.ismodule(getattr(package, m))]
    members = [
        (m, c) for m in modules for _, c in inspect.getmembers(m, inspect.isclass) if dataclasses.is_dataclass(c)
    ]
    found = {c for m, c in members if c.__module__ == m.__name__ != "pipeline.config.ranges"}
    found |= {e.schema for r in [*GROUPS.values(), WEIGHTINGS, LOGGERS] for e in r.entries() if e.schema}
    return sorted(found, key=lambda c: c.__qualname__)


def test_every_numeric_option_declares_its_range():
    """A new number in any schema fails here until its field says what it allows (pipeline/config/ranges.py)."""
    import dataclasses
    import typing

    from pipeline.config.ranges import RANGE, Range

    unranged = []
    for schema in _schemas():
        for f in dataclasses.fields(schema):
            hint = typing.get_type_hints(schema)[f.name]
            leaves = {a for arg in typing.get_args(hint) or (hint,) for a in (typing.get_args(arg) or (arg,))}
            if leaves & {int, float} and not isinstance(f.metadata.get(RANGE), Range):
                unranged.append(f"{schema.__qualname__}.{f.name}")
    assert len(_schemas()) >= 30 and unranged == []


def test_an_unknown_registry_name_is_one_line_listing_the_known_ones():
    from pipeline.ensemble.compute import compute_blend
    from pipeline.training.specs import resolve_runs

    with pytest.raises(PipelineError) as e:
        compute_blend(compose("blend", ["blend.weighting=nope", "data=demo"]))
    assert str(e.value) == (
        "unknown weighting 'nope': choose one of config, equal, greedy, optimize, best, stack"
        " (blend.weighting in conf/blend.yaml)"
    )
    with pytest.raises(PipelineError) as e:
        resolve_runs(compose("config", ["+model=effnet_lite0", "optimizer.name=adamw"]))
    assert str(e.value) == (
        "unknown optimizer 'adamw': choose one of adam, sgd, rmsprop, radam, qhadam, lamb, ranger (conf/optimizer/)"
    )


@pytest.mark.parametrize(
    ("choice", "message"),
    [
        (
            ["optimizer=adamw"],
            "unknown optimizer 'adamw': choose one of adam, sgd, rmsprop, radam, qhadam, lamb, ranger",
        ),
        (
            ["-m", "schedule=one_cycle,cosine"],
            "unknown schedule 'cosine': choose one of fine_tune, one_cycle, flat_cos",
        ),
        (["loss=focal"], "unknown loss 'focal': choose one of cross_entropy, label_smoothing, distill (conf/loss/)"),
        (["hydra/launcher=ray"], "unknown launcher 'ray': choose one of local, gpus, slurm, kaggle"),
        (["logger=wandb"], "unknown logger 'wandb': choose one of none, csv, mlflow, tensorboard (conf/logger/)"),
    ],
)
def test_an_unknown_choice_on_the_command_line_is_one_line(choice, message):
    out = _cli("-m", "pipeline.train", "+model=effnet_lite0", *choice)
    assert out.returncode == 2
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith(f"error: {message}")


def test_every_command_checks_ranges_before_reading_anything(tmp_path):
    # Each entry point, given an out-of-range option and nothing to read: the range error comes first.
    from pipeline import prepare_demo, probe
    from pipeline.benchmark import run_benchmark
    from pipeline.ensemble.writing import blend
    from pipeline.kaggle.competition_files import download
    from pipeline.kaggle.uploads import submit
    from pipeline.training.jobs import train_model

    none, out = tmp_path / "none", f"paths.outputs={tmp_path}"
    probe_main, demo_main = probe.main.__wrapped__.__wrapped__, prepare_demo.main.__wrapped__.__wrapped__
    entries = [  # (entry point, root config, overrides, start of the error)
        (train_model, "config", ["+model=effnet_lite0", "model.batch_size=0"], "model.batch_size must"),
        (probe_main, "config", ["+model=effnet_lite0", "probe.steps=0"], "probe.steps must"),
        (run_benchmark, "bench", [f"bench.sample={none}", "bench.tta_n=0"], "bench.tta_n must"),
        (blend, "blend", ["blend.greedy.init=0"], "blend.greedy.init must"),
        (submit, "submit", ["submit.poll_s=0"], "submit.poll_s must"),
        (download, "download", ["kaggle.attempts=0"], "kaggle.attempts must"),
        (demo_main, "prepare_demo", [out, f"demo.source={none}", "demo.test_per_class=0"], "demo.test_per_class must"),
    ]
    for fn, config_name, overrides, message in entries:
        if config_name != "prepare_demo":
            overrides = [out, f"data.root={none}", *overrides]
        with pytest.raises(PipelineError, match=message):
            fn(compose(config_name, overrides))


def test_cli_refuses_an_out_of_range_option_before_training(tmp_path):
    out = _cli("-m", "pipeline.train", "+model=effnet_lite0", "data=demo", f"paths.outputs={tmp_path}", "tta.n=0")
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == ["error: tta.n must be >= 1, got 0"]
    assert not (tmp_path / "preds").exists() and not (tmp_path / "checkpoints").exists()


ROOT_SCHEMAS = {
    "config": "TrainAppConfig",
    "blend": "BlendAppConfig",
    "bench": "BenchAppConfig",
    "prepare_demo": "PrepareDemoAppConfig",
    "download": "DownloadAppConfig",
    "submit": "SubmitAppConfig",
    "kernels": "KernelsAppConfig",
    "runs": "RunsAppConfig",
}


def _leaves(node, prefix=""):
    """(dotted key, raw value) of every leaf, interpolations unresolved."""
    from omegaconf import DictConfig, OmegaConf

    for key in node:
        value = node._get_node(key)
        if isinstance(value, DictConfig) and not value._is_none() and not value._is_missing():
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", OmegaConf.to_container(OmegaConf.create({"v": value._value()}))["v"]


@pytest.mark.parametrize("root", sorted(ROOT_SCHEMAS))
def test_yaml_defaults_agree_with_the_schema(root):
    """Each default is declared twice, documented in conf/ and typed in pipeline/config/: they must agree."""
    from omegaconf import OmegaConf

    import pipeline.config as schema

    defaults = dict(_leaves(OmegaConf.structured(getattr(schema, ROOT_SCHEMAS[root]))))
    if "data" in defaults:  # a group the root leaves MISSING: its schema against the default choice
        defaults |= {f"data.{k}": v for k, v in _leaves(OmegaConf.structured(schema.DataConfig))}
    composed = compose(root)
    OmegaConf.set_struct(composed, False)
    composed.pop("hydra", None)
    differ = {
        key: (defaults[key], value)
        for key, value in _leaves(composed)
        if key in defaults and defaults[key] != "???" and defaults[key] != value
    }
    assert differ == {}, f"conf/ and pipeline/config/ disagree (schema, yaml): {differ}"


# Runs a CLI's main at a given wall-clock time, once its imports are done: jobs started at one moment,
# as a scheduler starts them.
AT = """
import runpy, sys, time
from importlib import import_module
start, module, *args = sys.argv[1:]
import_module(module)
time.sleep(max(0.0, float(start) - time.time()))
sys.argv = [module, *args]
runpy.run_module(module, run_name="__main__", alter_sys=True)
"""


@pytest.mark.slow  # waits 5-6 s for three processes to import, then starts them in one second
def test_jobs_started_in_the_same_second_get_a_folder_each(tmp_path):
    start = math.ceil(time.time()) + 5.05  # past the imports, at the start of a second
    jobs = [
        warm_python.Popen(
            [sys.executable, "-c", AT, str(start), "pipeline.blend", f"paths.outputs={tmp_path}", f"blend.seed={i}"],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for i in range(3)
    ]
    for job in jobs:  # each fails at once (no data folder), its folder already made
        _, err = job.communicate(timeout=120)
        assert job.returncode == 2 and b"does not exist: set data.root" in err
    folders = sorted((tmp_path / "runs" / "blend").iterdir())
    assert len(folders) == 3 and all(re.match(r"\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d_", f.name) for f in folders)
    overrides = [yaml.safe_load((f / ".hydra" / "overrides.yaml").read_text()) for f in folders]
    assert sorted(o[-1] for o in overrides) == ["blend.seed=0", "blend.seed=1", "blend.seed=2"]
    assert all((f / "blend.log").is_file() for f in folders)


def test_variant_and_fold_select_runs_for_one_job_each():
    kfold = ["+model=vit_large", "data.split=kfold", "data.folds=3"]
    names = [r.name for r in resolve_runs(compose("config", kfold))]
    assert len(names) == 6
    picked = [r.name for r in resolve_runs(compose("config", [*kfold, "train.fold=2"]))]
    assert picked == ["vit_large_squish480_224_fold2", "vit_large_crop640x480_224_fold2"]
    for variant in ("1", "crop640x480_224", "vit_large_crop640x480_224"):
        (run,) = resolve_runs(compose("config", [*kfold, f"train.variant={variant}", "train.fold=0"]))
        assert (run.name, run.fold) == ("vit_large_crop640x480_224_fold0", 0)
    (run,) = resolve_runs(compose("config", ["+model=vit_large", "train.variant=0"]))
    assert run.name == "vit_large_squish480_224" and run.fold is None


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ["train.variant=2"],
            "model vit_large has no variant '2': set train.variant to one of 0: squish480_224, 1: crop640x480_224",
        ),
        (["train.fold=1"], "train.fold=1 needs data.split=kfold (now holdout): drop train.fold"),
        (
            ["data.split=kfold", "data.folds=3", "train.fold=3"],
            "train.fold=3 does not exist: data.folds=3 has folds 0..2",
        ),
    ],
)
def test_a_missing_variant_or_fold_is_one_clear_error(overrides, message):
    with pytest.raises(PipelineError) as err:
        resolve_runs(compose("config", ["+model=vit_large", *overrides]))
    assert str(err.value) == message


def test_kaggle_launcher_yaml_agrees_with_its_schema():
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    from pipeline.config import KaggleLauncherConfig, register_configs
    from pipeline.train import REGISTRIES

    register_configs(*REGISTRIES)
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = hydra_compose("config", ["hydra/launcher=kaggle"], return_hydra_config=True)
    assert dict(_leaves(cfg.hydra.launcher)) == dict(_leaves(OmegaConf.structured(KaggleLauncherConfig)))
    with pytest.raises(ConfigCompositionException), initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        hydra_compose("config", ["hydra/launcher=kaggle", "hydra.launcher.max_parallel=many"], return_hydra_config=True)


def test_a_model_sweep_composes_with_model_overrides(tmp_path):
    # Hydra composes a sweep's own config without +model: model.* must still apply (issue: Unexpected type for root)
    out = _cli(
        "-m", "pipeline.train", "-m", "+model=effnet_lite0,swin_large", "model.pretrained=false",
        f"data.root={tmp_path / 'nowhere'}", f"paths.outputs={tmp_path}",
    )  # fmt: skip
    assert out.returncode == 2, out.stderr[-2000:]
    assert "2 job(s) failed" in out.stderr and out.stderr.count("data folder") == 2  # both jobs reached the data
    assert "model.pretrained=False" in out.stderr and "Traceback" not in out.stderr


def test_every_launcher_file_is_a_registry_entry_whose_class_hydra_can_import():
    import importlib

    import yaml

    from pipeline.launchers import LAUNCHERS

    files = {f.stem: yaml.safe_load(f.read_text()) for f in sorted((REPO / "conf/hydra/launcher").glob("*.yaml"))}
    assert sorted(files) == sorted(LAUNCHERS)
    for name, options in files.items():
        entry = LAUNCHERS[name]
        assert options["_target_"] == entry.build and entry.doc
        module, cls = entry.build.rsplit(".", 1)
        assert isinstance(getattr(importlib.import_module(module), cls), type)
        if entry.schema:  # our own options: the file names the schema the registry declares
            assert f"{name}_schema" in options["defaults"]
