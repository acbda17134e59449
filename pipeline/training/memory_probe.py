"""Find each run's smallest accum that fits a memory budget, as lesson 7 did by hand: train a few
steps on a small subset (the smallest class, topped up to a full batch) at the real image size, on
training's own data path (pipeline.training.learner.run_learner), and read the peak memory.

On CUDA the peak is torch.cuda.max_memory_allocated, reset between settings. On the CPU it is the
peak resident memory of a child process per setting (training/processes), so that one setting's memory
does not leak into the next one's figure.
"""

from __future__ import annotations

import itertools
import logging
import signal
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from queue import Empty
from typing import Any

import yaml

from pipeline.data.competition import Competition
from pipeline.errors import PipelineError, one_line
from pipeline.fileio import write_atomic
from pipeline.tables import format_table
from pipeline.training import processes
from pipeline.training.specs import RunSpec

log = logging.getLogger(__name__)
GB = 1024**3


@dataclass
class Measurement:
    run: str
    accum: int
    micro_batch: int
    peak_gb: float | None  # None: the setting ran out of memory
    fits: bool


def probe_subset(comp: Competition, n_images: int) -> Competition:
    """The lesson's probe set, the smallest class, topped up from the other classes in turn (and then
    repeated) to `n_images`, so that any folder training works on holds one full batch."""
    by_label: dict[str, list[Path]] = {}
    for f in comp.train_files:
        by_label.setdefault(f.parent.name, []).append(f)
    order = sorted(by_label, key=lambda k: (len(by_label[k]), k))
    files = list(by_label[order[0]])
    others = [f for group in itertools.zip_longest(*(by_label[k] for k in order[1:])) for f in group if f]
    pool = itertools.cycle(others + files)  # what tops up: the other classes first, then repeats
    while len(files) < n_images:
        files.append(next(pool))
    return Competition(comp.root, comp.vocab, files, comp.test_files[:1], layout=comp.layout)


def _train_steps(cfg: Any, comp: Competition, run: RunSpec, device: str, timm_kwargs: dict[str, Any]) -> None:
    """`probe.steps` optimizer steps of the whole (unfrozen) network, on training's own data path: the peak of
    fine_tune's second stage. The subset is one batch and one held-out image, so an epoch is one step. On CUDA,
    fp16's gradient scaler skips the steps whose gradients overflow while it finds its scale (halving it from
    2**16 each time): those make no optimizer state and do not count, or the peak would miss Adam's state."""
    from fastai.callback.core import Callback, CancelFitException

    from pipeline.training.learner import MAX_SKIPPED_STEPS, run_learner, step_taken

    steps = cfg.probe.steps

    class StopAfterSteps(Callback):
        def after_step(self) -> None:
            if not step_taken(self.learn):
                return
            self.done = getattr(self, "done", 0) + 1
            if self.done >= steps:
                raise CancelFitException

    valid_idx = [len(comp.train_files) - 1]
    learn = run_learner(cfg, comp, run, device, timm_kwargs, valid_idx=valid_idx, cbs=[StopAfterSteps()])
    learn.unfreeze()
    with learn.no_bar(), learn.no_logging():
        learn.fit(steps + MAX_SKIPPED_STEPS, run.lr)


def _is_oom(e: BaseException) -> bool:
    import torch

    return isinstance(e, (torch.OutOfMemoryError, MemoryError))


def _child(cfg: Any, comp: Competition, run: RunSpec, timm_kwargs: dict[str, Any], queue: Any) -> None:
    """One setting in a fresh process; reports ("peak", GB), ("oom", why) or ("error", why)."""
    try:
        _train_steps(cfg, comp, run, "cpu", timm_kwargs)
    except Exception as e:
        queue.put(("oom" if _is_oom(e) else "error", one_line(e) if not isinstance(e, PipelineError) else str(e)))
        return
    queue.put(("peak", _own_peak_rss_kib() * 1024 / GB))


