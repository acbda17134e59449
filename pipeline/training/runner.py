"""Train every run of a model: fit, TTA on the test and validation sets, save the prediction file.

Long jobs survive: a run whose prediction file exists with the same identity hash is skipped, a
failing run is reported while the others still train, an out-of-memory error retries the run with
a doubled accum, and per-epoch checkpoints let an interrupted run resume mid-way.

Jobs running at once (a launcher's pool, SLURM jobs on a shared disk) never train the same run: each run
is trained under a file lock beside its prediction file, and a job finding it held skips the run.
"""

from __future__ import annotations

import gc
import logging
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

from pipeline.config import check_ranges, to_container
from pipeline.data.competition import Competition, scan_competition
from pipeline.data.layout import Layout
from pipeline.data.splits import Split, make_split
from pipeline.data.train_csv import read_aux_targets
from pipeline.errors import PipelineError, one_line
from pipeline.predictions import Predictions, load, save
from pipeline.tables import format_table
from pipeline.training.checkpoints import RunCheckpoint
from pipeline.training.provenance import environment, run_hash
from pipeline.training.recipe import recipe_columns
from pipeline.training.specs import RunSpec, chosen_model, resolve_runs
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


def run_split(cfg: Any, comp: Competition, run: RunSpec, seed: int | None) -> Split:
    """The run's validation images under data.split (a fold of it under kfold)."""
    labels = [p.parent.name for p in comp.train_files]
    return make_split(
        labels, cfg.data.split, valid_pct=cfg.data.valid_pct, seed=seed, fold=run.fold, n_folds=run.n_folds
    )


def train_run(
    cfg: Any,
    comp: Competition,
    run: RunSpec,
    device: str,
    timm_kwargs: dict[str, Any],
    ckpt: RunCheckpoint | None,
    budget: TimeBudget | None = None,
) -> Predictions:
    """Fit one run (resuming from its checkpoint if any) and return its TTA predictions.
    Raises TimeBudgetSpent when `budget` stopped the fit before its last epoch."""
    import torch
    from fastcore.basics import noop
    from hydra.utils import instantiate

    from pipeline.data.train_csv import target_sizes
    from pipeline.training.learner import find_lr, last_valid_error, run_learner
    from pipeline.training.recipe import seeded
    from pipeline.training.schedules import final_fit, fit
    from pipeline.training.targets import split_outputs
    from pipeline.training.tta import tta

    split = run_split(
        cfg, comp, run, ckpt.split_seed(cfg.data.seed) if ckpt else cfg.data.seed
    )  # a resumed run keeps its split
    cbs = [instantiate(c) for c in cfg.train.callbacks]
    start_epoch = 0
    if ckpt and (found := ckpt.latest()):
        start_epoch = found[1]
        log.info("run %s: resuming from %s (%d of %d epochs done)", run.name, found[0], start_epoch, run.epochs)
    aux = read_aux_targets(comp, run.recipe.aux_targets)
    with seeded(run.recipe.seed):
        learn = run_learner(cfg, comp, run, device, timm_kwargs, valid_idx=split.valid_idx, cbs=cbs)
        dls = learn.dls
        try:
            lr_found = None
            if run.recipe.lr_find:  # a resumed run keeps the lr it found
                find = partial(find_lr, learn, run.recipe.lr_find_steps)
                lr_found = float(ckpt.remember("lr_found", find) if ckpt else find())
                log.info("run %s: lr_find suggests lr %.3g", run.name, lr_found)
                run = replace(run, lr=lr_found)
            # after lr_find, whose own fit must not count as one of the run's
            stop = budget.callback(final_fit(run)) if budget else None
            for cb in (stop, ckpt.callback(final_fit=final_fit(run)) if ckpt else None):
                if cb:
                    learn.add_cb(cb)
            start = time.perf_counter()
            fit(learn, run, start_epoch)
            fit_s = time.perf_counter() - start
            if stop and stop.stopped:
                raise TimeBudgetSpent(f"stopped after epoch {stop.epoch + 1} of fit {stop.fit_index + 1}")
            valid_error = last_valid_error(learn)
            # one plain pass: the label's probabilities without TTA, and each extra target's
            raw, targets = learn.get_preds(ds_idx=1, act=noop)
            (valid_probs_plain, _), *aux_plain = split_outputs(raw, targets, target_sizes(len(comp.vocab), aux))
            start = time.perf_counter()
            n, beta, fast = cfg.tta.n, cfg.tta.beta, cfg.perf.fast_tta
            test_probs, _ = tta(learn, dls.test_dl(comp.test_files), n, beta, fast)
            valid_probs, valid_targets = tta(learn, dls.valid.new(shuffle=False, drop_last=False), n, beta, fast)
            tta_s = time.perf_counter() - start
            train_root = comp.train_dir
            valid_ids = [str(Path(p).relative_to(train_root)) for p in dls.valid_ds.items]
        finally:
            del learn, dls
            gc.collect()
            if device == "cuda":
                torch.cuda.empty_cache()
    valid_probs = valid_probs.float()
    env = environment(device) | {
        "split_seed_configured": cfg.data.seed is not None,
        "data_fingerprint": comp.fingerprint,  # the data it was trained on, as in its run hash
    }
    aux_records = {
        t.name: {"vocab": t.vocab, "weight": t.weight, "valid_probs": probs.contiguous(), "valid_targets": targs}
        for t, (probs, targs) in zip(aux, aux_plain, strict=True)
    }
    return Predictions(
        run=run.name,
        member=run.member,
        arch=run.arch,
        vocab=list(comp.vocab),
        test_ids=comp.test_ids,
        test_probs=test_probs.float().contiguous(),
        valid_ids=valid_ids,
        valid_probs=valid_probs.contiguous(),
        valid_probs_plain=valid_probs_plain.contiguous(),
        valid_targets=valid_targets.long(),
        split=split.record(),
        weight=run.weight,
        metrics={
            "valid_error": valid_error,
            "valid_error_tta": float((valid_probs.argmax(1) != valid_targets).float().mean()),
            **{
                f"valid_error_{name}": float((a["valid_probs"].argmax(1) != a["valid_targets"]).float().mean())
                for name, a in aux_records.items()
            },
        },
        timings={"fit_s": fit_s, "tta_s": tta_s},
        run_spec=asdict(run),
        config=to_container(cfg),
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        device=device,
        environment=env,
        aux_targets=aux_records,
        lr_found=lr_found,
        recipe_summary=recipe_columns(run.recipe),
    )


