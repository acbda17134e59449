"""Schedule a job's runs: train every run of a model, one after the other, and report what each did.
Training one run is pipeline.training.run's; this module decides which runs train and keeps them apart.

Long jobs survive: a run whose prediction file exists with the same identity hash is skipped, a
failing run is reported while the others still train, an out-of-memory error retries the run with
a doubled accum, and per-epoch checkpoints let an interrupted run resume mid-way. A full disk stops the
job (every later run would fail too) with one line; the run keeps its checkpoint, so that the same command
after freeing space resumes it at its last epoch and redoes only TTA and the save.

Jobs running at once (a launcher's pool, SLURM jobs on a shared disk) never train the same run: each run
is trained under a file lock beside its prediction file, and a job finding it held skips the run.

A run's events (pipeline.training.events) are fired here, around each run: started, finished, skipped
and failed; epoch_ended comes from inside the fit.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pipeline.config import check_ranges
from pipeline.data.competition import Competition, scan_competition
from pipeline.data.exclude import excluding
from pipeline.data.layout import Layout
from pipeline.data.splits import check_training_batch
from pipeline.data.train_csv import read_aux_targets
from pipeline.errors import PipelineError, one_line
from pipeline.fileio import DiskFull, write_atomic
from pipeline.predictions import Predictions, load, save
from pipeline.tables import format_table
from pipeline.training import distributed
from pipeline.training.checkpoints import RunCheckpoint
from pipeline.training.distributed import rank0_first, shared
from pipeline.training.events import RunEvents, job_events
from pipeline.training.loggers import job_loggers
from pipeline.training.provenance import run_hash
from pipeline.training.recipe import recipe_columns
from pipeline.training.run import free_memory, train_run
from pipeline.training.specs import RunSpec, chosen_model, resolve_runs
from pipeline.training.teachers import Teachers, blend_hashes, load_teachers
from pipeline.training.time_budget import TimeBudget, TimeBudgetSpent

log = logging.getLogger(__name__)


class RunsFailed(PipelineError):
    """Some runs of a job failed; the others finished and their prediction files are kept."""

    def __init__(self, message: str, results: list[RunResult]) -> None:
        super().__init__(message)
        self.runs = [r.summary() for r in results]


class RunsStopped(PipelineError):
    """train.time_budget_h stopped runs (their checkpoints kept): running the job again continues them."""

    exit_code = 3


STOPPED = "stopped: time budget"
NOT_KEPT = " (train.checkpoint=false: nothing is kept)"


@dataclass
class RunResult:
    run: RunSpec
    status: str  # trained | skipped | busy (another job holds it) | failed | STOPPED (checkpoint kept)
    path: Path | None = None
    valid_error: float | None = None
    valid_error_tta: float | None = None
    accum: int | None = None  # as trained: larger than configured after an out-of-memory retry
    minutes: float = 0.0
    error: str = ""
    aux_errors: dict[str, float] = field(default_factory=dict)  # extra targets' validation error rates

    def summary(self) -> dict[str, Any]:
        """Plain data for a sweep's report: the run, what happened, its file or its error."""
        return {
            "run": self.run.name,
            "status": self.status,
            "path": str(self.path) if self.path else None,
            "valid_error_tta": self.valid_error_tta,
            "minutes": round(self.minutes, 2),
            "error": self.error,
        }


def train_model(cfg: Any) -> list[RunResult]:
    """Train a model's runs one after the other; raises RunsFailed at the end if any failed, else
    RunsStopped if train.time_budget_h stopped any. With train.devices=N each run trains on N ranks
    started here (pipeline.training.distributed), as under torchrun, whose ranks each run this job."""
    budget = TimeBudget(cfg.train.time_budget_h)  # the job's clock starts here
    check_ranges(cfg)
    runs = resolve_runs(cfg, probed_accums(cfg))
    if cfg.train.devices > 1 and not distributed.env_world().distributed:
        results = distributed.launch(cfg.train.devices, train_runs, cfg, runs, budget)
    else:
        with distributed.group(cfg.train):
            results = train_runs(cfg, runs, budget)
    raise_unless_all_done(results, budget)
    return results


def train_runs(cfg: Any, runs: list[RunSpec], budget: TimeBudget) -> list[RunResult]:
    """The job's runs in this process, alone or as one rank of a group: every run checked before any
    trains (its problems show at the start), then each trained; the results table."""
    job = open_job(cfg, runs, budget)
    checked = [job.check(run) for run in runs]
    results = [c if isinstance(c, RunResult) else job.train(c) for c in checked]
    log.info("\n%s", results_table(results))
    return results


