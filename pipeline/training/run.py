"""Train one run: its split, its Learner, lr_find, the fit (resumed from its checkpoint, within the time
budget, firing epoch_ended), TTA on the test and validation sets, and the Predictions of its prediction
file. Which runs train, and what happens when one fails, is pipeline.training.jobs's business.
"""

from __future__ import annotations

import gc
import logging
import time
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.config import to_container
from pipeline.data.competition import Competition
from pipeline.data.splits import Split, make_split
from pipeline.data.train_csv import AuxTarget, read_aux_targets
from pipeline.predictions import Predictions
from pipeline.training import distributed
from pipeline.training.checkpoints import RunCheckpoint
from pipeline.training.distributed import alone, data_parallel, rank0_first, rank_run, sharded, shared
from pipeline.training.events import RunEvents
from pipeline.training.provenance import environment
from pipeline.training.recipe import recipe_columns
from pipeline.training.specs import RunSpec
from pipeline.training.teachers import Teachers
from pipeline.training.time_budget import TimeBudget, TimeBudgetSpent

if TYPE_CHECKING:
    from fastai.callback.core import Callback
    from fastai.learner import Learner
    from torch import Tensor

log = logging.getLogger(__name__)


def run_split(cfg: Any, comp: Competition, run: RunSpec, seed: int | None) -> Split:
    """The run's validation images under data.split (a fold of it under kfold)."""
    labels = [p.parent.name for p in comp.train_files]
    return make_split(
        labels, cfg.data.split, valid_pct=cfg.data.valid_pct, seed=seed, fold=run.fold, n_folds=run.n_folds
    )


@dataclass
class RunOutputs:
    """What the fitted Learner gives the prediction file, read before the Learner is freed."""

    valid_error: float  # as the recorder logged the last epoch
    valid_probs_plain: Tensor  # the label's, without TTA
    aux_plain: list[tuple[Tensor, Tensor]]  # each extra target's probabilities and targets, without TTA
    test_probs: Tensor
    valid_probs: Tensor
    valid_targets: Tensor
    valid_ids: list[str]
    timings: dict[str, float]
    lr_found: float | None
    history: list[dict[str, Any]]  # one record per epoch (pipeline.training.history)


def train_run(
    cfg: Any,
    comp: Competition,
    run: RunSpec,
    device: str,
    timm_kwargs: dict[str, Any],
    ckpt: RunCheckpoint | None,
    budget: TimeBudget | None = None,
    events: RunEvents | None = None,
    teachers: Teachers | None = None,
) -> Predictions:
    """Fit one run (resuming from its checkpoint if any) and return its TTA predictions. `teachers`: the
    blends the job's runs learn from (pipeline.training.teachers), if any.
    Raises TimeBudgetSpent when `budget` stopped the fit before its last epoch."""
    from hydra.utils import instantiate

    from pipeline.training.history import interactive, run_history
    from pipeline.training.learner import run_learner
    from pipeline.training.recipe import seeded
    from pipeline.training.schedules import total_epochs

    # kept on resume; rank 0's on every rank of a group, as are the epochs done
    split = run_split(cfg, comp, run, shared(lambda: ckpt.split_seed(cfg.data.seed)) if ckpt else cfg.data.seed)
    cbs = [instantiate(c) for c in cfg.train.callbacks]
    start_epoch = shared(lambda: resumed_epochs(run, ckpt))
    aux = read_aux_targets(comp, run.recipe.aux_targets)
    history = run_history(run.name, total_epochs(run), plain=not interactive())
    targets = teachers.targets(comp, run, split.valid_idx) if teachers else None
    with seeded(run.recipe.seed):
        learn = rank0_first(  # rank 0 builds the image cache (and fetches weights), the others read them
            lambda: run_learner(
                cfg, comp, rank_run(run), device, timm_kwargs, valid_idx=split.valid_idx, cbs=cbs, targets=targets
            )
        )
        data_parallel(learn, run, device, cfg.train.sync_bn)
        try:
            run, lr_found = with_found_lr(learn, run, ckpt)
            fit_s = fit_run(learn, run, start_epoch, ckpt, budget, events, history)
            outputs = read_outputs(cfg, comp, learn, aux, fit_s=fit_s, lr_found=lr_found, history=history.records)
        finally:
            del learn, history  # the last references (the history callback holds the Learner): memory can go
            free_memory(device)
    preds = predictions(cfg, comp, run, device, split, aux, outputs)
    preds.teacher = targets.record if targets else {}
    return preds


