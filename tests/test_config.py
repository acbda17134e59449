import subprocess
import sys

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ValidationError

from pipeline.errors import PipelineError
from pipeline.training.specs import resolve_runs, variant_name
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
        ("model.variants.0.item_size=[0]", "item_size must be"),
        ("model.variants.0.accum=3", "batch_size 64 is not divisible by accum 3"),
    ],
)
def test_bad_variant_values_are_one_clear_error(override, message):
    with pytest.raises(PipelineError, match=message):
        resolve_runs(compose("config", ["+model=swin_large", override]))


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=120, env=env)


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
        "import sys, pipeline.train, pipeline.blend, pipeline.ensemble.writing, pipeline.training.runner,"
        " pipeline.prepare_demo, pipeline.probe, pipeline.training.memory_probe, pipeline.bench,"
        " pipeline.fast.benchmark, pipeline.kernels, hydra_plugins.pipeline_kaggle_launcher.kaggle_launcher;"
        "print(sorted(m for m in ('fastai', 'timm', 'kaggle') if m in sys.modules))"
    )
    out = _cli("-c", code)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


ROOT_SCHEMAS = {
    "config": "TrainAppConfig",
    "blend": "BlendAppConfig",
    "bench": "BenchAppConfig",
    "prepare_demo": "PrepareDemoAppConfig",
    "download": "DownloadAppConfig",
    "submit": "SubmitAppConfig",
    "kernels": "KernelsAppConfig",
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
    """Each default is declared twice, documented in conf/ and typed in pipeline/config.py: they must agree."""
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
    assert differ == {}, f"conf/ and pipeline/config.py disagree (schema, yaml): {differ}"


def test_kaggle_launcher_yaml_agrees_with_its_schema():
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    from pipeline.config import KaggleLauncherConfig, register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = hydra_compose("config", ["hydra/launcher=kaggle"], return_hydra_config=True)
    assert dict(_leaves(cfg.hydra.launcher)) == dict(_leaves(OmegaConf.structured(KaggleLauncherConfig)))
    with pytest.raises(ConfigCompositionException), initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        hydra_compose("config", ["hydra/launcher=kaggle", "hydra.launcher.max_parallel=many"], return_hydra_config=True)