def _own_peak_rss_kib() -> int:
    """This process's own peak resident memory (VmHWM). Not getrusage's ru_maxrss: Linux carries the forked
    parent's resident size across exec into it, so every child of a 1.7 GB parent reported 1.7 GB."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))


def peak_memory_gb(cfg: Any, comp: Competition, run: RunSpec, device: str, timm_kwargs: dict[str, Any]) -> float | None:
    """Peak memory of `probe.steps` training steps at the run's accum, or None if it ran out of memory.
    Any other failure is the probe's own error, raised as a one-line PipelineError."""
    if device == "cuda":
        import gc

        import torch

        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        try:
            _train_steps(cfg, comp, run, device, timm_kwargs)
        except torch.OutOfMemoryError:
            return None
        finally:
            gc.collect()
            torch.cuda.empty_cache()
        # what the caching allocator held: nearer the process's figure in nvidia-smi, which adds the CUDA context
        log.info("%s at accum %d: peak reserved %.2f GB", run.name, run.accum, torch.cuda.max_memory_reserved() / GB)
        return torch.cuda.max_memory_allocated() / GB
    ctx = processes.context()  # a clean process, not a fork of this one: nothing of its memory in the peak
    queue = ctx.Queue()
    child = ctx.Process(target=_child, args=(cfg, comp, run, timm_kwargs, queue))
    child.start()
    child.join()
    try:
        kind, value = queue.get(timeout=5)
    except Empty:  # the child died before reporting
        kind, value = None, None
    if kind == "peak":
        return value
    if kind == "oom" or child.exitcode == -signal.SIGKILL:  # the kernel's OOM killer sends SIGKILL
        log.warning("%s at accum %d: out of memory (%s)", run.name, run.accum, value or "killed")
        return None
    why = value or f"the probe process exited with code {child.exitcode}"
    raise PipelineError(f"probing {run.name} at accum {run.accum} failed: {why}")


def probe_run(
    cfg: Any,
    comp: Competition,
    run: RunSpec,
    device: str,
    timm_kwargs: dict[str, Any],
) -> list[Measurement]:
    """Measure at each of probe.accums in turn (those dividing the batch), stopping at the first that
    fits probe.budget_gb."""
    budget_gb, results = cfg.probe.budget_gb, []
    for accum in cfg.probe.accums:
        if run.batch_size % accum:
            continue
        trial = replace(run, accum=accum)
        peak = peak_memory_gb(cfg, comp, trial, device, timm_kwargs)
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
    write_atomic(path, f"# {note}\n" + yaml.safe_dump(chosen, sort_keys=True))
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


def probe_model(cfg: Any) -> dict[str, int]:
    """Probe every run of cfg.model; print the table; write the choices when probe.write is set.
    Raises PipelineError when some run fits at no accum tried."""
    from pipeline.config import check_ranges
    from pipeline.data.competition import scan_competition
    from pipeline.data.layout import Layout
    from pipeline.training.learner import pick_device
    from pipeline.training.pretrained import timm_kwargs
    from pipeline.training.specs import resolve_runs

    check_ranges(cfg)
    runs = resolve_runs(cfg)
    comp = scan_competition(cfg.data.root, Layout.from_config(cfg.data))
    device = pick_device(cfg.train.device)
    p = cfg.probe
    measurements = []
    for run in runs:
        subset = probe_subset(comp, run.batch_size + 1)
        log.info(
            "probing %s on %s with %d images (smallest class %s first), budget %g GB",
            run.name,
            device,
            len(subset.train_files),
            subset.train_files[0].parent.name,
            p.budget_gb,
        )
        measurements += probe_run(cfg, subset, run, device, timm_kwargs(run))
    log.info("\n%s", probe_table(measurements, p.budget_gb))
    chosen = chosen_accums(measurements)
    if missing := [r.name for r in runs if r.name not in chosen]:
        raise PipelineError(
            f"no accum in {list(p.accums)} fits {p.budget_gb:g} GB for {', '.join(missing)}: "
            "try larger accums (probe.accums), a smaller size or batch_size"
        )
    if p.write:
        note = f"pipeline.probe on {device}, budget {p.budget_gb:g} GB, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
        path = write_accums(Path(cfg.paths.probe) / f"{cfg.model.name}.yaml", chosen, note)
        log.info("chosen accums written to %s", path)
    return chosen
