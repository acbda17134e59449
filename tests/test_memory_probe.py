"""The memory probe on the CPU: real training steps in child processes, one per accum setting."""

import logging
import sys

import pytest

from pipeline.data.competition import scan_competition
from pipeline.errors import PipelineError
from pipeline.training.memory_probe import (
    Measurement,
    chosen_accums,
    probe_model,
    probe_run,
    probe_subset,
    probe_table,
    read_accums,
    write_accums,
)
from pipeline.training.pretrained import timm_kwargs
from pipeline.training.specs import resolve_runs
from tests import warm_python
from tests.conftest import REPO, compose, tiny_run_overrides


@pytest.mark.slow
def test_peak_memory_falls_as_accum_rises(demo_root, weights_dir, tmp_path):
    cfg = compose(
        "config",
        [
            *tiny_run_overrides(demo_root, weights_dir, tmp_path),
            "model.batch_size=16",
            "model.variants=[{resize: squish, item_size: [128], size: [128]}]",
            # a budget nothing meets, so every setting is measured
            "probe.accums=[1, 4]",
            "probe.budget_gb=0.01",
            "probe.steps=1",
        ],
    )
    (run,) = resolve_runs(cfg)
    subset = probe_subset(scan_competition(demo_root), run.batch_size + 1)
    # the smallest class (6 images, ties by name) in full, topped up from the other classes to one batch and one
    assert len(subset.train_files) == 17 and len({f.parent for f in subset.train_files[:6]}) == 1
    assert subset.train_files[6].parent not in {f.parent for f in subset.train_files[:6]}
    results = probe_run(cfg, subset, run, "cpu", timm_kwargs(run))
    assert [(m.accum, m.micro_batch, m.fits) for m in results] == [(1, 16, False), (4, 4, False)]
    assert results[0].peak_gb > results[1].peak_gb > 0.1
    # with a budget between the two, the probe stops at the first setting that fits
    cfg.probe.budget_gb = (results[0].peak_gb + results[1].peak_gb) / 2
    cfg.probe.accums = [4, 8]
    fitting = probe_run(cfg, subset, run, "cpu", timm_kwargs(run))
    assert [(m.accum, m.fits) for m in fitting] == [(4, True)]


def test_probe_subset_starts_from_the_smallest_class_and_tops_up(paddy_root):
    comp = scan_competition(paddy_root)  # 3 photos in each of 10 classes
    subset = probe_subset(comp, 17)
    labels = [f.parent.name for f in subset.train_files]
    assert len(subset.train_files) == 17
    assert labels[:3] == [comp.vocab[0]] * 3  # the smallest class (ties: by name) comes first in full
    assert len(set(labels[3:13])) == 9 and comp.vocab[0] not in labels[3:12]  # topped up class by class
    small = probe_subset(comp, 2)  # the smallest class holds a batch: that class in full, nothing else
    assert [f.parent.name for f in small.train_files] == [comp.vocab[0]] * 3
    big = probe_subset(comp, 65)  # more than the folder holds: images repeat
    assert len(big.train_files) == 65 and set(big.train_files) == set(comp.train_files)


@pytest.mark.slow
def test_probe_on_a_folder_whose_smallest_class_is_below_one_batch(paddy_root, weights_dir, tmp_path, caplog):
    cfg = compose(
        "config",
        [
            *tiny_run_overrides(paddy_root, weights_dir, tmp_path),
            "model.batch_size=16",
            "probe.accums=[1, 2]",
            "probe.budget_gb=64",
            "probe.steps=1",
            "probe.write=true",
            f"paths.probe={tmp_path / 'probe'}",
        ],
    )
    with caplog.at_level(logging.INFO):
        assert probe_model(cfg) == {"tiny_squish32_32": 1}
    table = caplog.text[caplog.text.index("run  ") :].splitlines()
    assert "peak GB" in table[0] and "tiny_squish32_32" in table[2] and table[2].rstrip().endswith("<-")
    assert 0.1 < float(table[2].split()[3]) < 64
    assert read_accums(tmp_path / "probe" / "tiny.yaml") == {"tiny_squish32_32": 1}


@pytest.mark.slow
def test_probe_child_failing_for_another_reason_stops_with_its_own_error(paddy_root, weights_dir, tmp_path):
    not_a_dir = tmp_path / "cache-is-a-file"
    not_a_dir.write_text("")
    overrides = [
        *tiny_run_overrides(paddy_root, weights_dir, tmp_path),
        f"perf.cache_dir={not_a_dir}",  # the child cannot build the image cache
        "probe.steps=1",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    probe = warm_python.run(
        [sys.executable, "-m", "pipeline.probe", *overrides], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert probe.returncode == 2, probe.stderr[-2000:]
    (line,) = [line for line in probe.stderr.splitlines() if line.startswith("error:")]
    assert probe.stderr.strip().endswith(line)
    assert line.startswith("error: probing tiny_squish32_32 at accum 1 failed: FileExistsError")
    assert "OOM" not in probe.stdout + probe.stderr and "Traceback" not in probe.stderr


def test_chosen_accums_table_and_file(tmp_path):
    measurements = [
        Measurement("a", 1, 64, None, False),
        Measurement("a", 2, 32, 15.3, True),
        Measurement("b", 1, 64, 11.3, True),
    ]
    assert chosen_accums(measurements) == {"a": 2, "b": 1}
    table = probe_table(measurements, 16).splitlines()
    assert "OOM" in table[2] and table[3].rstrip().endswith("<-") and "15.30" in table[3]
    path = write_accums(tmp_path / "probe" / "vit_large.yaml", {"a": 2, "b": 1}, "test")
    assert read_accums(path) == {"a": 2, "b": 1}
    assert read_accums(tmp_path / "absent.yaml") == {}
    path.write_text("a: lots\n")
    with pytest.raises(PipelineError, match="is not a probe file"):
        read_accums(path)


def test_training_uses_the_probed_accum_unless_train_accum_is_given():
    cfg = compose("config", ["+model=vit_large"])
    probed = {"vit_large_squish480_224": 8}
    assert [r.accum for r in resolve_runs(cfg, probed)] == [8, 2]
    cfg = compose("config", ["+model=vit_large", "train.accum=4"])
    assert [r.accum for r in resolve_runs(cfg, probed)] == [4, 4]


def test_probe_with_a_broken_weights_file_names_it(paddy_root, weights_dir, tmp_path):
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\xff" * 1000)  # safetensors alone says "header too large", naming no file
    overrides = [*tiny_run_overrides(paddy_root, weights_dir, tmp_path), f"model.weights={broken}"]
    with pytest.raises(PipelineError, match=f"weights file {broken} for tf_efficientnet_lite0 is not a readable"):
        probe_model(compose("config", overrides))
