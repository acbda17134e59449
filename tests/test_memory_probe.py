"""The memory probe on the CPU: real training steps in child processes, one per accum setting."""

import pytest

from pipeline.data import scan_competition
from pipeline.errors import PipelineError
from pipeline.memory_probe import (
    Measurement,
    chosen_accums,
    probe_run,
    probe_table,
    read_accums,
    smallest_class,
    write_accums,
)
from pipeline.runs import resolve_runs
from pipeline.weights import timm_kwargs
from tests.conftest import compose, tiny_run_overrides


@pytest.mark.slow
def test_peak_memory_falls_as_accum_rises(demo_root, weights_dir, tmp_path):
    cfg = compose(
        "config",
        [
            *tiny_run_overrides(demo_root, weights_dir, tmp_path),
            "model.batch_size=16",
            "model.variants=[{resize: squish, item_size: [128], size: [128]}]",
        ],
    )
    (run,) = resolve_runs(cfg)
    subset = smallest_class(scan_competition(demo_root))
    assert len(subset.train_files) == 20 and len({f.parent for f in subset.train_files}) == 1
    # a budget nothing meets, so every setting is measured
    results = probe_run(subset, run, "cpu", timm_kwargs(run), [1, 4], budget_gb=0.01, steps=1)
    assert [(m.accum, m.micro_batch, m.fits) for m in results] == [(1, 16, False), (4, 4, False)]
    assert results[0].peak_gb > results[1].peak_gb > 0.1
    # with a budget between the two, the probe stops at the first setting that fits
    budget = (results[0].peak_gb + results[1].peak_gb) / 2
    fitting = probe_run(subset, run, "cpu", timm_kwargs(run), [4, 8], budget_gb=budget, steps=1)
    assert [(m.accum, m.fits) for m in fitting] == [(4, True)]


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
