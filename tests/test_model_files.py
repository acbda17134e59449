"""Every model file in conf/model/ trains and predicts, each variant at its real item and augmentation
sizes (feature-layout bugs are size-specific): composed as the CLI composes it, built by training's own
run_learner (image cache, fused augmentation, channels-last), freeze and unfreeze, one optimizer step on
real Paddy photos, then a plain and a TTA prediction pass. Random weights (model.pretrained=false) and
batches of 2 (4 on CUDA: BATCH): no hub. A later variant of the same architecture and input size checks its
own data path alone (check_data_path)."""

import gc
import os
from pathlib import Path

import pytest
import torch

from tests.conftest import CONF, DEVICE, compose

MODEL_FILES = sorted(p.stem for p in (CONF / "model").glob("*.yaml"))
# Batches of 2 on the CPU, of 4 on CUDA: there, under fp16, randomly initialised EfficientNet-Lites overflow their
# early layers' gradients on 2 images (batch norm over 2 images' 2x2 maps divides by a near-zero spread) at every
# scale fp16's gradient scaler tries, so no step is ever taken. Seen on an H200 (effnet_lite1: 0 of 17 steps taken);
# on the CPU with fp16 autocast: lite1 at 3 of 4 seeds with 2 images, at none with 4.
BATCH = 4 if DEVICE == "cuda" else 2


@pytest.fixture
def all_cores():
    """Large models at real sizes use this test process's share of the cores (the suite's other tests run one
    torch thread: conftest): every core when it runs alone, one of two beside another xdist worker, where a
    second thread only spins waiting for a core the other worker holds."""
    threads = torch.get_num_threads()
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))
    yield
    torch.set_num_threads(threads)


def check_probs(probs: torch.Tensor, n: int, n_classes: int, what: str) -> None:
    assert probs.shape == (n, n_classes), what
    assert probs.isfinite().all(), what
    torch.testing.assert_close(probs.sum(1), torch.ones(n), msg=what)


def check_data_path(cfg, comp, run, size: tuple[int, ...]) -> None:
    """A variant whose model an earlier variant trained at the same size: its own resize, item size and
    augmentation, from the image cache to the model's input, for training and for TTA (the model's step at
    that size would repeat the earlier one: 30-45 s on a CPU for vit_large or swinv2_large)."""
    from pipeline.data.loaders import make_dataloaders

    dls = make_dataloaders(comp, run, valid_idx=[0], num_workers=0, device=DEVICE, perf=cfg.perf)
    assert tuple(dls.train.one_batch()[0].shape) == (BATCH, 3, *size), f"{run.name}: train batches"
    test = dls.test_dl(comp.test_files)
    assert tuple(test.one_batch()[0].shape) == (1, 3, *size), f"{run.name}: test batches"


def test_every_model_file_is_covered():
    assert {"convnext_large", "vit_large", "swin_large", "swinv2_large", "effnet_lite0"} <= set(MODEL_FILES)


@pytest.mark.slow
@pytest.mark.parametrize("model", MODEL_FILES)
def test_model_file_trains_and_predicts(model, paddy_root, tmp_path, all_cores):
    from pipeline.data.competition import Competition, scan_competition
    from pipeline.training.learner import MAX_SKIPPED_STEPS, run_learner
    from pipeline.training.pretrained import timm_kwargs
    from pipeline.training.specs import resolve_runs
    from pipeline.training.tta import tta
    from tests.callbacks import StepLog

    cfg = compose(
        "config",
        [
            f"+model={model}",
            "model.pretrained=false",
            f"model.batch_size={BATCH}",
            "train.accum=1",
            f"train.device={DEVICE}",
            "tta.n=1",
            f"data.root={paddy_root}",
            "data.num_workers=0",
            f"perf.cache_dir={tmp_path / 'cache'}",
        ],
    )
    full = scan_competition(Path(cfg.data.root))
    # BATCH + 1 training photos (1 held out, 1 batch left) and 1 test photo; all 10 classes in the vocab
    train = full.train_files[:: len(full.train_files) // (BATCH + 1)][: BATCH + 1]
    comp = Competition(full.root, full.vocab, train, full.test_files[:1])
    n_classes = len(comp.vocab)
    trained = set()  # (arch, size): a model once trained at a size, later variants check their data path
    for run in resolve_runs(cfg):
        size = run.size * 2 if len(run.size) == 1 else run.size
        if (run.arch, tuple(size)) in trained:
            check_data_path(cfg, comp, run, tuple(size))
            continue
        trained.add((run.arch, tuple(size)))
        step = StepLog(stop=True)  # one step taken, then the checks below
        learn = run_learner(cfg, comp, run, DEVICE, timm_kwargs(run), valid_idx=[0], cbs=[step])
        # the users' path on a GPU machine: fp16 on (and the model there, below); on the CPU, fp32
        assert any(type(cb).__name__ == "MixedPrecision" for cb in learn.cbs) == (DEVICE == "cuda"), run.name
        dls = learn.dls
        body, head = learn.model[0], learn.model[1]
        first = next(body.parameters())  # a stem / patch-embedding weight: no norm layer, so freezable
        head_w = next(p for p in head.parameters() if p.ndim == 2)
        # fine_tune's stages: body frozen (a param group of its own), then all unfrozen
        learn.freeze()
        assert len(learn.opt.param_groups) == 2, f"{run.name}: body and head param groups"
        assert not first.requires_grad and all(p.requires_grad for p in head.parameters()), run.name
        learn.unfreeze()
        assert all(p.requires_grad for p in learn.model.parameters()), run.name
        before, head_before = first.detach().cpu().clone(), head_w.detach().cpu().clone()  # the fit moves them
        with learn.no_bar(), learn.no_logging():
            learn.fit(1 if DEVICE == "cpu" else 1 + MAX_SKIPPED_STEPS, run.lr)  # an epoch is one step
            assert step.batch_shape == (BATCH, 3, *size), f"{run.name}: trained at {step.batch_shape}"
            assert first.device.type == DEVICE, f"{run.name}: trained on {first.device}"
            assert not torch.equal(first.detach().cpu(), before), f"{run.name}: the body did not train: {step}"
            assert not torch.equal(head_w.detach().cpu(), head_before), f"{run.name}: the head did not train: {step}"
            assert all(p.isfinite().all() for p in learn.model.parameters()), run.name

            probs, targs = learn.get_preds(ds_idx=1)
            check_probs(probs, 1, n_classes, f"{run.name}: valid")
            assert targs.shape == (1,)
            test_probs, none = tta(learn, dls.test_dl(comp.test_files), cfg.tta.n, cfg.tta.beta, cfg.perf.fast_tta)
            check_probs(test_probs, 1, n_classes, f"{run.name}: test TTA")
            assert none is None
        del learn, dls, body, head, first, head_w
        gc.collect()
