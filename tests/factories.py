"""Hand-made prediction records with known contents."""

import torch

from pipeline.predictions import Predictions
from pipeline.training.specs import RunSpec


def make_preds(run="r1", test_ids=("a.jpg", "b.jpg", "c.jpg"), vocab=("cat", "dog"), seed=0, **kw) -> Predictions:
    g = torch.Generator().manual_seed(seed)
    valid_probs = kw.pop("valid_probs", torch.tensor([[0.9, 0.1], [0.3, 0.7]]))
    fields = dict(
        run=run,
        member=run,
        arch="tf_efficientnet_lite0",
        vocab=list(vocab),
        test_ids=list(test_ids),
        test_probs=torch.rand(len(test_ids), len(vocab), generator=g).softmax(1),
        valid_ids=["cat/v1.jpg", "dog/v2.jpg"],
        valid_probs=valid_probs,
        valid_probs_plain=valid_probs.clone(),
        valid_targets=torch.tensor([0, 1]),
        split={"strategy": "holdout", "seed": 42, "fold": None, "n_folds": None, "n_images": 10},
        metrics={"valid_error": 0.5},
        config={"model": {"name": "m", "variants": [{"size": [224]}]}, "data": {"seed": None}},
    )
    fields.update(kw)
    return Predictions(**fields)


def make_run(**kw) -> RunSpec:
    """A run of tf_efficientnet_lite0; keyword arguments replace any field."""
    fields = dict(
        name="r",
        model="m",
        arch="tf_efficientnet_lite0",
        pretrained=True,
        weights=None,
        resize="crop",
        item_size=(640, 480),
        size=(224,),
        min_scale=0.75,
        accum=2,
        epochs=1,
        lr=0.01,
        batch_size=64,
        weight=1.0,
    )
    return RunSpec(**(fields | kw))


def rewrite_preds(preds_dir, source: str, run: str, **changes) -> Predictions:
    """A copy of a real run's prediction file as another run (its name, split, extra targets, ...), saved
    beside it: real probabilities and history under other metadata."""
    from pipeline.predictions import load, save

    preds = load(preds_dir / f"{source}.pt")
    preds.run, preds.member = run, changes.pop("member", run)
    for key, value in changes.items():
        setattr(preds, key, value)
    save(preds, preds_dir / f"{run}.pt")
    return preds
