from dataclasses import replace

import numpy as np
import pytest

from pipeline.data.transforms import as_size, batch_tfms, item_tfms
from tests.conftest import PADDY_SAMPLE
from tests.factories import make_run

RUN = make_run()


@pytest.fixture(scope="module")
def photo():
    """A real 480 x 640 (width x height) Paddy photo."""
    from fastai.vision.core import PILImage

    if not PADDY_SAMPLE.is_dir():
        pytest.skip("no paddy sample")
    img = PILImage.create(next((PADDY_SAMPLE / "train_images" / "blast").glob("*.jpg")))
    assert img.size == (480, 640)
    return img


def _apply_item(run, img):
    (tfm,) = item_tfms(run)
    return tfm(img, split_idx=1)


def test_as_size():
    assert as_size((224,)) == 224
    assert as_size((320, 224)) == (320, 224)


def test_crop_to_height_width_keeps_a_portrait_photo(photo):
    assert _apply_item(RUN, photo).size == (480, 640)  # PIL reports width, height


def test_squish_to_a_square(photo):
    out = _apply_item(replace(RUN, resize="squish", item_size=(480,)), photo)
    assert out.size == (480, 480)


def test_pad_keeps_the_whole_photo_with_black_bars(photo):
    out = np.asarray(_apply_item(replace(RUN, resize="pad", item_size=(64,)), photo))
    assert out.shape == (64, 64, 3)
    assert out[:, :4].max() == 0 and out[:, -4:].max() == 0  # zero padding left and right of a portrait
    assert out[:, 24:40].mean() > 20


def test_batch_augmentation_output_size(photo):
    import torch
    from fastai.vision.core import TensorImage
    from fasttransform import Pipeline

    batch = TensorImage(torch.rand(2, 3, 640, 480))
    out = Pipeline(batch_tfms(replace(RUN, size=(320, 224))), split_idx=0)(batch)
    assert tuple(out.shape) == (2, 3, 320, 224)
