"""A computed blend's probabilities as the contract pipeline/blend_file.py defines: what a student
(loss=distill), a pseudo-labelled run (data.pseudo) and the label review read, written beside the CSV
with the blend's other files (pipeline.ensemble.writing).

- test_probs: the written combiner's blend of the members' test probabilities.
- oof_*: where every member is a kfold variant, every training image's blended out-of-fold probabilities:
  the nested ones (each image from combiners fitted on the other half of the images), so that neither the
  members' models nor the combiner saw the image's label.
- fold_test_probs: where every member is a kfold variant of one split (the same validation images in each
  fold), fold k's blend of the members' fold-k runs, which never saw fold k's validation images.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from pipeline.blend_file import BlendFile
from pipeline.ensemble.members import aligned
from pipeline.ensemble.teachers import teacher_hash, teacher_records

if TYPE_CHECKING:
    from pipeline.ensemble.combiners import Combiner
    from pipeline.ensemble.compute import BlendResult
    from pipeline.ensemble.members import Member


def _table(probs: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.asarray(probs, dtype=np.float32)).contiguous()


def shared_split(members: list[Member]) -> dict[str, Any]:
    """The kfold split every member was trained on ({strategy, seed, n_folds, n_images}), or {} when they were
    not all kfold variants with the same validation images in each fold."""
    if any(m.split != "kfold" for m in members):
        return {}
    first = members[0]
    n_folds = first.runs[0].split["n_folds"]
    for m in members[1:]:
        if len(m.runs) != n_folds or any(
            set(r.valid_ids) != set(f.valid_ids) for r, f in zip(m.runs, first.runs, strict=True)
        ):
            return {}
    return {k: v for k, v in first.runs[0].split.items() if k != "fold"}


def fold_test_probs(members: list[Member], combiner: Combiner, order: list[str], n_folds: int) -> torch.Tensor:
    """(folds, test images, classes): fold k's combination of the members' fold-k runs' test probabilities."""
    folds = [
        combiner.probs(np.stack([aligned(m.runs[k].test_probs, m.runs[k].test_ids, order) for m in members]))
        for k in range(n_folds)
    ]
    return _table(np.stack(folds))


def members_record(result: BlendResult) -> list[dict[str, Any]]:
    """Per member: its weight (None for a learned combiner) and its runs with their run hashes and teachers."""
    weights = result.chosen.weights
    return [
        {
            "member": m.name,
            "weight": None if weights is None else float(weights[i]),
            "runs": [
                {
                    "run": r.run,
                    "run_hash": r.run_hash,
                    "fold": r.split.get("fold"),
                    "teacher": teacher_hash(r),
                    "teachers": teacher_records(r),
                }
                for r in m.runs
            ],
        }
        for i, m in enumerate(result.members)
    ]


def blend_file_of(result: BlendResult) -> BlendFile:
    """The blend's probabilities file, as data."""
    chosen, valid = result.chosen, result.valid
    split = shared_split(result.members)
    optional: dict[str, Any] = {}  # the fields present only where the members have them
    if result.out_of_fold:
        optional |= {
            "oof_ids": list(valid.ids),
            "oof_probs": _table(chosen.nested_probs),
            "oof_targets": torch.from_numpy(np.asarray(valid.targets, dtype=np.int64)),
        }
    if split:
        optional["fold_test_probs"] = fold_test_probs(
            result.members, chosen.combiner, result.test_ids, split["n_folds"]
        )
    return BlendFile(
        csv=str(result.output),
        weighting=result.weighting,
        vocab=list(result.vocab),
        test_ids=list(result.test_ids),
        test_probs=_table(chosen.test_probs),
        **optional,
        split=split,
        members=members_record(result),
        # `created` stays empty: the file's bytes are a function of the blend alone, so blending the same runs
        # again keeps its content hash, which the runs that learned from it carry in their run hashes
    )
