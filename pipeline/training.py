"""Train every run of a model: fit, TTA on the test and validation sets, save the prediction file."""

from __future__ import annotations

import gc
import logging
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipeline.config import to_container
from pipeline.data import Competition, make_dataloaders, scan_competition
from pipeline.predictions import Predictions, save
from pipeline.report import format_table
from pipeline.runs import RunSpec, resolve_runs
from pipeline.splits import make_split

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    run: RunSpec
    path: Path
    valid_error: float
    valid_error_tta: float
    minutes: float


def train_run(cfg: Any, comp: Competition, run: RunSpec, device: str, timm_kwargs: dict[str, Any]) -> Predictions:
    """Fit one run and return its TTA predictions on the test and validation images."""
    import torch

    from pipeline.learner import build_learner, fit, last_valid_error

    split = make_split(
        [p.parent.name for p in comp.train_files],
        cfg.data.split,
        valid_pct=cfg.data.valid_pct,
        seed=cfg.data.seed,
        fold=run.fold,
        n_folds=run.n_folds,
    )
    dls = make_dataloaders(comp, run, valid_idx=split.valid_idx, num_workers=cfg.data.num_workers, device=device)
    learn = build_learner(dls, run, device, timm_kwargs)
    try:
        start = time.perf_counter()
        fit(learn, run)
        fit_s = time.perf_counter() - start
        valid_error = last_valid_error(learn)
        valid_probs_plain, _ = learn.get_preds(ds_idx=1)
        start = time.perf_counter()
        test_probs, _ = learn.tta(dl=dls.test_dl(comp.test_files), n=cfg.tta.n, beta=cfg.tta.beta)
        valid_probs, valid_targets = learn.tta(ds_idx=1, n=cfg.tta.n, beta=cfg.tta.beta)
        tta_s = time.perf_counter() - start
        train_root = comp.root / "train_images"
        valid_ids = [str(Path(p).relative_to(train_root)) for p in dls.valid_ds.items]
    finally:
        del learn, dls
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()
    valid_probs = valid_probs.float()
    valid_error_tta = float((valid_probs.argmax(1) != valid_targets).float().mean())
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
        metrics={"valid_error": valid_error, "valid_error_tta": valid_error_tta},
        timings={"fit_s": fit_s, "tta_s": tta_s},
        run_spec=asdict(run),
        config=to_container(cfg),
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        device=device,
    )


def train_model(cfg: Any) -> list[RunResult]:
    """Check everything a model's runs need, then train them one after the other."""
    from pipeline.learner import pick_device
    from pipeline.weights import timm_kwargs

    runs = resolve_runs(cfg)
    comp = scan_competition(cfg.data.root)
    device = pick_device(cfg.train.device)
    kwargs = {run.name: timm_kwargs(run) for run in runs}  # weights problems fail before any training
    log.info(
        "%s: %d runs on %s; %d training images in %d classes, %d test images",
        cfg.model.name,
        len(runs),
        device,
        len(comp.train_files),
        len(comp.vocab),
        len(comp.test_files),
    )
    results = []
    for run in runs:
        log.info(
            "run %s: %s, %s %s -> %s, accum %d (micro-batch %d), %d epochs, lr %g",
            run.name,
            run.arch,
            run.resize,
            list(run.item_size),
            list(run.size),
            run.accum,
            run.micro_batch,
            run.epochs,
            run.lr,
        )
        start = time.perf_counter()
        preds = train_run(cfg, comp, run, device, kwargs[run.name])
        path = save(preds, Path(cfg.paths.preds) / f"{run.name}.pt")
        results.append(
            RunResult(
                run,
                path,
                preds.metrics["valid_error"],
                preds.metrics["valid_error_tta"],
                (time.perf_counter() - start) / 60,
            )
        )
        log.info("run %s: predictions saved to %s", run.name, path)
    log.info("\n%s", results_table(results))
    return results


def results_table(results: list[RunResult]) -> str:
    return format_table(
        [
            {
                "run": r.run.name,
                "arch": r.run.arch,
                "item tfm": f"{r.run.resize} {'x'.join(map(str, r.run.item_size))}",
                "size": "x".join(map(str, r.run.size)),
                "accum": r.run.accum,
                "epochs": r.run.epochs,
                "valid err": f"{r.valid_error:.4f}",
                "valid err TTA": f"{r.valid_error_tta:.4f}",
                "minutes": f"{r.minutes:.1f}",
            }
            for r in results
        ]
    )
