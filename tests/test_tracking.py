"""Seeing runs train: the per-epoch history (in the prediction file, whole after a resume), the logger group
(csv, mlflow into a real SQLite store read back with MlflowClient, tensorboard read back with TensorBoard's
event reader, an MLflow server that is down), and the plain log of a training whose output is no terminal.
Real tiny runs: 32 px, fine_tune's frozen epoch and one or two more. Two Ray jobs logging to one store at
once, and their rerun, skipped, logging nothing new: tests/test_launchers.py (the tta sweep)."""

import io
import logging
import socket
import subprocess
import sys
import time

import pytest
from PIL import Image

from pipeline import predictions
from pipeline.curves import curves_png, history_csv
from pipeline.training.jobs import RunsStopped, train_model
from pipeline.training.loggers.mlflow_logger import flatten
from tests import warm_python
from tests.conftest import DEVICE, REPO, compose, tiny_run_overrides

RUN = "tiny_squish32_32"


def history(steps: int = 3, aux: bool = True) -> list[dict]:
    return [
        {
            "fit": int(s > 0),
            "epoch": max(s - 1, 0),
            "step": s,
            "frozen": s == 0,
            "train_loss": 2.0 - s / 2,
            "valid_loss": 1.8 - s / 3,
            "error_rate": 0.6 - s / 10,
            **({"error_rate_group": 0.3 - s / 20} if aux else {}),
            "lr": 1e-3,
            "seconds": 1.5,
        }
        for s in range(steps)
    ]


def test_curves_are_drawn_from_histories_and_written_as_csv():
    png = curves_png({"fold0": history(), "fold1": history(2, aux=False)}, "tiny")
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG" and image.size == (720, 240)
    assert curves_png({"a": []}, "tiny") is None  # a file from before histories were kept: nothing to draw
    lines = history_csv(history(2)).splitlines()
    assert lines[0] == "fit,epoch,step,frozen,train_loss,valid_loss,error_rate,error_rate_group,lr,seconds"
    assert lines[1].startswith("0,0,0,True,2.0,1.8,0.6,0.3,") and len(lines) == 3


def test_the_config_is_flattened_into_mlflow_params():
    config = {"model": {"name": "m", "variants": [{"size": [224, 224]}]}, "train": {"lr": None, "cbs": [], "w": {}}}
    params = flatten(config)
    assert params == {
        "model.name": "m",
        "model.variants.0.size.0": "224",
        "model.variants.0.size.1": "224",
        "train.lr": "None",
        "train.cbs": "[]",
        "train.w": "{}",
    }


@pytest.mark.slow  # MLflow's import and a new SQLite store: 3-4 s
def test_a_run_resumed_by_another_job_continues_its_mlflow_run_each_epoch_once(tmp_path):
    from mlflow import MlflowClient

    from pipeline.training.loggers.mlflow_logger import MlflowLogger
    from tests.factories import make_preds, make_run

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = compose("config", ["+model=effnet_lite0", "data=demo", "logger=mlflow", f"logger.tracking_uri={store}"])
    run, records = make_run(name="m_crop640x480_224"), history(4)
    first = MlflowLogger(cfg)  # the job stopped by its time budget after two epochs: no finished event
    first.started(run=run, run_hash="h1")
    for n in (1, 2):
        first.epoch_ended(run=run, history=records[:n])
    second = MlflowLogger(cfg)  # the job that resumes it from the checkpoint: the history comes whole
    second.started(run=run, run_hash="h1")
    second.epoch_ended(run=run, history=records[:3])
    second.finished(run=run, preds=make_preds(run.name, history=records, timings={"fit_s": 6.0, "tta_s": 3.0}))

    client = MlflowClient(tracking_uri=store)
    (logged,) = client.search_runs([client.get_experiment_by_name("demo").experiment_id])
    assert logged.info.status == "FINISHED" and logged.data.tags["variant"] == "crop640x480_224"
    assert [m.step for m in client.get_metric_history(logged.info.run_id, "train_loss")] == [0, 1, 2, 3]
    assert logged.data.metrics["minutes"] == pytest.approx((4 * 1.5 + 3.0) / 60)  # the history's seconds, TTA's
    assert not (first.down or second.down)


def epoch_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if f"run {RUN}: epoch " in line]


