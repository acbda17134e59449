"""logger=mlflow: each run an MLflow run, in logger.experiment of the store at logger.tracking_uri.

An MLflow run holds the job's resolved config flattened (and the run's own settings, run.*) as params; the
history's figures as metrics with the epoch's step (train_loss, valid_loss, error_rate[_<target>], lr,
epoch_seconds); the final errors (valid_error, valid_error_tta, valid_error_<target>) and minutes; the
curves PNG, the history CSV and the resolved config as artefacts; and tags: model, variant, recipe,
run_hash, fold, launcher, host, device (cpu or cuda), device_name, gpu (its name, on CUDA),
cuda_visible_devices, job_id, git_commit.

A run resumed from its checkpoint continues its unfinished MLflow run (same run_hash tag), logging the
epochs that run lacks, so that its metrics are whole and each step is logged once. The default store is a
SQLite file (MLflow 3 refuses a folder store): every call to it is made under a file lock beside it, so
jobs running at once (a Ray pool, SLURM jobs on a shared disk) take turns. A tracking server (http://...)
that cannot be reached fails fast (logger.http_retries, logger.http_timeout_s) and once (loggers.Guarded).
"""

from __future__ import annotations

import os
import tempfile
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.config import to_container
from pipeline.curves import History, curves_png, history_csv, run_minutes
from pipeline.errors import one_line
from pipeline.training.loggers.guarded import Guarded
from pipeline.training.recipe import recipe_tag
from pipeline.training.specs import tta_tag

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from pipeline.predictions import Predictions
    from pipeline.training.specs import RunSpec

SQLITE = "sqlite:///"
NOT_METRICS = ("fit", "epoch", "step", "frozen")
PARAM_LENGTH = 6000  # MLflow's longest param value
BATCH = 100  # MLflow's most params (or tags) in one log_batch


def flatten(value: Any, prefix: str = "") -> dict[str, str]:
    """Nested dicts and lists as dotted keys (model.variants.0.size.0) with string values."""
    if isinstance(value, dict) and value:
        items = value.items()
    elif isinstance(value, list | tuple) and value:
        items = enumerate(value)
    else:
        return {prefix: str(value)[:PARAM_LENGTH]}
    out: dict[str, str] = {}
    for key, item in items:
        out |= flatten(item, f"{prefix}.{key}" if prefix else str(key))
    return out


def variant(run: RunSpec, tta: Any) -> str:
    """The variant's name as the run name holds it: <model>_<variant><recipe tag><tta tag>[_fold<k>]."""
    name = run.member.removeprefix(f"{run.model}_").removesuffix(tta_tag(tta))
    return name.removesuffix(recipe_tag(run.recipe))


