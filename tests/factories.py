"""Hand-made prediction records with known contents."""

from pathlib import Path

import torch

from pipeline.blend_file import BlendFile
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


def blend_file_of(runs: list[Predictions], csv, weighting: str = "equal", **replace) -> BlendFile:
    """The equal blend of real prediction files as pipeline.blend's writer keeps it beside `csv` (its
    `<stem>.probs.pt` and the CSV), until that writer is on main: test probabilities averaged over members
    (a kfold member's folds averaged first), out-of-fold probabilities where every member is kfold, and each
    fold's test probabilities where they all share one split. `replace`: fields to set before saving."""
    import pandas as pd

    from pipeline.blend_file import encode, probs_path
    from pipeline.fileio import write_atomic

    members: dict[str, list[Predictions]] = {}
    for r in sorted(runs, key=lambda r: (r.member, r.split["fold"] or 0)):
        members.setdefault(r.member, []).append(r)
    order = runs[0].test_ids
    test = [torch.stack([_aligned(r.test_probs, r.test_ids, order) for r in group]) for group in members.values()]
    fields = dict(csv=str(csv), weighting=weighting, vocab=list(runs[0].vocab), test_ids=list(order))
    fields["test_probs"] = torch.stack([t.mean(0) for t in test]).mean(0)
    if all(r.split["fold"] is not None for r in runs):
        ids = [i for r in next(iter(members.values())) for i in r.valid_ids]
        valid = [
            _aligned(torch.cat([r.valid_probs for r in g]), [i for r in g for i in r.valid_ids], ids)
            for g in members.values()
        ]
        first = next(iter(members.values()))
        targets = _aligned(torch.cat([r.valid_targets for r in first]), [i for r in first for i in r.valid_ids], ids)
        split = runs[0].split
        fields |= dict(oof_ids=ids, oof_probs=torch.stack(valid).mean(0), oof_targets=targets)
        fields |= dict(
            fold_test_probs=torch.stack(test).mean(0), split={k: split[k] for k in ("seed", "n_folds", "n_images")}
        )
    fields["members"] = [
        {
            "member": m,
            "weight": 1.0,
            "runs": [{"run": r.run, "run_hash": r.run_hash, "fold": r.split["fold"]} for r in g],
        }
        for m, g in members.items()
    ]
    blend = BlendFile(**(fields | replace))
    csv = Path(csv)
    csv.parent.mkdir(parents=True, exist_ok=True)
    labels = [blend.vocab[i] for i in blend.test_probs.argmax(1)]
    pd.DataFrame({"image_id": blend.test_ids, "label": labels}).to_csv(csv, index=False)
    write_atomic(probs_path(csv), encode(blend))
    return blend


def _aligned(probs: torch.Tensor, ids: list[str], order: list[str]) -> torch.Tensor:
    row = {i: n for n, i in enumerate(ids)}
    return probs[[row[i] for i in order]]