def probed_accums(cfg: Any) -> dict[str, int]:
    """The accum the memory probe (python -m pipeline.probe) found for each of the model's runs, if it ran."""
    from pipeline.training.memory_probe import read_accums

    probe_file = Path(cfg.paths.probe) / f"{chosen_model(cfg).name}.yaml"
    probed = read_accums(probe_file)
    if probed:
        log.info("accum from the memory probe's %s: %s", probe_file, probed)
    return probed


def open_job(cfg: Any, runs: list[RunSpec], budget: TimeBudget) -> TrainingJob:
    """What the job's runs share: the checked competition (less data.exclude's images in training), the blends
    they learn from (training/teachers), the device and the job's event listeners."""
    from pipeline.training.learner import pick_device

    # rank 0 first: it alone writes the file hashes' index, the other ranks read it
    layout = Layout.from_config(cfg.data)
    comp = rank0_first(lambda: scan_competition(cfg.data.root, layout, cache_dir=cfg.perf.cache_dir))
    comp = excluding(comp, cfg.data.get("exclude"))
    read_aux_targets(comp, runs[0].recipe.aux_targets)  # a bad train.csv fails here, before any run trains
    teachers = load_teachers(cfg, comp)  # so does a blend the runs cannot learn from
    for run in runs:  # a split too large for one batch fails here, not after the image cache is built
        check_training_batch(len(comp.train_files), cfg.data.split, cfg.data.valid_pct, cfg.data.folds, run.batch_size)
    device = pick_device(cfg.train.device)
    log.info(
        "%s: %d runs on %s%s; %d training images in %d classes, %d test images",
        cfg.model.name,
        len(runs),
        device,
        f" x {distributed.WORLD.size} ranks" if distributed.WORLD.distributed else "",
        len(comp.train_files),
        len(comp.vocab),
        len(comp.test_files),
    )
    # the listeners (trackers, loggers, pseudo-labelling) hear each run once, from rank 0
    events = job_events(cfg.train.hooks, job_loggers(cfg)) if distributed.WORLD.main else RunEvents()
    return TrainingJob(cfg, comp, device, budget, events, teachers)


def raise_unless_all_done(results: list[RunResult], budget: TimeBudget) -> None:
    """RunsFailed if any run failed (exit 2), else RunsStopped if the time budget stopped any (exit 3)."""
    if failed := [r for r in results if r.status == "failed"]:
        raise RunsFailed(
            f"{len(failed)} of {len(results)} runs failed: " + "; ".join(f"{r.run.name} ({r.error})" for r in failed),
            results,
        )
    if stopped := [r.run.name for r in results if r.status == STOPPED]:
        raise RunsStopped(
            f"{len(stopped)} of {len(results)} runs stopped by train.time_budget_h={budget.hours:g} "
            f"({', '.join(stopped)}): run the same command again to continue from their checkpoints"
        )


@dataclass
class Pending:
    """A run checked at the job's start and left to train: its identity, prediction file and timm arguments."""

    run: RunSpec
    identity: str
    path: Path
    timm_kwargs: dict[str, Any]