class MlflowLogger(Guarded):
    def __init__(self, cfg: Any) -> None:
        opts = cfg.logger
        self.uri, self.experiment = str(opts.tracking_uri), str(opts.experiment)
        self.what = f"logger=mlflow ({self.uri})"
        self.cfg, self.config = cfg, to_container(cfg)
        self.artifacts = opts.artifact_location
        self.lock: AbstractContextManager[Any] = nullcontext()
        if self.uri.startswith(SQLITE):
            from filelock import FileLock

            db = Path(self.uri.removeprefix(SQLITE))
            db.parent.mkdir(parents=True, exist_ok=True)  # SQLite makes the file, not its folder
            self.lock = FileLock(f"{db}.lock")
            self.artifacts = self.artifacts or str((db.parent / "mlartifacts").resolve())
        # MLflow's defaults retry an unreachable server for minutes: a run must not wait on its tracker
        os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = str(opts.http_retries)
        os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(opts.http_timeout_s)
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
        self.client: MlflowClient | None = None
        self.experiment_id: str | None = None
        self.runs: dict[str, tuple[str, set[int]]] = {}  # run name -> (MLflow run id, steps logged)
        self.environment: dict[str, Any] | None = None

    def call(self, doing: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """fn(*args, **kwargs) with the client, under the store's lock; None once the tracker failed."""

        def locked() -> Any:
            with self.lock:
                return fn(self.connect(), *args, **kwargs)

        return self.guarded(doing, locked)

    def connect(self) -> MlflowClient:
        """The client and the experiment, made at the first call (the store's tables with them, under the lock)."""
        if self.client is None:
            from mlflow import MlflowClient

            client = MlflowClient(tracking_uri=self.uri)
            found = client.get_experiment_by_name(self.experiment)
            self.experiment_id = (
                found.experiment_id if found else client.create_experiment(self.experiment, self.artifacts)
            )
            self.client = client
        return self.client

    def started(self, run: RunSpec, run_hash: str, **_: Any) -> None:
        opened = self.call(f"starting run {run.name}", self._open, run, run_hash)
        if opened:
            self.runs[run.name] = opened

    def _open(self, client: MlflowClient, run: RunSpec, run_hash: str) -> tuple[str, set[int]]:
        """The run's unfinished MLflow run (a resumed run continues it), else a new one with its params."""
        from mlflow.entities import Param

        found = client.search_runs([self.experiment_id], f"tags.run_hash = '{run_hash}'", max_results=50)
        for earlier in found:
            if earlier.info.status != "FINISHED":
                client.update_run(earlier.info.run_id, status="RUNNING")
                logged = {m.step for m in client.get_metric_history(earlier.info.run_id, "train_loss")}
                return earlier.info.run_id, logged
        run_id = client.create_run(self.experiment_id, run_name=run.name, tags=self._tags(run, run_hash)).info.run_id
        params = [Param(k, v) for k, v in self._params(run).items()]
        for start in range(0, len(params), BATCH):
            client.log_batch(run_id, params=params[start : start + BATCH])
        return run_id, set()

    def _params(self, run: RunSpec) -> dict[str, str]:
        return flatten(self.config) | flatten(asdict(run), "run")

    def _tags(self, run: RunSpec, run_hash: str) -> dict[str, str]:
        from pipeline.training.learner import pick_device
        from pipeline.training.provenance import environment

        if self.environment is None:  # once per job: git and the device's name
            self.environment = environment(pick_device(self.cfg.train.device))
        env = self.environment
        tags = {
            "model": run.model,
            "variant": variant(run, self.cfg.tta),
            "recipe": recipe_tag(run.recipe).lstrip("_") or "reference",
            "run_hash": run_hash,
            "fold": "" if run.fold is None else str(run.fold),
            **{k: str(env.get(k) or "") for k in ("launcher", "host", "device", "device_name", "job_id")},
            "gpu": str(env.get("device_name") or "") if env.get("device") == "cuda" else "",
            "cuda_visible_devices": str(env.get("cuda_visible_devices") or ""),
            "git_commit": str(env.get("git_commit") or ""),
        }
        return {k: v for k, v in tags.items() if v}

    def epoch_ended(self, run: RunSpec, history: History, **_: Any) -> None:
        if run.name in self.runs:
            self.call(f"logging an epoch of {run.name}", self._log_epochs, run.name, history)

    def _log_epochs(self, client: MlflowClient, name: str, history: History) -> None:
        """The history's epochs the MLflow run lacks (all of them, for a run resumed in another job)."""
        from mlflow.entities import Metric

        run_id, logged = self.runs[name]
        now = int(time.time() * 1000)
        metrics = [
            Metric("epoch_seconds" if k == "seconds" else k, float(v), now, int(record["step"]))
            for record in history
            if record["step"] not in logged
            for k, v in record.items()
            if k not in NOT_METRICS and v is not None
        ]
        if metrics:
            client.log_batch(run_id, metrics=metrics)
            logged.update(int(r["step"]) for r in history)

    def finished(self, run: RunSpec, preds: Predictions, **_: Any) -> None:
        if run.name in self.runs:
            self.call(f"finishing run {run.name}", self._finish, run.name, preds)
            self.runs.pop(run.name)

    def _finish(self, client: MlflowClient, name: str, preds: Predictions) -> None:
        """The epochs not logged yet, the final figures, the artefacts; then the MLflow run is finished."""
        from mlflow.entities import Metric
        from omegaconf import OmegaConf

        self._log_epochs(client, name, preds.history)
        run_id, _ = self.runs[name]
        now, step = int(time.time() * 1000), len(preds.history)
        final = (
            preds.metrics | {"minutes": run_minutes(preds)} | ({"lr_found": preds.lr_found} if preds.lr_found else {})
        )
        client.log_batch(run_id, metrics=[Metric(k, float(v), now, step) for k, v in final.items()])
        with tempfile.TemporaryDirectory() as tmp:
            files = {
                f"{name}.curves.png": curves_png({name: preds.history}, name),
                f"{name}.history.csv": history_csv(preds.history) if preds.history else None,
                "config.yaml": OmegaConf.to_yaml(OmegaConf.create(preds.config)),
            }
            for file, content in files.items():
                if content is None:
                    continue
                path = Path(tmp) / file
                if isinstance(content, bytes):
                    path.write_bytes(content)
                else:
                    path.write_text(content)
                client.log_artifact(run_id, str(path))
        client.set_terminated(run_id, "FINISHED")

    def failed(self, run: RunSpec, error: BaseException, **_: Any) -> None:
        if run.name in self.runs:
            run_id, _ = self.runs.pop(run.name)
            self.call(f"failing run {run.name}", self._fail, run_id, one_line(error))

    @staticmethod
    def _fail(client: MlflowClient, run_id: str, error: str) -> None:
        client.set_tag(run_id, "error", error[:PARAM_LENGTH])
        client.set_terminated(run_id, "FAILED")
