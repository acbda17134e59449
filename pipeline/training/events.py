"""A run's life as named events that code outside training listens to. A tracker (MLflow, TensorBoard),
pseudo-labelling or distillation attaches here, not inside the job's scheduling or the fit.

Each event calls its listeners with keyword arguments; a listener names the ones it needs and takes
`**_` for the rest, so that a field added later breaks none:

  started      run, run_hash, path: the run starts training (its lock taken), to write the prediction file `path`
  epoch_ended  run, fit, epoch, step, frozen, train_loss, valid_loss, metrics, lr, seconds, history: an epoch
               of the run ended (after its checkpoint). `fit`: which of the run's fits (0-based: fine_tune's
               frozen stage is fit 0), `epoch`: 0-based in that fit, `step`: 0-based over the run's fits,
               `frozen`: the body was frozen, `metrics`: the recorder's metrics by name (error_rate, ...),
               `lr`: the head's mean learning rate in the epoch, `history`: the run's records so far
               (pipeline.training.history), a resumed run's earlier epochs included, this one last
  finished     run, preds, path: the run's Predictions were saved to `path`
  skipped      run, preds, path: `path` already holds the Predictions of this run (same run hash)
  failed       run, error: the run failed with the exception `error`; the job goes on with its next run

`run` is the RunSpec. A run another job is training, or one the time budget stops, fires none of
finished, skipped and failed. Listeners come from config (train.hooks: objects whose methods are named
after events, instantiated like train.callbacks) or from code (`subscribe`). A listener that raises is
logged as a warning: it never fails a run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from functools import partial
from typing import TYPE_CHECKING, Any

from pipeline.errors import PipelineError, one_line

if TYPE_CHECKING:
    from fastai.callback.core import Callback

    from pipeline.training.specs import RunSpec

log = logging.getLogger(__name__)

EVENTS = ("started", "epoch_ended", "finished", "skipped", "failed")
Listener = Callable[..., object]


def _name(listener: Listener) -> str:
    return getattr(listener, "__qualname__", None) or repr(listener)


class RunEvents:
    """Listeners by event name, called in the order they subscribed."""

    def __init__(self) -> None:
        self.listeners: dict[str, list[Listener]] = {event: [] for event in EVENTS}

    def subscribe(self, event: str, listener: Listener) -> Callable[[], None]:
        """Call `listener(**payload)` at every `event`; returns what unsubscribes it."""
        if event not in self.listeners:
            raise PipelineError(f"no run event {event!r}: listen to {', '.join(EVENTS)}")
        self.listeners[event].append(listener)
        return partial(self.listeners[event].remove, listener)

    def attach(self, hook: object) -> None:
        """Subscribe each of `hook`'s methods named after an event: one object can follow a run's whole life."""
        methods = {event: getattr(hook, event) for event in EVENTS if callable(getattr(hook, event, None))}
        if not methods:
            raise PipelineError(
                f"train.hooks: {type(hook).__name__} has no method named after a run event ({', '.join(EVENTS)})"
            )
        for event, method in methods.items():
            self.subscribe(event, method)

    def emit(self, event: str, **payload: Any) -> None:
        """Call the event's listeners; one that raises is logged and the run goes on."""
        for listener in list(self.listeners[event]):
            try:
                listener(**payload)
            except Exception as e:  # outside code: a tracker's hiccup must not cost a run hours of training
                log.warning("run event %s: listener %s raised %s; the run goes on", event, _name(listener), one_line(e))

    def epoch_callback(self, run: RunSpec, history: Callback) -> Callback:
        """A fastai callback firing `epoch_ended` after each epoch that trained, with its record from the
        run's `history` callback (pipeline.training.history): after the Recorder (50), the history (55) and
        the epoch's checkpoint (60), before the time budget (70) may end the fit."""
        from fastai.callback.core import Callback

        events = self

        class EpochEvents(Callback):
            order = 65

            def after_epoch(self) -> None:
                if (record := history.fresh) is None:  # an epoch that trained nothing (skipped, get_preds)
                    return
                metrics = {k: v for k, v in record.items() if k not in _NOT_METRICS}
                events.emit(
                    "epoch_ended",
                    run=run,
                    fit=record["fit"],
                    epoch=record["epoch"],
                    step=record["step"],
                    frozen=record["frozen"],
                    train_loss=record.get("train_loss"),
                    valid_loss=record.get("valid_loss"),
                    metrics=metrics,
                    lr=record["lr"],
                    seconds=record["seconds"],
                    history=[dict(r) for r in history.records],
                )

        return EpochEvents()


_NOT_METRICS = ("fit", "epoch", "step", "frozen", "train_loss", "valid_loss", "lr", "seconds")


PROCESS = RunEvents()  # the listeners code subscribed: every job this process runs calls them


def subscribe(event: str, listener: Listener) -> Callable[[], None]:
    """Listen to `event` of every run this process trains from now on (pipeline.training.jobs.train_model);
    returns what unsubscribes it. The same from config: train.hooks."""
    return PROCESS.subscribe(event, listener)


def job_events(hooks: Iterable[Any], loggers: Iterable[object] = ()) -> RunEvents:
    """A job's events: the process's listeners, then the job's train.hooks, made once per job, so that a
    hook's state (a tracker's connection) spans the job's runs, then its loggers (logger=NAME, made by
    pipeline.training.loggers.job_loggers)."""
    from hydra.utils import instantiate

    events = RunEvents()
    for event, listeners in PROCESS.listeners.items():
        events.listeners[event].extend(listeners)
    for hook in hooks:
        try:
            made = instantiate(hook)
        except Exception as e:
            raise PipelineError(f"train.hooks: cannot make {hook.get('_target_')}: {one_line(e)}") from None
        events.attach(made)
    for logger in loggers:
        events.attach(logger)
    return events