@dataclass
class TrainingJob:
    """One pipeline.train job: what its runs share, and the steps each run goes through."""

    cfg: Any
    comp: Competition
    device: str
    budget: TimeBudget
    events: RunEvents
    teachers: Teachers

    def check(self, run: RunSpec) -> RunResult | Pending:
        """Skip a run already trained with this config; fail one whose weights cannot load now, not hours
        later when the run's turn comes; else the run is pending."""
        from pipeline.training.pretrained import timm_kwargs

        data = self.comp.fingerprint_for(run.recipe.aux_targets)
        identity = run_hash(run, self.cfg.data, self.cfg.tta, data, self.teachers.hashes)
        path = Path(self.cfg.paths.preds) / f"{run.name}.pt"
        if not self.cfg.train.force and (done := finished_on_rank0(path, identity, data, self.teachers.hashes)):
            log.info(
                "run %s: already trained with this config (%s): skipped; train.force=true retrains", run.name, path
            )
            self.events.emit("skipped", run=run, preds=done, path=path)
            return RunResult(
                run,
                "skipped",
                path,
                done.metrics["valid_error"],
                done.metrics["valid_error_tta"],
                done.run_spec["accum"],
                aux_errors=aux_errors(done),
            )
        try:
            return Pending(run, identity, path, timm_kwargs(run))
        except PipelineError as e:
            log.error("run %s cannot train: %s", run.name, e)
            return self.failed(run, e, str(e))

    def train(self, todo: Pending) -> RunResult:
        """Train the run unless the time budget is spent, another job holds its lock, or another job
        finished it meanwhile."""
        run, path = todo.run, todo.path
        if not shared(self.budget.allows_new_run):
            log.info("run %s: not started, train.time_budget_h=%g is spent", run.name, self.budget.hours)
            return RunResult(run, STOPPED)
        with run_lock(path) if distributed.WORLD.main else nullcontext(True) as held:  # rank 0 holds it
            if not shared(lambda: held):
                lock = lock_file(path)
                log.warning("run %s: another job is training it (%s is held): skipped here", run.name, lock)
                return RunResult(run, "busy", error=f"trained by another job ({lock} is held)")
            data = self.comp.fingerprint_for(run.recipe.aux_targets)
            done = None if self.cfg.train.force else finished_on_rank0(path, todo.identity, data, self.teachers.hashes)
            if done:
                log.info("run %s: trained by another job meanwhile (%s): skipped", run.name, path)
                self.events.emit("skipped", run=run, preds=done, path=path)
                return RunResult(run, "skipped", path, done.metrics["valid_error"], done.metrics["valid_error_tta"])
            return self.attempt(todo)

    def attempt(self, todo: Pending) -> RunResult:
        """Train and save one run; any failure is logged and returned, so the job goes on with the next run."""
        run, path = todo.run, todo.path
        log_start(run, todo.identity)
        self.events.emit("started", run=run, run_hash=todo.identity, path=path)
        checkpoints = Path(self.cfg.paths.checkpoints) / f"{run.name}-{todo.identity}"
        ckpt = RunCheckpoint(checkpoints) if self.cfg.train.checkpoint else None
        start = time.perf_counter()
        try:
            preds = self.train_with_retries(todo, ckpt)
            preds.run_hash = todo.identity
            if distributed.WORLD.main:
                save(preds, path)
        except TimeBudgetSpent as e:
            minutes = (time.perf_counter() - start) / 60
            kept = f"; its checkpoint is kept in {ckpt.folder}" if ckpt else NOT_KEPT
            log.warning("run %s: time budget spent after %.1f min, %s%s", run.name, minutes, e, kept)
            return RunResult(run, STOPPED, minutes=minutes)
        except Exception as e:
            return self.failure(run, e, ckpt, (time.perf_counter() - start) / 60)
        if ckpt and distributed.WORLD.main:
            ckpt.remove()
        log.info("run %s: predictions saved to %s", run.name, path)
        minutes = (time.perf_counter() - start) / 60
        self.events.emit("finished", run=run, preds=preds, path=path)
        errors = preds.metrics["valid_error"], preds.metrics["valid_error_tta"]
        return RunResult(run, "trained", path, *errors, preds.run_spec["accum"], minutes, aux_errors=aux_errors(preds))

    def train_with_retries(self, todo: Pending, ckpt: RunCheckpoint | None) -> Predictions:
        """train_run; on out-of-memory, double accum (same effective batch, half the micro-batch) and retry."""
        import torch

        cfg, run, retries = self.cfg, todo.run, self.cfg.train.oom_retries
        for attempt in range(retries + 1):
            try:
                return train_run(
                    cfg, self.comp, run, self.device, todo.timm_kwargs, ckpt, self.budget, self.events, self.teachers
                )
            except torch.OutOfMemoryError:
                free_memory(self.device)
                # under DDP every rank would have to retry at once: the rank's failure names what to do
                if attempt == retries or run.batch_size % (2 * run.accum) or distributed.WORLD.distributed:
                    raise
            log.warning(
                "run %s: out of memory at accum %d (micro-batch %d); retrying at accum %d (micro-batch %d)",
                run.name,
                run.accum,
                run.micro_batch,
                2 * run.accum,
                run.micro_batch // 2,
            )
            run = replace(run, accum=2 * run.accum)
        raise AssertionError("unreachable")

    def failure(self, run: RunSpec, e: Exception, ckpt: RunCheckpoint | None, minutes: float) -> RunResult:
        """A run that raised: isolated (logged, returned: the job goes on with its next run), but for a full
        disk, which every later run would hit too (the job stops), and any failure on a rank of a group,
        whose process ends (the other ranks wait for it in a collective; their launcher stops them)."""
        if distributed.WORLD.distributed:
            saved = save_traceback(run.name)  # on every rank: the rank that failed first need not be rank 0
            if distributed.WORLD.main:
                log.error("run %s failed after %.1f min on rank 0: %s%s", run.name, minutes, one_line(e), saved)
            raise distributed.RankFailed(run, e, saved) from e
        if isinstance(e, DiskFull):  # the job stops, its one line says why
            kept = f"; its checkpoint is kept in {ckpt.folder}: the same command resumes from it" if ckpt else NOT_KEPT
            log.error("run %s: %s%s", run.name, e, kept)
            self.failed(run, e, str(e))
            raise e
        log.error("run %s failed after %.1f min: %s%s", run.name, minutes, one_line(e), save_traceback(run.name))
        return self.failed(run, e, one_line(e), minutes)

    def failed(self, run: RunSpec, error: Exception, message: str, minutes: float = 0.0) -> RunResult:
        """A failed run's result, its `failed` event fired with the exception itself."""
        self.events.emit("failed", run=run, error=error)
        return RunResult(run, "failed", minutes=minutes, error=message)


