"""Long jobs survive: skip what is done, isolate failures, retry out-of-memory, resume after a kill."""

import logging
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from pipeline import predictions
from pipeline.training.jobs import RunsFailed, RunsStopped, train_model
from tests import warm_python
from tests.conftest import DEVICE, REPO, THREE_VARIANTS, compose, same_size_swap, tiny_run_overrides

pytestmark = pytest.mark.slow


def files(folder):
    """A folder's files, less the runs' lock files (.<run>.lock, kept: see training/jobs.run_lock)."""
    return sorted(p.name for p in folder.iterdir() if p.suffix != ".lock")


def test_a_finished_run_is_skipped_until_its_config_changes(demo_root, weights_dir, demo_runs, tmp_path, caplog):
    preds = demo_runs.copy_to(tmp_path)  # the session's demo runs: their first is trained with this config
    overrides = [*tiny_run_overrides(demo_root, weights_dir, preds), THREE_VARIANTS, "train.variant=0"]
    first = demo_runs.results[0]
    path = preds / first.path.name
    stamp = path.stat().st_mtime_ns
    with caplog.at_level(logging.INFO):
        (again,) = train_model(compose("config", overrides))
    assert again.status == "skipped" and again.path == path and path.stat().st_mtime_ns == stamp
    assert "already trained with this config" in caplog.text
    assert again.valid_error_tta == first.valid_error_tta

    (changed,) = train_model(compose("config", [*overrides, "data.seed=4"]))  # in the run hash, not the name
    assert changed.status == "trained" and path.stat().st_mtime_ns != stamp
    stamp = path.stat().st_mtime_ns
    (forced,) = train_model(compose("config", [*overrides, "data.seed=4", "train.force=true"]))
    assert forced.status == "trained" and path.stat().st_mtime_ns != stamp


def test_a_finished_run_is_retrained_when_its_data_changes(demo_root, weights_dir, demo_runs, tmp_path, caplog):
    data = shutil.copytree(demo_root, tmp_path / "demo")  # the fixture is shared: change a copy
    preds = demo_runs.copy_to(tmp_path)  # trained on demo_root: the same files, elsewhere

    def train(root):
        return train_model(
            compose("config", [*tiny_run_overrides(root, weights_dir, preds), THREE_VARIANTS, "train.variant=0"])
        )

    (first,) = train(data)
    assert first.status == "skipped"  # the same files elsewhere: still done
    fingerprint = predictions.load(first.path).environment["data_fingerprint"]
    moved = shutil.move(data, tmp_path / "moved")
    (same,) = train(moved)
    assert same.status == "skipped"

    label, other = sorted((moved / "train_images").iterdir())[:2]
    image = sorted(label.iterdir())[0]
    image.rename(other / image.name)  # relabelled
    with caplog.at_level(logging.INFO):
        (again,) = train(moved)
    assert again.status == "trained" and "was trained on other data" in caplog.text
    assert predictions.load(again.path).environment["data_fingerprint"] != fingerprint
    (done,) = train(moved)
    assert done.status == "skipped"


def test_a_finished_run_is_retrained_when_an_image_is_replaced_by_one_of_the_same_size(
    paddy_root, weights_dir, tmp_path
):
    data = shutil.copytree(paddy_root, tmp_path / "paddy")
    overrides = tiny_run_overrides(data, weights_dir, tmp_path / "preds")
    (first,) = train_model(compose("config", overrides))
    a, b = sorted(data.glob("train_images/*/*.jpg"))[:2]
    same_size_swap(a, b)  # size and mtime as before, other bytes
    (again,) = train_model(compose("config", overrides))
    assert (first.status, again.status) == ("trained", "trained")
    (done,) = train_model(compose("config", overrides))
    assert done.status == "skipped"


