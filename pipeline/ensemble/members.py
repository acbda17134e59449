"""Ensemble members: a run's predictions, or a kfold variant's fold runs joined into one member.

A kfold variant's k runs become one member whose validation predictions are out-of-fold (each
training image predicted once, by the run that did not train on it) and whose test predictions
are the mean of its k runs'.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from pipeline.errors import PipelineError
from pipeline.predictions import Predictions


def aligned(probs: Any, ids: list[str], order: list[str]) -> np.ndarray:
    """Rows of `probs` (labelled by `ids`) reordered to `order`."""
    index = pd.Index(ids).get_indexer(order)
    if (index < 0).any():
        raise PipelineError(f"image id {order[int(np.argmax(index < 0))]} has no prediction")
    return np.asarray(probs)[index]


@dataclass
class Member:
    name: str
    runs: list[Predictions]  # one run, or a variant's folds in fold order
    weight: float  # the variant's weight in its model file: what blend.weighting=config uses
    test_probs: np.ndarray  # (test images, classes) in the blend's test order
    valid_ids: list[str]
    valid_probs: np.ndarray  # TTA
    valid_probs_plain: np.ndarray
    valid_targets: np.ndarray

    @property
    def split(self) -> str:
        return self.runs[0].split["strategy"]


def assemble_members(runs: list[Predictions], test_order: list[str]) -> list[Member]:
    """Group runs by member (in first-seen order); join each kfold variant's folds."""
    groups: dict[str, list[Predictions]] = {}
    for run in runs:
        groups.setdefault(run.member, []).append(run)
    return [_member(name, group, test_order) for name, group in groups.items()]


def _member(name: str, group: list[Predictions], test_order: list[str]) -> Member:
    if any(r.split["fold"] is None for r in group):
        if len(group) > 1:
            files = ", ".join(str(r.path) for r in group)
            raise PipelineError(
                f"{name}: several prediction files are this run ({files}): keep one, or pick with blend.runs"
            )
        return _join(name, group, test_order)
    group = sorted(group, key=lambda r: r.split["fold"])
    first = group[0].split
    if any((r.split["n_folds"], r.split["seed"]) != (first["n_folds"], first["seed"]) for r in group):
        raise PipelineError(
            f"{name}: its fold files come from different kfold splits (folds or seed differ): retrain them"
        )
    folds = [r.split["fold"] for r in group]
    if folds != list(range(first["n_folds"])):
        missing = sorted(set(range(first["n_folds"])) - set(folds))
        repeated = sorted({f for f in folds if folds.count(f) > 1})
        raise PipelineError(
            f"{name}: of its {first['n_folds']} folds, {missing or 'none'} missing and {repeated or 'none'} repeated "
            f"in the blend: train the missing ones (data.split=kfold data.folds={first['n_folds']}) or leave "
            "the variant out with blend.runs"
        )
    member = _join(name, group, test_order)
    if len(set(member.valid_ids)) != len(member.valid_ids) or len(member.valid_ids) != first["n_images"]:
        raise PipelineError(
            f"{name}: its folds' validation images do not cover the {first['n_images']} training images once "
            f"({len(set(member.valid_ids))} distinct of {len(member.valid_ids)}): retrain the folds on the same data"
        )
    return member


def _join(name: str, group: list[Predictions], test_order: list[str]) -> Member:
    """One run as is; a variant's folds: validation rows concatenated, test probabilities averaged."""
    return Member(
        name=name,
        runs=group,
        weight=group[0].weight,
        test_probs=np.mean([aligned(r.test_probs, r.test_ids, test_order) for r in group], axis=0),
        valid_ids=list(itertools.chain.from_iterable(r.valid_ids for r in group)),
        valid_probs=np.concatenate([r.valid_probs.numpy() for r in group]),
        valid_probs_plain=np.concatenate([r.valid_probs_plain.numpy() for r in group]),
        valid_targets=np.concatenate([r.valid_targets.numpy() for r in group]),
    )


def validation_mismatch(members: list[Member]) -> str | None:
    """Why the members' validation images differ (naming two members), or None when they agree."""
    first, first_ids = members[0], set(members[0].valid_ids)
    for m in members[1:]:
        ids = set(m.valid_ids)
        if ids != first_ids:
            return (
                f"{m.name} ({m.split}) and {first.name} ({first.split}) were validated on different images "
                f"({len(ids)} and {len(first_ids)}, {len(ids & first_ids)} in common)"
            )
    return None


@dataclass
class ValidationSet:
    ids: list[str]
    targets: np.ndarray  # (images,)
    stack: np.ndarray  # (members, images, classes), TTA
    stack_plain: np.ndarray  # the same without TTA


def shared_validation(members: list[Member]) -> ValidationSet:
    """The members' validation predictions on the same rows; call after validation_mismatch."""
    order = members[0].valid_ids
    targets = np.stack([aligned(m.valid_targets, m.valid_ids, order) for m in members])
    if (targets != targets[0]).any():
        bad = members[int(np.argmax((targets != targets[0]).any(1)))]
        raise PipelineError(f"{bad.name} labels some validation images unlike {members[0].name}: same data?")
    return ValidationSet(
        ids=order,
        targets=targets[0],
        stack=np.stack([aligned(m.valid_probs, m.valid_ids, order) for m in members]),
        stack_plain=np.stack([aligned(m.valid_probs_plain, m.valid_ids, order) for m in members]),
    )
