"""Gradient accumulation as training uses it: fastai's GradientAccumulation counting samples."""

import pytest
import torch

from tests.conftest import DEVICE


def fit_linear(accum: int, n_train: int = 128, batch_size: int = 64):
    """One epoch of a real fastai Learner on fixed data; returns (optimizer steps, micro-batches, weights)."""
    from fastai.callback.core import Callback
    from fastai.callback.training import GradientAccumulation
    from fastai.data.core import DataLoaders
    from fastai.learner import Learner
    from fastai.losses import CrossEntropyLossFlat
    from fastai.optimizer import SGD

    class StepCounter(Callback):
        order = GradientAccumulation.order + 1

        def before_fit(self):
            self.steps, self.micro = 0, 0

        def after_loss(self):
            self.micro += self.training

        def after_step(self):
            self.steps += 1

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(n_train, 4, generator=g), torch.randint(0, 3, (n_train,), generator=g)
    items = list(zip(x, y, strict=True))
    dls = DataLoaders.from_dsets(items, items[:8], bs=batch_size // accum, shuffle=False, num_workers=0, device=DEVICE)
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    counter = StepCounter()
    learn = Learner(
        dls,
        model,
        loss_func=CrossEntropyLossFlat(),
        opt_func=SGD,
        lr=0.1,
        cbs=[GradientAccumulation(batch_size), counter],
    )
    with learn.no_bar(), learn.no_logging():
        learn.fit(1)
    return counter.steps, counter.micro, model.weight.detach().clone()


@pytest.mark.parametrize("accum", [1, 2, 4])
def test_optimizer_steps_once_every_accum_micro_batches(accum):
    steps, micro, _ = fit_linear(accum)
    assert micro == 2 * accum  # 128 images in micro-batches of 64 // accum
    assert steps == 2  # one step per 64 images whatever accum is


def test_accumulated_step_equals_the_full_batch_step():
    _, _, full = fit_linear(1)
    _, _, accumulated = fit_linear(4)
    torch.testing.assert_close(accumulated, full, rtol=1e-5, atol=1e-6)