def resumed_epochs(run: RunSpec, ckpt: RunCheckpoint | None) -> int:
    """How many epochs of its final fit the run's checkpoint holds (0: it starts afresh)."""
    if not (ckpt and (found := ckpt.latest())):
        return 0
    log.info("run %s: resuming from %s (%d of %d epochs done)", run.name, found[0], found[1], run.epochs)
    return found[1]


def with_found_lr(learn: Learner, run: RunSpec, ckpt: RunCheckpoint | None) -> tuple[RunSpec, float | None]:
    """Under train.lr=find, the run with the lr fastai's lr_find suggests, and that lr; a resumed run keeps
    the lr it found (its checkpoint remembers it), so that its remaining epochs follow the same schedule."""
    from pipeline.training.learner import find_lr

    if not run.recipe.lr_find:
        return run, None

    def find() -> float:  # on rank 0 alone in a group: one process's lr_find, its lr everyone's
        with alone(learn):
            return find_lr(learn, run.recipe.lr_find_steps)

    lr_found = float(shared(lambda: ckpt.remember("lr_found", find) if ckpt else find()))
    log.info("run %s: lr_find suggests lr %.3g", run.name, lr_found)
    return replace(run, lr=lr_found), lr_found


def fit_run(
    learn: Learner,
    run: RunSpec,
    start_epoch: int,
    ckpt: RunCheckpoint | None,
    budget: TimeBudget | None,
    events: RunEvents | None,
    history: Callback,
) -> float:
    """Fit with the run's schedule from `start_epoch`; the seconds it took. The history, time budget,
    checkpoint and epoch events join after lr_find, whose own fit must not count as one of the run's.
    Raises TimeBudgetSpent when the budget stopped the fit before its last epoch."""
    from pipeline.training.schedules import final_fit, fit

    stop = budget.callback(final_fit(run)) if budget else None
    save = ckpt.callback(final_fit=final_fit(run)) if ckpt else None
    for cb in (history, stop, save, events.epoch_callback(run, history) if events else None):
        if cb:
            learn.add_cb(cb)
    start = time.perf_counter()
    fit(learn, run, start_epoch)
    fit_s = time.perf_counter() - start
    if stop and stop.stopped:
        raise TimeBudgetSpent(f"stopped after epoch {stop.epoch + 1} of fit {stop.fit_index + 1}")
    return fit_s


def read_outputs(
    cfg: Any,
    comp: Competition,
    learn: Learner,
    aux: list[AuxTarget],
    fit_s: float,
    lr_found: float | None,
    history: list[dict[str, Any]],
) -> RunOutputs:
    """The fitted Learner's error, its plain validation pass (the label's and each extra target's
    probabilities) and its TTA on the test and validation sets, in that order: TTA clears the recorder."""
    from fastcore.basics import noop

    from pipeline.data.train_csv import target_sizes
    from pipeline.training.learner import last_valid_error
    from pipeline.training.targets import split_outputs
    from pipeline.training.tta import tta

    valid_error = last_valid_error(learn)
    valid_items = learn.dls.valid_ds.items
    # each rank of a group on its share of the images, gathered in their order (pipeline.training.distributed)
    raw, targets = joined(sharded(lambda items: learn.get_preds(dl=labelled_dl(learn, items), act=noop), valid_items))
    (valid_probs_plain, _), *aux_plain = split_outputs(raw, targets, target_sizes(len(comp.vocab), aux))
    start = time.perf_counter()
    n, beta, fast = cfg.tta.n, cfg.tta.beta, cfg.perf.fast_tta
    test_probs, _ = joined(sharded(lambda files: tta(learn, learn.dls.test_dl(files), n, beta, fast), comp.test_files))
    valid_probs, valid_targets = joined(
        sharded(lambda items: tta(learn, labelled_dl(learn, items), n, beta, fast), valid_items)
    )
    tta_s = time.perf_counter() - start
    return RunOutputs(
        valid_error=valid_error,
        valid_probs_plain=valid_probs_plain,
        aux_plain=aux_plain,
        test_probs=test_probs,
        valid_probs=valid_probs.float(),
        valid_targets=valid_targets,
        valid_ids=[comp.image_id(Path(p)) for p in valid_items],
        timings={"fit_s": fit_s, "tta_s": tta_s},
        lr_found=lr_found,
        history=[dict(r) for r in history],
    )