def train_with_retries(
    cfg: Any,
    comp: Competition,
    run: RunSpec,
    device: str,
    timm_kwargs: dict[str, Any],
    ckpt: RunCheckpoint | None,
    budget: TimeBudget | None = None,
) -> Predictions:
    """train_run; on out-of-memory, double accum (same effective batch, half the micro-batch) and retry."""
    import torch

    for attempt in range(cfg.train.oom_retries + 1):
        try:
            return train_run(cfg, comp, run, device, timm_kwargs, ckpt, budget)
        except torch.OutOfMemoryError:
            gc.collect()
            if device == "cuda":
                torch.cuda.empty_cache()
            if attempt == cfg.train.oom_retries or run.batch_size % (2 * run.accum):
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


def finished(path: Path, identity: str, data_fingerprint: str) -> Predictions | None:
    """The run's prediction file, if it exists and was made by the same run on the same data."""
    if not path.is_file():
        return None
    try:
        preds = load(path)
    except PipelineError as e:
        log.warning("%s: retraining (%s)", path, e)
        return None
    if preds.run_hash != identity:
        if preds.environment.get("data_fingerprint", data_fingerprint) != data_fingerprint:
            log.info("%s was trained on other data (images added, removed, moved or changed): retraining", path)
        else:
            log.info(
                "%s was trained with another config (run hash %s, now %s): retraining", path, preds.run_hash, identity
            )
        return None
    return preds