@pytest.mark.slow
def test_a_cli_run_logs_to_mlflow_and_its_log_has_a_line_per_epoch(demo_root, weights_dir, tmp_path):
    from mlflow import MlflowClient

    outputs, store = tmp_path / "outputs", f"sqlite:///{tmp_path / 'mlflow.db'}"
    command = [
        sys.executable,
        "-m",
        "pipeline.train",
        *tiny_run_overrides(demo_root, weights_dir, tmp_path / "preds"),
        f"paths.outputs={outputs}",
        "logger=mlflow",
        f"logger.tracking_uri={store}",
    ]
    with open(tmp_path / "stdout.log", "w") as stdout:  # not a terminal: as under SLURM or nohup
        out = warm_python.run(command, cwd=REPO, stdout=stdout, stderr=subprocess.PIPE, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    preds = predictions.load(tmp_path / "preds" / f"{RUN}.pt")
    assert [(r["fit"], r["epoch"], r["step"], r["frozen"]) for r in preds.history] == [
        (0, 0, 0, True),
        (1, 0, 1, False),
    ]

    # the log: one plain line per epoch, on stdout and in the job's log file, no progress-bar redraws
    (job,) = (outputs / "runs" / "train").iterdir()
    printed, logged = (tmp_path / "stdout.log").read_text(), (job / "train.log").read_text()
    print(printed)
    for text in (printed, logged):
        assert "\r" not in text and len(epoch_lines(text)) == 2
        assert "█" not in text and "Epoch 1/" not in text  # fastprogress's bars, redrawn in one endless line
    assert "epoch 1/2 (fit 0, frozen) train_loss" in epoch_lines(logged)[0]
    assert "epoch 2/2 (fit 1) train_loss" in epoch_lines(logged)[1]
    # logger=mlflow writes csv's files too: beside the job's log
    assert (job / f"{RUN}.history.csv").read_text() == history_csv(preds.history)
    assert Image.open(job / f"{RUN}.curves.png").format == "PNG"

    client = MlflowClient(tracking_uri=store)
    experiment = client.get_experiment_by_name("paddy")  # data.name: the runs' data config
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == RUN and run.info.status == "FINISHED"
    params, tags = run.data.params, run.data.tags
    assert params["model.name"] == "tiny" and params["run.epochs"] == "1" and params["logger.name"] == "mlflow"
    assert params["model.variants.0.item_size.0"] == "32" and params["train.device"] == DEVICE
    assert {k: tags[k] for k in ("model", "variant", "recipe", "run_hash", "launcher", "device")} == {
        "model": "tiny",
        "variant": "squish32_32",
        "recipe": "reference",
        "run_hash": preds.run_hash,
        "launcher": "local",
        "device": DEVICE,
    }
    assert tags["host"] == preds.environment["host"] and tags["device_name"] == preds.environment["device_name"]
    for key, field in [("train_loss", "train_loss"), ("error_rate", "error_rate"), ("epoch_seconds", "seconds")]:
        points = client.get_metric_history(run.info.run_id, key)
        assert [(m.step, m.value) for m in points] == [(r["step"], pytest.approx(r[field])) for r in preds.history]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "lr")] == [0, 1]
    assert run.data.metrics["valid_error_tta"] == pytest.approx(preds.metrics["valid_error_tta"])
    assert run.data.metrics["minutes"] > 0
    artefacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert artefacts == {f"{RUN}.curves.png", f"{RUN}.history.csv", "config.yaml"}


@pytest.mark.slow
def test_a_resumed_run_has_its_whole_history_in_its_file_its_csv_and_tensorboard(demo_root, weights_dir, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    board = tmp_path / "tensorboard"
    overrides = [
        *tiny_run_overrides(demo_root, weights_dir, tmp_path / "preds"),
        f"paths.outputs={tmp_path / 'outputs'}",
        "train.epochs=2",
        "logger=tensorboard",
        f"logger.log_dir={board}",
    ]
    # the first attempt stops after fine_tune's frozen epoch and the first unfrozen one (both checkpointed)
    with pytest.raises(RunsStopped):
        train_model(compose("config", [*overrides, "train.time_budget_h=1.0e-6", f"logger.dir={tmp_path / 'job1'}"]))
    assert len((tmp_path / "job1" / f"{RUN}.history.csv").read_text().splitlines()) == 1 + 2
    (result,) = train_model(compose("config", [*overrides, f"logger.dir={tmp_path / 'job2'}"]))  # resumes
    preds = predictions.load(result.path)
    assert [(r["fit"], r["epoch"], r["step"], r["frozen"]) for r in preds.history] == [
        (0, 0, 0, True),
        (1, 0, 1, False),
        (1, 1, 2, False),
    ]
    assert all(r["seconds"] > 0 and r["lr"] > 0 and 0 <= r["error_rate"] <= 1 for r in preds.history)
    assert preds.history[-1]["error_rate"] == pytest.approx(preds.metrics["valid_error"])
    # the second job's files hold the whole history: the first job's epochs came with the checkpoint
    assert (tmp_path / "job2" / f"{RUN}.history.csv").read_text() == history_csv(preds.history)

    (folder,) = board.iterdir()
    assert folder.name == f"{RUN}-{preds.run_hash}"  # both attempts wrote into the run's folder
    events = EventAccumulator(str(folder))
    events.Reload()
    for key in ("train_loss", "valid_loss", "error_rate", "lr", "seconds"):
        scalars = events.Scalars(key)
        assert [s.step for s in scalars] == [0, 1, 2]  # each epoch once
        assert [s.value for s in scalars] == [pytest.approx(r[key]) for r in preds.history]
    assert events.Scalars("final/valid_error_tta")[0].value == pytest.approx(preds.metrics["valid_error_tta"])


@pytest.mark.slow
def test_an_mlflow_server_that_is_down_is_one_warning_and_the_run_finishes(demo_root, weights_dir, tmp_path, caplog):
    with socket.socket() as s:  # a port nothing listens on: connections are refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    overrides = [
        *tiny_run_overrides(demo_root, weights_dir, tmp_path / "preds"),
        "logger=mlflow",
        f"logger.tracking_uri=http://127.0.0.1:{port}",
        f"logger.dir={tmp_path / 'job'}",
    ]
    start = time.perf_counter()
    with caplog.at_level(logging.WARNING):
        (result,) = train_model(compose("config", overrides))
    seconds = time.perf_counter() - start
    assert result.status == "trained" and len(predictions.load(result.path).history) == 2
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    (warning,) = [w for w in warnings if "logger=mlflow" in w]
    assert warning.startswith(f"logger=mlflow (http://127.0.0.1:{port}) failed while starting run {RUN} (")
    assert "each run's history stays in its prediction file" in warning
    assert (tmp_path / "job" / f"{RUN}.curves.png").is_file()  # the run's own files hold everything
    # MLflow's own retries (7, with backoff) would wait minutes on the refused connection
    assert seconds < 60, f"the run took {seconds:.0f} s"
    print(f"a server that is down: the whole tiny run took {seconds:.1f} s")
