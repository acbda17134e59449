"""fastai's batch augmentation with one resample instead of two.

`aug_transforms(size, min_scale<1)` resamples every image twice: the affine transform (flip, rotate,
zoom, warp) at the item size (e.g. 480x480, with no resize), then RandomResizedCropGPU down to `size`.
On a CPU the first resample dominates: about 40 ms an image at 480 px, more than the model's
forward and backward at 128 px. `AffineResizedCrop` draws the same random parameters with fastai's
own code, composes the crop with the affine and warp coordinates, and samples once at the output size.

Validation (and TTA's plain pass) is the crop alone, as in fastai, whose affine is then the identity.
In training the result differs from fastai's only by interpolation (one bilinear sample instead of
two); tests/test_data_paths.py measures that difference on real photos.
"""

from __future__ import annotations

# fastai is imported at the top: this module only exists to extend it, and is itself imported lazily.
import torch
import torch.nn.functional as F
from fastai.vision.augment import AffineCoordTfm, RandomResizedCropGPU, RandTransform, compose_tfms
from fastai.vision.core import TensorImage
from fasttransform import Transform


class AffineResizedCrop(RandTransform):
    "fastai's AffineCoordTfm then RandomResizedCropGPU, sampled once at the crop's output size"

    split_idx, order = None, 30

    def __init__(self, affine: AffineCoordTfm, crop: RandomResizedCropGPU) -> None:
        super().__init__()
        self.affine, self.crop = affine, crop

    def before_call(self, b, split_idx: int | None) -> None:
        # The same draws, in the same order, as fastai's pipeline makes for the two transforms.
        self.do, self.split_idx = True, split_idx
        self.affine.before_call(b, split_idx)
        self.crop.before_call(b, split_idx)

    def encodes(self, x: TensorImage) -> TensorImage:
        if self.split_idx:  # validation: the affine is the identity
            return self.crop.encodes(x)
        (h, w), (top, left), (ch, cw) = x.shape[-2:], self.crop.tl, self.crop.cp_size
        oh, ow = self.crop.size
        # Output pixel -> position in the affine's output (the crop, resized with align_corners)
        # -> normalized coordinates, then through the affine matrix and the warp, as fastai does.
        ys = (top + torch.linspace(0, ch - 1, oh, device=x.device)) * (2 / (h - 1)) - 1
        xs = (left + torch.linspace(0, cw - 1, ow, device=x.device)) * (2 / (w - 1)) - 1
        gy, gx = torch.meshgrid(ys, xs, indexing="ij")
        base = torch.stack([gx, gy, torch.ones_like(gx)], dim=-1)
        coords = base @ self.affine.mat.transpose(1, 2).unsqueeze(1)  # (B, oh, ow, 2)
        if len(self.affine.coord_fs):
            coords = compose_tfms(coords, tfms=self.affine.coord_fs)
        # fastai's crop stage pre-shrinks with area averaging when it downsizes by more than 2x.
        shrink = min(ch / oh, cw / ow) / 2
        if shrink > 1:
            x = F.interpolate(x, scale_factor=1 / shrink, mode="area", recompute_scale_factor=True)
        out = F.grid_sample(x, coords, mode=self.crop.mode, padding_mode=self.affine.pad_mode, align_corners=True)
        return TensorImage(out)


def fuse_affine_and_crop(tfms: list[Transform]) -> list[Transform]:
    """`tfms` (from aug_transforms) with its affine transform and random resized crop fused into one;
    unchanged when it has no such pair (min_scale=1: the affine already resizes in one resample)."""
    affine = [t for t in tfms if isinstance(t, AffineCoordTfm)]
    crop = [t for t in tfms if isinstance(t, RandomResizedCropGPU)]
    if len(affine) != 1 or len(crop) != 1 or affine[0].size is not None:
        return tfms
    fused = AffineResizedCrop(affine[0], crop[0])
    return [fused if t is affine[0] else t for t in tfms if t is not crop[0]]
