"""Find each run's smallest accum that fits a memory budget, as lesson 7 did by hand: train a few
steps on a small subset (the smallest class) at the real image size and read the peak memory.

On CUDA the peak is torch.cuda.max_memory_allocated, reset between settings. On the CPU it is the
peak resident memory of a child process per setting, so that one setting's memory does not leak
into the next one's figure.
"""

from __future__ import annotations

import logging
import multiprocessing
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from pipeline.data import Competition
from pipeline.errors import PipelineError
from pipeline.fileio import atomic_path
from pipeline.report import format_table
from pipeline.runs import RunSpec

log = logging.getLogger(__name__)
GB = 1024**3


@dataclass
class Measurement:
    run: str
    accum: int
    micro_batch: int
    peak_gb: float | None  # None: the setting ran out of memory
    fits: bool


def smallest_class(comp: Competition) -> Competition:
    """The competition restricted to its smallest class, the lesson's probe set."""
    by_label: dict[str, list[Path]] = {}
    for f in comp.train_files:
        by_label.setdefault(f.parent.name, []).append(f)
    label = min(by_label, key=lambda k: len(by_label[k]))
    return Competition(comp.root, comp.vocab, by_label[label], comp.test_files[:1])


def _train_steps(comp: Competition, run: RunSpec, device: str, timm_kwargs: dict[str, Any], steps: int) -> None:
    """`steps` optimizer steps of the whole (unfrozen) network: the peak of fine_tune's second stage."""
    from fastai.callback.core import Callback, CancelFitException

    from pipeline.data import make_dataloaders
    from pipeline.learner import build_learner
    from pipeline.splits import make_split

    class StopAfterSteps(Callback):
        def after_step(self) -> None:
            self.done = getattr(self, "done", 0) + 1
            if self.done >= steps:
                raise CancelFitException

    # the split hardly matters (validation never runs); holding out a fifth keeps training's batch checks
    split = make_split([f.parent.name for f in comp.train_files], "random", valid_pct=0.2, seed=0)
    dls = make_dataloaders(comp, run, valid_idx=split.valid_idx, num_workers=0, device=device)
    learn = build_learner(dls, run, device, timm_kwargs, [StopAfterSteps()])
    learn.unfreeze()
    with learn.no_bar(), learn.no_logging():
        learn.fit(1, run.lr)


def _child(comp: Competition, run: RunSpec, timm_kwargs: dict[str, Any], steps: int, queue: Any) -> None:
    import resource

    _train_steps(comp, run, "cpu", timm_kwargs, steps)
    queue.put(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GB)  # Linux reports KiB


def peak_memory_gb(
    comp: Competition, run: RunSpec, device: str, timm_kwargs: dict[str, Any], steps: int
) -> float | None:
    """Peak memory of `steps` training steps at the run's accum, or None if it ran out of memory."""
    if device == "cuda":
        import gc

        import torch

        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        try:
            _train_steps(comp, run, device, timm_kwargs, steps)
        except torch.OutOfMemoryError:
            return None
        finally:
            gc.collect()
            torch.cuda.empty_cache()
        return torch.cuda.max_memory_allocated() / GB
    ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: no memory inherited from this one
    queue = ctx.Queue()
    child = ctx.Process(target=_child, args=(comp, run, timm_kwargs, steps, queue))
    child.start()
    child.join()
    if child.exitcode != 0:  # killed for memory, or failed: the setting does not run here
        log.warning("%s at accum %d: the probe process exited with %s", run.name, run.accum, child.exitcode)
        return None
    return queue.get()


def probe_run(
    comp: Competition,
    run: RunSpec,
    device: str,
    timm_kwargs: dict[str, Any],
    accums: list[int],
    budget_gb: float,
    steps: int,
) -> list[Measurement]:
    """Measure at each accum in turn (those dividing the batch), stopping at the first that fits."""
    results = []
    for accum in accums:
        if run.batch_size % accum:
            continue
        trial = replace(run, accum=accum)
        peak = peak_memory_gb(comp, trial, device, timm_kwargs, steps)
        fits = peak is not None and peak <= budget_gb
        results.append(Measurement(run.name, accum, trial.micro_batch, peak, fits))
        log.info(
            "%s: accum %d, micro-batch %d: peak %s",
            run.name,
            accum,
            trial.micro_batch,
            "out of memory" if peak is None else f"{peak:.2f} GB",
        )
        if fits:
            break
    return results


def chosen_accums(measurements: list[Measurement]) -> dict[str, int]:
    """Each run's smallest accum that fit the budget."""
    chosen: dict[str, int] = {}
    for m in measurements:
        if m.fits and m.run not in chosen:
            chosen[m.run] = m.accum
    return chosen


def probe_table(measurements: list[Measurement], budget_gb: float) -> str:
    chosen = chosen_accums(measurements)
    return format_table(
        [
            {
                "run": m.run,
                "accum": m.accum,
                "micro-batch": m.micro_batch,
                "peak GB": "OOM" if m.peak_gb is None else f"{m.peak_gb:.2f}",
                f"fits {budget_gb:g} GB": "yes" if m.fits else "no",
                "chosen": "<-" if chosen.get(m.run) == m.accum else "",
            }
            for m in measurements
        ]
    )


def write_accums(path: str | Path, chosen: dict[str, int], note: str) -> Path:
    """The chosen accum per run, as a YAML file training reads (see read_accums)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(f"# {note}\n" + yaml.safe_dump(chosen, sort_keys=True))
    return path


def read_accums(path: str | Path) -> dict[str, int]:
    """A file written by write_accums; {} if there is none."""
    path = Path(path)
    if not path.is_file():
        return {}
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict) or not all(isinstance(v, int) and v > 0 for v in data.values()):
        raise PipelineError(f"{path} is not a probe file (run name: accum): rerun pipeline.probe or delete it")
    return {str(k): v for k, v in data.items()}