def labelled_dl(learn: Learner, items: list[Any]) -> Any:
    """The validation images `items` (all or a rank's share) as the validation set is loaded: in order,
    with their targets."""
    if len(items) == len(learn.dls.valid_ds.items):
        return learn.dls.valid.new(shuffle=False, drop_last=False)
    return learn.dls.test_dl(items, with_labels=True)


def joined(parts: list[tuple[Any, ...]]) -> tuple[Any, ...]:
    """Ranks' (probabilities, targets) pairs as one, in rank order: tensors concatenated, a tuple of them
    (one per target) element-wise, None (a test set's targets) kept."""
    import torch

    def cat(values: list[Any]) -> Any:
        if values[0] is None:
            return None
        if isinstance(values[0], (tuple, list)):
            return type(values[0])(cat(list(v)) for v in zip(*values, strict=True))
        return torch.cat(values)

    return tuple(cat(list(v)) for v in zip(*parts, strict=True))


def free_memory(device: str) -> None:
    """Collect a run's dropped Learner and hand CUDA's cached blocks back, so that the next run (or an
    out-of-memory retry) starts with all the memory."""
    import torch

    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def error_rate(probs: Tensor, targets: Tensor) -> float:
    """fastai's error_rate, on probabilities computed outside a fit (TTA's, an extra target's)."""
    return float((probs.argmax(1) != targets).float().mean())


def predictions(
    cfg: Any, comp: Competition, run: RunSpec, device: str, split: Split, aux: list[AuxTarget], out: RunOutputs
) -> Predictions:
    """The run's prediction file as data: probabilities, ids, split, metrics and how it was made."""
    aux_records = {
        t.name: {"vocab": t.vocab, "weight": t.weight, "valid_probs": probs.contiguous(), "valid_targets": targs}
        for t, (probs, targs) in zip(aux, out.aux_plain, strict=True)
    }
    return Predictions(
        run=run.name,
        member=run.member,
        arch=run.arch,
        vocab=list(comp.vocab),
        test_ids=comp.test_ids,
        test_probs=out.test_probs.float().contiguous(),
        valid_ids=out.valid_ids,
        valid_probs=out.valid_probs.contiguous(),
        valid_probs_plain=out.valid_probs_plain.contiguous(),
        valid_targets=out.valid_targets.long(),
        split=split.record(),
        weight=run.weight,
        metrics={
            "valid_error": out.valid_error,
            "valid_error_tta": error_rate(out.valid_probs, out.valid_targets),
            **{f"valid_error_{t}": error_rate(a["valid_probs"], a["valid_targets"]) for t, a in aux_records.items()},
        },
        timings=out.timings,
        run_spec=asdict(run),
        config=to_container(cfg),
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        device=device,
        environment=environment(device)
        | {
            "split_seed_configured": cfg.data.seed is not None,
            "world_size": distributed.WORLD.size,  # DDP ranks it trained on (pipeline.training.distributed)
            # the data it was trained on, as in its run hash
            "data_fingerprint": comp.fingerprint_for(run.recipe.aux_targets),
        },
        aux_targets=aux_records,
        lr_found=out.lr_found,
        recipe_summary=recipe_columns(run.recipe),
        history=out.history,
    )