def log_start(run: RunSpec, identity: str) -> None:
    """The run's line at its start: what it trains, so that a log alone tells runs apart."""
    log.info(
        "run %s (hash %s): %s, %s %s -> %s, accum %d (micro-batch %d), %d epochs, lr %s; %s",
        run.name,
        identity,
        run.arch,
        run.resize,
        list(run.item_size),
        list(run.size),
        run.accum,
        run.micro_batch,
        run.epochs,
        "find" if run.recipe.lr_find else format(run.lr, "g"),
        "; ".join(f"{k} {v}" for k, v in recipe_columns(run.recipe).items()),
    )


def finished(
    path: Path, identity: str, data_fingerprint: str, teachers: dict[str, str] | None = None
) -> Predictions | None:
    """The run's prediction file, if it exists and was made by the same run on the same data (and from the
    same blends, `teachers`: Teachers.hashes)."""
    if not path.is_file():
        return None
    try:
        preds = load(path)
    except PipelineError as e:
        log.warning("%s: retraining (%s)", path, e)
        return None
    if preds.run_hash != identity:
        if preds.environment.get("data_fingerprint", data_fingerprint) != data_fingerprint:
            log.info(
                "%s was trained on other data (images, train.csv or data.exclude changed, added or removed): "
                "retraining",
                path,
            )
        elif teachers is not None and blend_hashes(preds.teacher) != teachers:
            log.info("%s learned from another blend (loss.teacher or data.pseudo changed): retraining", path)
        else:
            log.info(
                "%s was trained with another config (run hash %s, now %s): retraining", path, preds.run_hash, identity
            )
        return None
    return preds


def finished_on_rank0(
    path: Path, identity: str, data_fingerprint: str, teachers: dict[str, str] | None = None
) -> Predictions | None:
    """`finished` as rank 0 finds it: every rank of a group must skip or train the run alike."""
    done = finished(path, identity, data_fingerprint, teachers)
    if shared(lambda: done is not None):
        return done or load(path)
    return None


def lock_file(preds_path: Path) -> Path:
    """The run's lock, a hidden file beside its prediction file: on the disk every job writing there shares."""
    return preds_path.with_name(f".{preds_path.stem}.lock")


@contextmanager
def run_lock(preds_path: Path) -> Iterator[bool]:
    """Take the run's lock (`lock_file`) without waiting; yields whether this job holds it. The lock is
    the kernel's (flock), so a job that dies releases it."""
    from filelock import FileLock, Timeout

    preds_path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(lock_file(preds_path))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        yield False
        return
    try:
        yield True
    finally:
        lock.release()


def aux_errors(preds: Predictions) -> dict[str, float]:
    """The run's extra targets' validation error rates, by target."""
    return {name: preds.metrics[f"valid_error_{name}"] for name in preds.aux_targets}


def save_traceback(run_name: str) -> str:
    """Keep the full traceback in the job's Hydra folder (the console gets one line), a file per rank of a
    group; where it went."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return ""
    world = distributed.WORLD
    name = run_name if world.main else f"{run_name}.rank{world.rank}"
    path = write_atomic(Path(HydraConfig.get().runtime.output_dir) / f"{name}.traceback.txt", traceback.format_exc())
    return f" (traceback: {path})"


def results_table(results: list[RunResult]) -> str:
    """The job's runs as a table at its end: what each did, with its errors, in the order they were given."""

    def num(x: float | None, fmt: str) -> str:
        return "-" if x is None else format(x, fmt)

    return format_table(
        [
            {
                "run": r.run.name,
                "status": r.status,
                "arch": r.run.arch,
                "item tfm": f"{r.run.resize} {'x'.join(map(str, r.run.item_size))}",
                "size": "x".join(map(str, r.run.size)),
                "accum": r.accum or r.run.accum,
                "epochs": r.run.epochs,
                **recipe_columns(r.run.recipe),
                "valid err": num(r.valid_error, ".4f"),
                "valid err TTA": num(r.valid_error_tta, ".4f"),
                "aux err": ", ".join(f"{k} {v:.4f}" for k, v in r.aux_errors.items()) or "-",
                "minutes": f"{r.minutes:.1f}",
            }
            for r in results
        ]
    )
