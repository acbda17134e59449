"""The schedule registry (conf/schedule/): how a run spends its epochs and learning rate. Each option's
schema, its fit (a fastai fit method) and a line of description; `fit(learn, run, start_epoch)` trains
with the run's schedule, resuming its final fit after `start_epoch` epochs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pipeline.config.ranges import COUNT, FRACTION, POSITIVE, ranged
from pipeline.config.recipe import ScheduleConfig
from pipeline.registry import Registry

if TYPE_CHECKING:
    from fastai.learner import Learner

    from pipeline.training.specs import RunSpec

Fit = Callable[["Learner", "RunSpec", int], None]  # (learner, run, start_epoch)
SCHEDULES: Registry[Fit] = Registry("schedule", where="conf/schedule/", group="schedule")


@dataclass
class FineTuneConfig(ScheduleConfig):
    name: str = "fine_tune"
    freeze_epochs: int = ranged(1, COUNT)
    lr_mult: float = ranged(100.0, POSITIVE)
    pct_start: float = ranged(0.3, FRACTION)
    div: float = ranged(5.0, POSITIVE)


@dataclass
class OneCycleConfig(ScheduleConfig):
    name: str = "one_cycle"
    lr_mult: float = ranged(1.0, POSITIVE)
    pct_start: float = ranged(0.25, FRACTION)
    div: float = ranged(25.0, POSITIVE)
    div_final: float = ranged(1e5, POSITIVE)


@dataclass
class FlatCosConfig(ScheduleConfig):
    name: str = "flat_cos"
    lr_mult: float = ranged(1.0, POSITIVE)
    pct_start: float = ranged(0.75, FRACTION)
    div_final: float = ranged(1e5, POSITIVE)


def fine_tunes(run: RunSpec) -> bool:
    """Whether the run trains with fine_tune: its schedule, on pretrained weights."""
    return run.recipe.schedule["name"] == "fine_tune" and run.pretrained


def final_fit(run: RunSpec) -> int:
    """Which of the run's fits (0-based) trains its `run.epochs`: fine_tune's unfrozen stage is its second."""
    return 1 if fine_tunes(run) else 0


def total_epochs(run: RunSpec) -> int:
    """The run's epochs over all its fits: fine_tune's frozen ones included."""
    return run.epochs + (run.recipe.schedule["freeze_epochs"] if fine_tunes(run) else 0)


def fit(learn: Learner, run: RunSpec, start_epoch: int = 0) -> None:
    """Train with the run's schedule; `start_epoch` resumes the final fit (final_fit) after that many epochs."""
    SCHEDULES[run.recipe.schedule["name"]].build(learn, run, start_epoch)


@SCHEDULES.register(
    "fine_tune", "fastai's fine_tune: the head alone, then all (the reference recipe's)", FineTuneConfig
)
def _fine_tune(learn: Learner, run: RunSpec, start_epoch: int) -> None:
    """Without pretrained weights there is nothing to fine-tune: one cycle at fastai's defaults."""
    s = run.recipe.schedule
    if not fine_tunes(run):
        learn.fit_one_cycle(run.epochs, run.lr, start_epoch=start_epoch)
        return
    learn.fine_tune(
        run.epochs,
        run.lr,
        freeze_epochs=s["freeze_epochs"],
        lr_mult=s["lr_mult"],
        pct_start=s["pct_start"],
        div=s["div"],
        start_epoch=start_epoch,
    )


@SCHEDULES.register(
    "one_cycle", "fastai's fit_one_cycle: every layer from the start, warm-up then anneal", OneCycleConfig
)
def _one_cycle(learn: Learner, run: RunSpec, start_epoch: int) -> None:
    s = run.recipe.schedule
    lr = slice(run.lr / s["lr_mult"], run.lr)  # body, head
    learn.fit_one_cycle(
        run.epochs, lr, div=s["div"], div_final=s["div_final"], pct_start=s["pct_start"], start_epoch=start_epoch
    )


@SCHEDULES.register("flat_cos", "fastai's fit_flat_cos: flat, then cosine annealing (for ranger)", FlatCosConfig)
def _flat_cos(learn: Learner, run: RunSpec, start_epoch: int) -> None:
    """fastai's Learner.fit_flat_cos, which fits from epoch 0 whatever start_epoch it is given (fastai
    2.8): the same ParamScheduler, with start_epoch passed on so that a resumed run skips its done epochs."""
    import numpy as np
    from fastai.callback.schedule import ParamScheduler, combined_cos

    s = run.recipe.schedule
    if learn.opt is None:
        learn.create_opt()
    learn.opt.set_hyper("lr", slice(run.lr / s["lr_mult"], run.lr))
    lrs = np.array([h["lr"] for h in learn.opt.hypers])
    scheduler = ParamScheduler({"lr": combined_cos(s["pct_start"], lrs, lrs, lrs / s["div_final"])})
    learn.fit(run.epochs, cbs=scheduler, start_epoch=start_epoch)
