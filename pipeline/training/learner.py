"""Build a fastai Learner for a run: timm body, gradient accumulation, fp16 on CUDA only,
and the run's recipe (pipeline.training.recipe): optimizer, loss, targets and callbacks; lr_find."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from pipeline.errors import PipelineError
from pipeline.training.specs import RunSpec

if TYPE_CHECKING:
    from fastai.callback.core import Callback
    from fastai.data.core import DataLoaders
    from fastai.learner import Learner

    from pipeline.data.competition import Competition
    from pipeline.data.soft_targets import SoftTargets
    from pipeline.data.train_csv import AuxTarget


class NonFiniteLoss(RuntimeError):
    """The training loss became NaN or infinite."""


def pick_device(choice: str) -> str:
    """'auto' -> 'cuda' when a GPU is visible, else 'cpu'."""
    import torch

    if choice == "cuda" and not torch.cuda.is_available():
        raise PipelineError("train.device=cuda but no CUDA GPU is visible: use train.device=auto or cpu")
    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return str(choice)


def stop_on_nonfinite_loss() -> Callback:
    """fastai's TerminateOnNaNCallback, but failing the run: its CancelFitException would end only
    the current fit, and fine_tune would go on to train the unfrozen stage on NaN weights."""
    from fastai.callback.tracker import TerminateOnNaNCallback

    class StopOnNonFiniteLoss(TerminateOnNaNCallback):
        def after_batch(self) -> None:
            if not self.loss.isfinite():
                raise NonFiniteLoss(f"the loss became {float(self.loss.detach())} at epoch {self.epoch}: lower the lr")

    return StopOnNonFiniteLoss()


def build_learner(
    dls: DataLoaders,
    run: RunSpec,
    device: str,
    timm_kwargs: dict[str, Any],
    cbs: list[Callback],
    channels_last: bool = False,
    aux: Sequence[AuxTarget] = (),
    soft: bool = False,
) -> Learner:
    """vision_learner on the timm architecture; GradientAccumulation counts samples, so the optimizer
    steps once per `run.batch_size` images whatever the micro-batch is. `channels_last`: fastai's
    ChannelsLast callback, without the fp16 it adds by default (use_channels_last decides per device).
    The recipe's optimizer is the opt_func, its loss the loss_func (summed over the targets when the
    data has extra targets `aux`, pipeline.training.targets; on probability targets with `soft`), its
    MixUp/CutMix and weight average callbacks.
    Schedules other than fine_tune train every layer from the start: the body is unfrozen here."""
    from fastai.callback.training import GradientAccumulation
    from fastai.vision.learner import vision_learner

    from pipeline.training.history import interactive, plain_progress
    from pipeline.training.optimizers import opt_func
    from pipeline.training.recipe import recipe_callbacks
    from pipeline.training.schedules import fine_tunes

    sizes, loss_func, metrics = loss_and_metrics(dls, run, aux, soft)
    callbacks = [
        GradientAccumulation(run.batch_size),
        stop_on_nonfinite_loss(),
        *recipe_callbacks(run.recipe, 1 + len(aux) + 2 * soft),
    ]
    with fastai_device(device):
        learn = vision_learner(
            dls,
            run.arch,
            pretrained=run.pretrained,
            n_out=sum(sizes) if sizes else None,
            loss_func=loss_func,
            opt_func=opt_func(run.recipe.optimizer),
            metrics=metrics,
            cbs=[*callbacks, *cbs],
            **timm_kwargs,
        )
    pool_channels_first(learn)
    if not interactive():  # a log file, SLURM, Kaggle: one line per epoch, no progress-bar redraws
        plain_progress(learn)
    if not fine_tunes(run):
        learn.unfreeze()
    if channels_last:
        from fastai.callback.channelslast import ChannelsLast

        learn.add_cb(ChannelsLast())
    # Mixed precision only where it pays and is supported without warnings: CUDA.
    return learn.to_fp16() if device == "cuda" else learn


# fp16's gradient scaler skips the steps whose gradients overflow while it finds its scale, halving it from 2**16
# at each skip: after 16 skips in a row it is down to 1
MAX_SKIPPED_STEPS = 16


def step_taken(learn: Learner) -> bool:
    """Whether the optimizer step just made (read in after_step) was taken: not skipped by fp16's scaler. A skipped
    step changes no weight and makes no optimizer state."""
    fp16 = getattr(learn, "mixed_precision", None)
    return fp16 is None or not fp16.skipped


@contextmanager
def fastai_device(device: str) -> Iterator[None]:
    """fastai's default device set to `device` while the learner is built. vision_learner makes its Normalize
    stats on fastai's default device, the GPU whenever one is visible: train.device=cpu on a GPU machine failed
    its first batch with "Expected all tensors to be on the same device" (seen on an H200)."""
    from fastai.torch_core import defaults

    saved = defaults.use_cuda
    defaults.use_cuda = False if device == "cpu" else saved
    try:
        yield
    finally:
        defaults.use_cuda = saved


def loss_and_metrics(
    dls: DataLoaders, run: RunSpec, aux: Sequence[AuxTarget], soft: bool = False
) -> tuple[list[int] | None, Any, Any]:
    """The output sizes (None: the label's alone, fastai's default head), loss and metrics: the recipe's loss
    and error_rate, or with extra targets `aux` or probability targets (`soft`, pipeline.data.soft_targets)
    their multi-target versions, one slice of the output per target, the probabilities going to the label's."""
    from fastai.metrics import error_rate

    from pipeline.data.train_csv import target_sizes
    from pipeline.training.losses import base_loss
    from pipeline.training.targets import MultiTargetLoss, error_rates

    if not (aux or soft):
        return None, base_loss(run.recipe.loss), error_rate
    labels = dls.vocab[0] if aux else dls.vocab  # fastai: one vocab per category target, or the label's alone
    sizes = target_sizes(len(labels), aux)
    main = base_loss(run.recipe.loss, soft=True) if soft else None
    weights = [1.0, *(t.weight for t in aux)]
    loss_func = MultiTargetLoss(sizes, weights, lambda: base_loss(run.recipe.loss), main)
    return sizes, loss_func, error_rates(["label", *(t.name for t in aux)], sizes)


