"""Train every run of a model: fit, TTA on the test and validation sets, save the prediction file.

Long jobs survive: a run whose prediction file exists with the same identity hash is skipped, a
failing run is reported while the others still train, an out-of-memory error retries the run with
a doubled accum, and per-epoch checkpoints let an interrupted run resume mid-way.
"""

from __future__ import annotations

import gc
import logging
import time
import traceback
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipeline.config import to_container
from pipeline.data.competition import Competition, scan_competition
from pipeline.data.splits import Split, make_split
from pipeline.errors import PipelineError, one_line
from pipeline.predictions import Predictions, load, save
from pipeline.tables import format_table
from pipeline.training.checkpoints import RunCheckpoint
from pipeline.training.provenance import environment, run_hash
from pipeline.training.specs import RunSpec, resolve_runs
from pipeline.training.time_budget import TimeBudget, TimeBudgetSpent

log = logging.getLogger(__name__)


class RunsFailed(PipelineError):
    """Some runs of a job failed; the others finished and their prediction files are kept."""


class RunsStopped(PipelineError):
    """train.time_budget_h stopped runs (their checkpoints kept): running the job again continues them."""

    exit_code = 3


STOPPED = "stopped: time budget"


@dataclass
class RunResult:
    run: RunSpec
    status: str  # trained | skipped | failed | STOPPED (no prediction file; the checkpoint is kept)
    path: Path | None = None
    valid_error: float | None = None
    valid_error_tta: float | None = None
    accum: int | None = None  # as trained: larger than configured after an out-of-memory retry
    minutes: float = 0.0
    error: str = ""


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
    from hydra.utils import instantiate

    from pipeline.fast.tta import tta
    from pipeline.training.learner import fit, last_valid_error, run_learner

    split = run_split(
        cfg, comp, run, ckpt.split_seed(cfg.data.seed) if ckpt else cfg.data.seed
    )  # a resumed run keeps its split
    cbs = [instantiate(c) for c in cfg.train.callbacks]
    start_epoch = 0
    final_fit = 1 if run.pretrained else 0
    stop = budget.callback(final_fit) if budget else None
    if stop:
        cbs.append(stop)
    if ckpt:
        cbs.append(ckpt.callback(final_fit))
        if found := ckpt.latest():
            start_epoch = found[1]
            log.info("run %s: resuming from %s (%d of %d epochs done)", run.name, found[0], start_epoch, run.epochs)
    learn = run_learner(cfg, comp, run, device, timm_kwargs, valid_idx=split.valid_idx, cbs=cbs)
    dls = learn.dls
    try:
        start = time.perf_counter()
        fit(learn, run, start_epoch)
        fit_s = time.perf_counter() - start
        if stop and stop.stopped:
            raise TimeBudgetSpent(f"stopped after epoch {stop.epoch + 1} of fit {stop.fit_index + 1}")
        valid_error = last_valid_error(learn)
        valid_probs_plain, _ = learn.get_preds(ds_idx=1)
        start = time.perf_counter()
        n, beta, fast = cfg.tta.n, cfg.tta.beta, cfg.perf.fast_tta
        test_probs, _ = tta(learn, dls.test_dl(comp.test_files), n, beta, fast)
        valid_probs, valid_targets = tta(learn, dls.valid.new(shuffle=False, drop_last=False), n, beta, fast)
        tta_s = time.perf_counter() - start
        train_root = comp.root / "train_images"
        valid_ids = [str(Path(p).relative_to(train_root)) for p in dls.valid_ds.items]
    finally:
        del learn, dls
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()
    valid_probs = valid_probs.float()
    env = environment(device) | {"split_seed_configured": cfg.data.seed is not None}
    return Predictions(
        run=run.name,
        member=run.member,
        arch=run.arch,
        vocab=list(comp.vocab),
        test_ids=comp.test_ids,
        test_probs=test_probs.float().contiguous(),
        valid_ids=valid_ids,
        valid_probs=valid_probs.contiguous(),
        valid_probs_plain=valid_probs_plain.float().contiguous(),
        valid_targets=valid_targets.long(),
        split=split.record(),
        weight=run.weight,
        metrics={
            "valid_error": valid_error,
            "valid_error_tta": float((valid_probs.argmax(1) != valid_targets).float().mean()),
        },
        timings={"fit_s": fit_s, "tta_s": tta_s},
        run_spec=asdict(run),
        config=to_container(cfg),
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        device=device,
        environment=env,
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


def finished(path: Path, identity: str, comp: Competition | None = None) -> Predictions | None:
    """The run's prediction file, if it exists and was made by the same run (on `comp`'s labels and
    test images: the run hash does not say where the data lives)."""
    if not path.is_file():
        return None
    try:
        preds = load(path)
    except PipelineError as e:
        log.warning("%s: retraining (%s)", path, e)
        return None
    if preds.run_hash != identity:
        log.info("%s was trained with another config (run hash %s, now %s): retraining", path, preds.run_hash, identity)
        return None
    if comp is not None and (preds.vocab != list(comp.vocab) or sorted(preds.test_ids) != sorted(comp.test_ids)):
        log.info("%s was trained on other data (labels or test images differ from %s): retraining", path, comp.root)
        return None
    return preds


def train_model(cfg: Any) -> list[RunResult]:
    """Train a model's runs one after the other; raises RunsFailed at the end if any failed, else
    RunsStopped if train.time_budget_h stopped any."""
    budget = TimeBudget(cfg.train.get("time_budget_h"))
    from pipeline.training.learner import pick_device
    from pipeline.training.memory_probe import read_accums
    from pipeline.training.pretrained import timm_kwargs

    probe_file = Path(cfg.paths.probe) / f"{cfg.model.name}.yaml" if cfg.get("model") else None
    probed = read_accums(probe_file) if probe_file else {}
    if probed:
        log.info("accum from the memory probe's %s: %s", probe_file, probed)
    runs = resolve_runs(cfg, probed)
    comp = scan_competition(cfg.data.root)
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
        identity = run_hash(run, cfg.data, cfg.tta)
        path = Path(cfg.paths.preds) / f"{run.name}.pt"
        if not cfg.train.force and (done := finished(path, identity, comp)):
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
        results[run.name] = attempt(cfg, comp, run, identity, path, device, kwargs, budget)
    ordered = [results[run.name] for run in runs]
    log.info("\n%s", results_table(ordered))
    if failed := [r for r in ordered if r.status == "failed"]:
        raise RunsFailed(
            f"{len(failed)} of {len(ordered)} runs failed: " + "; ".join(f"{r.run.name} ({r.error})" for r in failed)
        )
    if stopped := [r.run.name for r in ordered if r.status == STOPPED]:
        raise RunsStopped(
            f"{len(stopped)} of {len(ordered)} runs stopped by train.time_budget_h={budget.hours:g} "
            f"({', '.join(stopped)}): run the same command again to continue from their checkpoints"
        )
    return ordered


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
        "run %s (hash %s): %s, %s %s -> %s, accum %d (micro-batch %d), %d epochs, lr %g",
        run.name,
        identity,
        run.arch,
        run.resize,
        list(run.item_size),
        list(run.size),
        run.accum,
        run.micro_batch,
        run.epochs,
        run.lr,
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
    )


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
                "valid err": num(r.valid_error, ".4f"),
                "valid err TTA": num(r.valid_error_tta, ".4f"),
                "minutes": f"{r.minutes:.1f}",
            }
            for r in results
        ]
    )