def train_model(cfg: Any) -> list[RunResult]:
    """Train a model's runs one after the other; raises RunsFailed at the end if any failed, else
    RunsStopped if train.time_budget_h stopped any."""
    from pipeline.training.learner import pick_device
    from pipeline.training.memory_probe import read_accums
    from pipeline.training.pretrained import timm_kwargs

    budget = TimeBudget(cfg.train.time_budget_h)
    check_ranges(cfg)
    probe_file = Path(cfg.paths.probe) / f"{chosen_model(cfg).name}.yaml"
    probed = read_accums(probe_file)
    if probed:
        log.info("accum from the memory probe's %s: %s", probe_file, probed)
    runs = resolve_runs(cfg, probed)
    comp = scan_competition(cfg.data.root, Layout.from_config(cfg.data))
    read_aux_targets(comp, runs[0].recipe.aux_targets)  # a bad train.csv fails here, before any run trains
    device = pick_device(cfg.train.device)
    log.info(
        "%s: %d runs on %s; %d training images in %d classes, %d test images",
        cfg.model.name,
        len(runs),
        device,
        len(comp.train_files),
        len(comp.vocab),
        len(comp.test_files),
    )
    results: dict[str, RunResult] = {}
    todo = []
    for run in runs:
        identity = run_hash(run, cfg.data, cfg.tta, comp.fingerprint)
        path = Path(cfg.paths.preds) / f"{run.name}.pt"
        if not cfg.train.force and (done := finished(path, identity, comp.fingerprint)):
            log.info(
                "run %s: already trained with this config (%s): skipped; train.force=true retrains", run.name, path
            )
            results[run.name] = RunResult(
                run,
                "skipped",
                path,
                done.metrics["valid_error"],
                done.metrics["valid_error_tta"],
                done.run_spec["accum"],
                aux_errors=aux_errors(done),
            )
            continue
        try:  # weights problems show at start, not hours later when the run's turn comes
            todo.append((run, identity, path, timm_kwargs(run)))
        except PipelineError as e:
            log.error("run %s cannot train: %s", run.name, e)
            results[run.name] = RunResult(run, "failed", error=str(e))
    for run, identity, path, kwargs in todo:
        if not budget.allows_new_run():
            log.info("run %s: not started, train.time_budget_h=%g is spent", run.name, budget.hours)
            results[run.name] = RunResult(run, STOPPED)
            continue
        with run_lock(path) as held:
            if not held:
                lock = lock_file(path)
                log.warning("run %s: another job is training it (%s is held): skipped here", run.name, lock)
                results[run.name] = RunResult(run, "busy", error=f"trained by another job ({lock} is held)")
            elif not cfg.train.force and (
                done := finished(path, identity, comp.fingerprint)
            ):  # another job finished it meanwhile
                log.info("run %s: trained by another job meanwhile (%s): skipped", run.name, path)
                results[run.name] = RunResult(
                    run, "skipped", path, done.metrics["valid_error"], done.metrics["valid_error_tta"]
                )
            else:
                results[run.name] = attempt(cfg, comp, run, identity, path, device, kwargs, budget)
    ordered = [results[run.name] for run in runs]
    log.info("\n%s", results_table(ordered))
    if failed := [r for r in ordered if r.status == "failed"]:
        raise RunsFailed(
            f"{len(failed)} of {len(ordered)} runs failed: " + "; ".join(f"{r.run.name} ({r.error})" for r in failed),
            ordered,
        )
    if stopped := [r.run.name for r in ordered if r.status == STOPPED]:
        raise RunsStopped(
            f"{len(stopped)} of {len(ordered)} runs stopped by train.time_budget_h={budget.hours:g} "
            f"({', '.join(stopped)}): run the same command again to continue from their checkpoints"
        )
    return ordered


def lock_file(preds_path: Path) -> Path:
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


def attempt(
    cfg: Any,
    comp: Competition,
    run: RunSpec,
    identity: str,
    path: Path,
    device: str,
    kwargs: dict[str, Any],
    budget: TimeBudget | None = None,
) -> RunResult:
    """Train and save one run; any failure is logged and returned, so the job goes on with the next run."""
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
    ckpt = RunCheckpoint(Path(cfg.paths.checkpoints) / f"{run.name}-{identity}") if cfg.train.checkpoint else None
    start = time.perf_counter()
    try:
        preds = train_with_retries(cfg, comp, run, device, kwargs, ckpt, budget)
        preds.run_hash = identity
        save(preds, path)
    except TimeBudgetSpent as e:
        minutes = (time.perf_counter() - start) / 60
        kept = f"; its checkpoint is kept in {ckpt.folder}" if ckpt else " (train.checkpoint=false: nothing is kept)"
        log.warning("run %s: time budget spent after %.1f min, %s%s", run.name, minutes, e, kept)
        return RunResult(run, STOPPED, minutes=minutes)
    except Exception as e:  # isolation: any failure of one run must not stop the others
        minutes = (time.perf_counter() - start) / 60
        log.error("run %s failed after %.1f min: %s%s", run.name, minutes, one_line(e), save_traceback(run.name))
        return RunResult(run, "failed", minutes=minutes, error=one_line(e))
    if ckpt:
        ckpt.remove()
    log.info("run %s: predictions saved to %s", run.name, path)
    return RunResult(
        run,
        "trained",
        path,
        preds.metrics["valid_error"],
        preds.metrics["valid_error_tta"],
        preds.run_spec["accum"],
        (time.perf_counter() - start) / 60,
        aux_errors=aux_errors(preds),
    )


def aux_errors(preds: Predictions) -> dict[str, float]:
    """The run's extra targets' validation error rates, by target."""
    return {name: preds.metrics[f"valid_error_{name}"] for name in preds.aux_targets}


def save_traceback(run_name: str) -> str:
    """Keep the full traceback in the job's Hydra folder (the console gets one line); where it went."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return ""
    path = Path(HydraConfig.get().runtime.output_dir) / f"{run_name}.traceback.txt"
    path.write_text(traceback.format_exc())
    return f" (traceback: {path})"


def results_table(results: list[RunResult]) -> str:
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
