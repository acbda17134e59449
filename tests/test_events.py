"""A run's events as listeners see them in real tiny runs (1 epoch, 32 px), and that a listener never fails a run."""

import json
import logging
import math
from pathlib import Path

import pytest

from pipeline import predictions
from pipeline.errors import PipelineError
from pipeline.training.events import EVENTS, RunEvents, job_events, subscribe
from pipeline.training.jobs import RunsFailed, train_model
from tests.conftest import compose, tiny_run_overrides


class RecordEvents:
    """A train.hooks listener: one JSON line per event in `path`, with the payload's plain parts."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def _write(self, event: str, run, **fields) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps({"event": event, "run": run.name, **fields}) + "\n")

    def started(self, run, run_hash, path, **_) -> None:
        self._write("started", run, run_hash=run_hash, path=str(path))

    def epoch_ended(self, run, fit, epoch, train_loss, valid_loss, metrics, seconds, **_) -> None:
        losses = {"train_loss": train_loss, "valid_loss": valid_loss, "metrics": metrics, "seconds": seconds}
        self._write("epoch_ended", run, fit=fit, epoch=epoch, **losses)

    def finished(self, run, preds, path, **_) -> None:
        self._write("finished", run, path=str(path), preds_run=preds.run)

    def skipped(self, run, preds, path, **_) -> None:
        self._write("skipped", run, path=str(path), preds_run=preds.run)

    def failed(self, run, error, **_) -> None:
        self._write("failed", run, error=type(error).__name__)


def hooked(overrides: list[str], log: Path) -> list[str]:
    return [*overrides, f"train.hooks=[{{_target_: tests.test_events.RecordEvents, path: '{log}'}}]"]


def read(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


@pytest.mark.slow
def test_a_run_fires_started_its_epochs_and_finished_then_a_rerun_is_skipped(demo_root, weights_dir, tmp_path):
    log = tmp_path / "events.jsonl"
    overrides = hooked(tiny_run_overrides(demo_root, weights_dir, tmp_path / "preds"), log)
    (result,) = train_model(compose("config", overrides))
    seen = read(log)
    # fine_tune: its frozen epoch is fit 0, its one unfrozen epoch fit 1
    assert [e["event"] for e in seen] == ["started", "epoch_ended", "epoch_ended", "finished"]
    started, *epochs, finished = seen
    preds, path, run = predictions.load(result.path), str(result.path), "tiny_squish32_32"
    assert started == {"event": "started", "run": run, "run_hash": preds.run_hash, "path": path}
    assert [(e["fit"], e["epoch"]) for e in epochs] == [(0, 0), (1, 0)]
    for e in epochs:
        assert math.isfinite(e["train_loss"]) and math.isfinite(e["valid_loss"]) and e["seconds"] > 0
        assert list(e["metrics"]) == ["error_rate"] and 0 <= e["metrics"]["error_rate"] <= 1
    assert epochs[-1]["metrics"]["error_rate"] == pytest.approx(preds.metrics["valid_error"])
    assert finished == {"event": "finished", "run": run, "path": path, "preds_run": run}

    log.unlink()
    (again,) = train_model(compose("config", overrides))
    assert again.status == "skipped"
    assert read(log) == [{"event": "skipped", "run": run, "path": path, "preds_run": run}]


@pytest.mark.slow
def test_a_diverging_run_fires_failed(demo_root, weights_dir, tmp_path):
    log = tmp_path / "events.jsonl"
    overrides = [
        *tiny_run_overrides(demo_root, weights_dir, tmp_path / "preds"),
        "model.variants=[{resize: squish, item_size: [32], size: [32], name: exploding, lr: 1.0e+12}]",
    ]
    with pytest.raises(RunsFailed):
        train_model(compose("config", hooked(overrides, log)))
    seen = read(log)
    assert seen[0]["event"] == "started" and {e["event"] for e in seen[1:-1]} <= {"epoch_ended"}
    assert seen[-1] == {"event": "failed", "run": "tiny_exploding", "error": "NonFiniteLoss"}


@pytest.mark.slow
def test_a_run_whose_weights_are_missing_or_broken_fires_failed(demo_root, weights_dir, tmp_path):
    overrides = tiny_run_overrides(demo_root, weights_dir, tmp_path / "preds")
    missing, broken = tmp_path / "missing.safetensors", tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x00" * 1000)
    for weights, log in ((missing, tmp_path / "missing.jsonl"), (broken, tmp_path / "broken.jsonl")):
        with pytest.raises(RunsFailed, match="1 of 1 runs failed: tiny_squish32_32"):
            train_model(compose("config", hooked([*overrides, f"model.weights={weights}"], log)))
    # a missing or unreadable file fails the run at the job's start (its safetensors header is read
    # there), before it starts
    for log in ("missing.jsonl", "broken.jsonl"):
        assert read(tmp_path / log) == [{"event": "failed", "run": "tiny_squish32_32", "error": "PipelineError"}]


@pytest.mark.slow
def test_a_raising_listener_never_fails_the_run(demo_root, weights_dir, tmp_path, caplog):
    def boom(**_) -> None:
        raise RuntimeError("the tracker is down")

    seen = []
    unsubscribe = [subscribe(event, boom) for event in EVENTS]
    unsubscribe += [subscribe(event, lambda event=event, **_: seen.append(event)) for event in EVENTS]
    try:
        with caplog.at_level(logging.WARNING):
            (result,) = train_model(compose("config", tiny_run_overrides(demo_root, weights_dir, tmp_path / "preds")))
    finally:
        for undo in unsubscribe:
            undo()
    assert result.status == "trained" and result.path.is_file()
    assert seen == ["started", "epoch_ended", "epoch_ended", "finished"]  # listeners after it still hear
    assert "run event started: listener test_a_raising_listener_never_fails_the_run.<locals>.boom raised" in caplog.text
    assert "RuntimeError: the tracker is down; the run goes on" in caplog.text


def test_listeners_are_checked_when_they_subscribe():
    events = RunEvents()
    with pytest.raises(PipelineError, match="no run event 'epoch_end'"):
        events.subscribe("epoch_end", print)
    with pytest.raises(PipelineError, match="train.hooks: object has no method named after a run event"):
        events.attach(object())
    with pytest.raises(PipelineError, match="train.hooks: cannot make tests.no_such_module.Hook"):
        job_events([{"_target_": "tests.no_such_module.Hook"}])
    heard = []
    unsubscribe = events.subscribe("failed", lambda **payload: heard.append(payload))
    events.emit("failed", error="first")
    unsubscribe()
    events.emit("failed", error="second")
    assert heard == [{"error": "first"}]