def test_out_of_memory_retries_with_doubled_accum(demo_root, weights_dir, tmp_path, caplog):
    flag = tmp_path / "oom-fired"
    cfg = compose(
        "config",
        [
            *tiny_run_overrides(demo_root, weights_dir, tmp_path / "preds"),
            f"train.callbacks=[{{_target_: tests.callbacks.OutOfMemoryOnce, flag: '{flag}'}}]",
        ],
    )
    with caplog.at_level(logging.WARNING):
        (result,) = train_model(cfg)
    assert flag.exists() and result.status == "trained"
    assert "out of memory at accum 2 (micro-batch 8); retrying at accum 4 (micro-batch 4)" in caplog.text
    spec = predictions.load(result.path).run_spec
    assert (spec["accum"], spec["batch_size"]) == (4, 16)  # the effective batch is unchanged
    assert result.accum == 4


def test_a_diverging_run_fails_alone(demo_root, weights_dir, tmp_path, caplog):
    cfg = compose(
        "config",
        [
            *tiny_run_overrides(demo_root, weights_dir, tmp_path / "preds"),
            # on the CPU (fp32), where this lr makes the loss NaN; on CUDA, fp16's gradient scaler skips the
            # non-finite steps (seen on an H200: the run ends with a finite loss, its error at chance)
            "train.device=cpu",
            "model.variants=[{resize: squish, item_size: [32], size: [32], name: exploding, lr: 1.0e+12},"
            " {resize: squish, item_size: [32], size: [32], name: fine}]",
        ],
    )
    with caplog.at_level(logging.INFO), pytest.raises(RunsFailed) as err:
        train_model(cfg)
    assert str(err.value).startswith("1 of 2 runs failed: tiny_exploding (NonFiniteLoss: the loss became")
    assert files(tmp_path / "preds") == ["tiny_fine.pt"]
    assert "tiny_exploding  failed" in caplog.text and "tiny_fine       trained" in caplog.text


def test_prediction_files_record_how_they_were_made(demo_root, weights_dir, tmp_path):
    overrides = [*tiny_run_overrides(demo_root, weights_dir, tmp_path), "data.split=random", "data.seed=null"]
    (result,) = train_model(compose("config", overrides))
    preds = predictions.load(result.path)
    env = preds.environment
    assert torch.__version__.startswith(env["packages"]["torch"])
    assert env["packages"]["fastai"] and env["packages"]["timm"] and env["python"]
    assert len(env["git_commit"]) == 40 and isinstance(env["git_dirty"], bool)
    assert env["device"] == DEVICE and env["device_name"]
    # no seed configured, as in the reference recipe: that is recorded, and so is the seed drawn for the split
    assert env["split_seed_configured"] is False
    assert preds.split["strategy"] == "random" and isinstance(preds.split["seed"], int)


def _train_cli(*overrides: str) -> list[str]:
    return [sys.executable, "-m", "pipeline.train", *overrides]


def test_kill_during_the_second_run_then_resume(demo_root, weights_dir, tmp_path):
    preds, ckpts = tmp_path / "preds", tmp_path / "outputs" / "checkpoints"
    command = _train_cli(
        *tiny_run_overrides(demo_root, weights_dir, preds),
        f"paths.outputs={tmp_path / 'outputs'}",
        "train.epochs=2",
        "model.variants=[{resize: squish, item_size: [32], size: [32]}, {resize: pad, item_size: [32], size: [32]}]",
        # slow batches in the second run's last epoch only: the stretch between its two checkpoints
        "train.callbacks=[{_target_: tests.callbacks.SlowBatches, seconds: 0.5,"
        f" after: '{ckpts}/tiny_pad32_32-*/epoch1.pth'}}]",
    )
    log = (tmp_path / "first.log").open("w")
    job = warm_python.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 400
    # wait until the first run is saved and the second has checkpointed an epoch
    while not ((preds / "tiny_squish32_32.pt").exists() and list(ckpts.glob("tiny_pad32_32-*/epoch1.pth"))):
        assert job.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "the job never reached the second run's first checkpoint"
        time.sleep(0.2)
    job.send_signal(signal.SIGTERM)
    assert job.wait(timeout=120) == 130
    first_log = (tmp_path / "first.log").read_text()
    assert "interrupted: finished files are kept" in first_log and "Traceback" not in first_log
    assert files(preds) == ["tiny_squish32_32.pt"]  # and no temporary files
    (folder,) = ckpts.iterdir()
    # the epoch and its history, and no run.json: the split seed is configured
    assert sorted(p.name for p in folder.iterdir()) == ["epoch1.callbacks.pth", "epoch1.pth"]

    again = warm_python.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "run tiny_squish32_32: already trained with this config" in again.stdout
    assert "run tiny_pad32_32: resuming from" in again.stdout and "(1 of 2 epochs done)" in again.stdout
    assert files(preds) == ["tiny_pad32_32.pt", "tiny_squish32_32.pt"]
    assert not list(ckpts.iterdir())  # the finished run's checkpoint is cleaned up


