"""Test-time augmentation that loads each image once.

fastai's `Learner.tta(dl, n, beta)` iterates the data n + 1 times: n passes with the training
augmentations, one plain pass, each loading and batching every image again. `tta` here loads each
batch once, converts it to float once, and expands it into the n augmented views plus the plain one
before the model sees it, so the model runs on (n + 1) x batch-size images per step through fastai's
own `get_preds` (callbacks such as fp16 on CUDA and channels-last apply as usual). The result is
fastai's formula: lerp(mean of the augmented passes, plain pass, beta).

One difference: fastai also re-runs the item transforms in training mode for the augmented passes,
which for `crop` and `pad` item transforms moves the crop window when the source's aspect ratio differs
from the target's. Here the item transform runs once, centred, as in the plain pass.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from fastai.data.core import TfmdDL
    from fastai.learner import Learner


def tta(learn: Learner, dl: TfmdDL, n: int, beta: float, fast: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Learner.tta(dl=dl, n=n, beta=beta), with each image loaded once when `fast`; the targets are None
    for a test set, as with fastai. With extra targets (pipeline.training.targets) the probabilities are
    the loss's activation, the main target's, and so are the targets returned."""
    if not fast:
        preds, targs = learn.tta(dl=dl, n=n, beta=beta)
        return preds, main_target(targs)
    import torch
    from fastai.vision.augment import RandTransform
    from fasttransform import Pipeline, Transform

    fs = list(dl.after_batch.fs)
    first_random = next((i for i, t in enumerate(fs) if isinstance(t, RandTransform)), len(fs))
    once, per_view = Pipeline(fs[:first_random]), Pipeline(fs[first_random:])

    class Views(Transform):
        "A batch -> its n augmented views then the plain one, concatenated along the batch"

        def __call__(self, b: tuple, split_idx: int | None = None, **kwargs) -> tuple:
            b = once(b)
            views = []
            for split in [0] * n + [1]:
                per_view.split_idx = split
                views.append(per_view(b))
            return tuple(torch.cat([v[i] for v in views]) for i in range(len(b)))

    view_dl = dl.new(shuffle=False, drop_last=False, after_batch=Views())
    preds, targs = learn.get_preds(dl=view_dl, reorder=False)
    targs = main_target(targs)
    sizes = [min(dl.bs, dl.n - start) for start in range(0, dl.n, dl.bs)]
    chunks = preds.split([s * (n + 1) for s in sizes])
    views = [p.view(n + 1, s, -1) for p, s in zip(chunks, sizes, strict=True)]
    out = [torch.lerp(v[:n].mean(0), v[n], beta) for v in views]
    if targs is None:  # a test set
        return torch.cat(out), None
    plain_targs = [t[n * s :] for t, s in zip(targs.split([s * (n + 1) for s in sizes]), sizes, strict=True)]
    return torch.cat(out), torch.cat(plain_targs)


def main_target(targs: torch.Tensor | tuple | None) -> torch.Tensor | None:
    """get_preds' targets: a tensor, or one per target when the data has extra targets; the first is the label."""
    return targs[0] if isinstance(targs, (tuple, list)) else targs