def pool_channels_first(learn: Learner) -> None:
    """timm 1.x Swin and SwinV2 (any model with output_fmt NHWC) return features as [B, H, W, C], but
    fastai's TimmBody passes them on to its concat-pool head, which pools the last two axes as NCHW.
    Permuting in the body keeps fastai's head and its body/head param groups (freeze, unfreeze) as they are."""
    body = learn.model[0]
    if body.needs_pool and getattr(body.model, "output_fmt", "NCHW") == "NHWC":
        from torch import nn
        from torchvision.ops import Permute

        learn.model[0] = nn.Sequential(body, Permute([0, 3, 1, 2]))


def find_lr(learn: Learner, steps: int) -> float:
    """fastai's lr_find (`steps` mock-training steps) on the run's own data and model, its "valley"
    suggestion. lr_find restores the weights after; its temporary copy goes to a temporary folder, not
    ./models. The NaN stop and the weight average sit it out: lr_find raises the lr until the loss
    diverges, and must not be averaged."""
    import tempfile
    from pathlib import Path

    from fastai.callback.tracker import TerminateOnNaNCallback

    from pipeline.training.callbacks import WeightAverage

    out = [cb for cb in learn.cbs if isinstance(cb, (TerminateOnNaNCallback, WeightAverage))]
    model_dir = learn.model_dir
    with tempfile.TemporaryDirectory() as tmp, learn.removed_cbs(out):
        learn.model_dir = Path(tmp).resolve()
        try:
            suggestion = learn.lr_find(num_it=steps, show_plot=False)
        except IndexError:  # fastai's valley() on too few recorded steps
            raise PipelineError(
                f"lr_find recorded too few steps to suggest an lr: raise train.lr_find_steps ({steps}) or set train.lr"
            ) from None
        finally:
            learn.model_dir = model_dir
    return float(suggestion.valley)


def last_valid_error(learn: Learner) -> float:
    """error_rate of the last epoch, as the recorder logged it (read before tta, which clears it).
    A run resumed after its last epoch trained none (its skipped epochs log no metrics): validate instead."""
    names = [n for n in learn.recorder.metric_names if n not in ("epoch", "time")]
    last = learn.recorder.values[-1] if learn.recorder.values else []
    if len(last) <= names.index("error_rate"):
        return float(learn.validate()[1])
    return float(last[names.index("error_rate")])


def use_channels_last(perf: Any, device: str) -> bool:
    """perf.channels_last: auto means on CPU only, where it measured 1.7x; CUDA keeps its fp16 path as is."""
    choice = getattr(perf.channels_last, "value", perf.channels_last)
    return choice == "on" or (choice == "auto" and device == "cpu")


def run_learner(
    cfg: Any,
    comp: Competition,
    run: RunSpec,
    device: str,
    timm_kwargs: dict[str, Any],
    *,
    valid_idx: Sequence[int],
    cbs: Sequence[Callback] = (),
    targets: SoftTargets | None = None,
) -> Learner:
    """The one way to build a run's DataLoaders and Learner. Training, the memory probe and the benchmark
    all call it, so that each measures the same path: the image cache, fused augmentation and workers
    (cfg.perf, chosen in pipeline.data.loaders), channels-last on CPU and fp16 on CUDA. `targets`: what the
    run learns beyond its labels (pipeline.training.teachers); the probe and the benchmark measure without."""
    from pipeline.data.loaders import make_dataloaders
    from pipeline.data.train_csv import read_aux_targets

    aux = read_aux_targets(comp, run.recipe.aux_targets)
    dls = make_dataloaders(
        comp,
        run,
        valid_idx=valid_idx,
        num_workers=cfg.data.num_workers,
        device=device,
        perf=cfg.perf,
        aux=aux,
        soft=targets,
    )
    channels_last = use_channels_last(cfg.perf, device)
    return build_learner(
        dls, run, device, timm_kwargs, list(cbs), channels_last=channels_last, aux=aux, soft=targets is not None
    )