def test_a_broken_weights_file_fails_its_job_while_the_sweep_goes_on(demo_root, weights_dir, tmp_path):
    # two models, one weights file each (a sweep over model.weights alone would write one run's file twice)
    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "broken.safetensors").write_bytes(b"\x00" * 1000)
    good = shutil.copy(weights_dir / "tf_efficientnet_lite0.safetensors", weights / "good.safetensors")
    overrides = [
        o
        for o in tiny_run_overrides(demo_root, weights_dir, tmp_path / "preds")
        if not o.startswith(("model.weights=", "model.name="))
    ]
    out = warm_python.run(
        _train_cli(
            "-m",
            *overrides,
            "model.name=broken,good",
            f"model.weights={weights}/${{model.name}}.safetensors",
            f"paths.outputs={tmp_path / 'outputs'}",
        ),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 2, out.stderr[-2000:]
    assert "error: 1 job(s) failed:" in out.stderr and "broken.safetensors" in out.stderr
    assert "Traceback" not in out.stderr
    assert files(tmp_path / "preds") == ["good_squish32_32.pt"]
    assert predictions.load(tmp_path / "preds" / "good_squish32_32.pt").config["model"]["weights"] == str(good)


def test_a_time_budget_stops_at_an_epoch_boundary_and_the_next_attempt_continues(
    demo_root, weights_dir, tmp_path, caplog
):
    preds, ckpts = tmp_path / "preds", tmp_path / "outputs" / "checkpoints"
    overrides = [
        *tiny_run_overrides(demo_root, weights_dir, preds),
        f"paths.outputs={tmp_path / 'outputs'}",
        "train.epochs=2",
        "train.time_budget_h=1.0e-6",  # spent by the first epoch
        "model.variants=[{resize: squish, item_size: [32], size: [32]}, {resize: pad, item_size: [32], size: [32]}]",
    ]
    with caplog.at_level(logging.INFO), pytest.raises(RunsStopped) as stopped:
        train_model(compose("config", overrides))
    assert stopped.value.exit_code == 3
    assert "2 of 2 runs stopped by train.time_budget_h=1e-06 (tiny_squish32_32, tiny_pad32_32)" in str(stopped.value)
    assert "run tiny_pad32_32: not started" in caplog.text
    assert "tiny_squish32_32  stopped: time budget" in caplog.text
    assert not preds.exists() or not files(preds)  # no prediction file for a stopped run
    (folder,) = ckpts.iterdir()  # the frozen epoch and one of the two unfrozen ones: checkpointed, then stopped
    assert folder.name.startswith("tiny_squish32_32-")
    assert sorted(p.name for p in folder.iterdir()) == ["epoch1.callbacks.pth", "epoch1.pth"]  # + the history

    caplog.clear()
    with caplog.at_level(logging.INFO), pytest.raises(RunsStopped, match="1 of 2 runs stopped"):
        train_model(compose("config", overrides))
    assert "run tiny_squish32_32: resuming from" in caplog.text and "(1 of 2 epochs done)" in caplog.text
    assert files(preds) == ["tiny_squish32_32.pt"]  # its last epoch is never cut
    assert "run tiny_pad32_32: not started" in caplog.text
