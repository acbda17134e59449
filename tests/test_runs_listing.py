"""`python -m pipeline.runs` on a preds folder of holdout, kfold and multi-target runs (the session's demo
runs, two of them rewritten as a kfold fold and a multi-target run), with a run another job is training,
against the data they were trained on and against a changed copy of it (stale). Reads files only: no
fastai import."""

import csv
import io
import re
import shutil
import subprocess
import sys
import time

import pytest
import torch
from filelock import FileLock

from pipeline import predictions
from pipeline.data.competition import scan_competition
from pipeline.training.listing import show_runs
from tests.conftest import REPO, compose, same_size_swap
from tests.factories import rewrite_preds

# pipeline.runs as its CLI runs it, then whether fastai was imported
CLI = """
import runpy, sys
sys.argv = ["pipeline.runs", *sys.argv[1:]]
try:
    runpy.run_module("pipeline.runs", run_name="__main__", alter_sys=True)
finally:
    print("fastai imported:", "fastai" in sys.modules, file=sys.stderr)
"""


@pytest.fixture
def preds_dir(demo_runs, demo_root, tmp_path):
    """The demo's three holdout runs, a kfold fold and a multi-target run (train.csv's group column)."""
    preds = demo_runs.copy_to(tmp_path)
    fold = {"strategy": "kfold", "seed": 42, "fold": 0, "n_folds": 2, "n_images": 60}
    rewrite_preds(preds, "tiny_squish32_32", "tiny_squish32_32_fold0", member="tiny_squish32_32", split=fold)
    source = predictions.load(preds / "tiny_pad32_32.pt")
    n_valid = len(source.valid_ids)
    group = {"vocab": ["a", "b"], "weight": 1.0, "valid_probs": torch.full((n_valid, 2), 0.5)}
    group["valid_targets"] = torch.zeros(n_valid, dtype=torch.long)
    with_group = scan_competition(demo_root).fingerprint_for(["group"])  # train.csv's bytes join the images'
    rewrite_preds(
        preds,
        "tiny_pad32_32",
        "tiny_pad32_32_aux-group",
        aux_targets={"group": group},
        metrics=source.metrics | {"valid_error_group": 0.25},
        run_spec=source.run_spec | {"recipe": source.run_spec["recipe"] | {"aux_targets": {"group": 1.0}}},
        environment=source.environment | {"data_fingerprint": with_group},
    )
    return preds


def runs_cfg(preds, data_root, tmp_path, *extra):
    common = [f"paths.preds={preds}", "data=demo", f"data.root={data_root}", f"perf.cache_dir={tmp_path / 'cache'}"]
    return [*common, *extra]


@pytest.mark.slow
def test_the_runs_table_shows_every_run_its_state_and_imports_no_fastai(preds_dir, demo_root, tmp_path, capsys):
    held = [FileLock(preds_dir / f".{name}.lock") for name in ("tiny_crop40_32", "tiny_next")]  # jobs training
    for lock in held:
        lock.acquire(timeout=0)
    start = time.perf_counter()
    try:
        out = subprocess.run(
            [sys.executable, "-c", CLI, *runs_cfg(preds_dir, demo_root, tmp_path, "runs.format=csv")],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        for lock in held:
            lock.release()
    seconds = time.perf_counter() - start
    assert out.returncode == 0, out.stderr[-3000:]
    assert "fastai imported: False" in out.stderr
    print(out.stdout, f"pipeline.runs took {seconds:.1f} s in all (a new interpreter)", sep="\n")
    rows = {r["run"]: r for r in csv.DictReader(io.StringIO(out.stdout))}
    assert list(rows) == [  # sorted by run (runs.sort's default)
        "tiny_crop40_32",
        "tiny_next",
        "tiny_pad32_32",
        "tiny_pad32_32_aux-group",
        "tiny_squish32_32",
        "tiny_squish32_32_fold0",
    ]
    header = "run,model,variant,recipe,split,fold,valid_error,valid_error_tta,valid_error_group,epochs,minutes,"
    assert out.stdout.startswith(header + "images_per_s,host,device,date,state\n")
    squish = predictions.load(preds_dir / "tiny_squish32_32.pt")
    first = rows["tiny_squish32_32"]
    assert {k: first[k] for k in ("model", "variant", "recipe", "split", "fold", "epochs", "state")} == {
        "model": "tiny",
        "variant": "squish32_32",
        "recipe": "-",
        "split": "holdout",
        "fold": "",
        "epochs": "2",
        "state": "ok",
    }
    assert float(first["valid_error_tta"]) == pytest.approx(squish.metrics["valid_error_tta"])
    assert float(first["minutes"]) > 0 and float(first["images_per_s"]) > 0
    assert first["host"] == squish.environment["host"] and first["device"] == squish.environment["device_name"]
    assert (rows["tiny_squish32_32_fold0"]["split"], rows["tiny_squish32_32_fold0"]["fold"]) == ("kfold", "0")
    aux = rows["tiny_pad32_32_aux-group"]
    assert (aux["variant"], aux["recipe"], aux["valid_error_group"], aux["state"]) == (
        "pad32_32",
        "aux-group",
        "0.25",
        "ok",
    )
    assert rows["tiny_pad32_32"]["valid_error_group"] == ""
    assert rows["tiny_crop40_32"]["state"] == "busy" and rows["tiny_next"]["state"].startswith("busy (first training")

    # the same files against a copy of the data with one image replaced: every run is stale; sorted, filtered
    changed = shutil.copytree(demo_root, tmp_path / "changed")
    images = sorted((changed / "train_images").glob("*/*"))
    same_size_swap(images[0], images[1])
    capsys.readouterr()
    rows = show_runs(compose("runs", runs_cfg(preds_dir, changed, tmp_path, "runs.sort=-valid_error_tta")))
    assert {r["state"] for r in rows} == {"stale"}
    assert [r["valid_error_tta"] for r in rows] == sorted((r["valid_error_tta"] for r in rows), reverse=True)
    table = capsys.readouterr().out
    print(table)
    header = "run|model|variant|recipe|split|valid err|TTA err|aux err|epochs|min|img/s|trained on|date|state"
    assert re.split(r"  +", table.splitlines()[0].strip()) == header.split("|")
    assert "tiny_pad32_32_aux-group" in table and "group 0.2500" in table and "holdout" in table
    assert f"state: each file's data fingerprint against the data at {changed} (data.root) now" in table

    rows = show_runs(compose("runs", runs_cfg(preds_dir, demo_root, tmp_path, "runs.filter=*_fold*")))
    assert [(r["run"], r["state"]) for r in rows] == [("tiny_squish32_32_fold0", "ok")]
    assert show_runs(compose("runs", runs_cfg(tmp_path / "none", demo_root, tmp_path))) == []
    assert f"no runs in {tmp_path / 'none'} (paths.preds) match runs.filter='*'" in capsys.readouterr().out
