"""Blend prediction files: weighted mean of probabilities, rows aligned by image id, into a submission."""

from __future__ import annotations

import fnmatch
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.errors import PipelineError
from pipeline.fileio import atomic_path
from pipeline.predictions import Predictions, load
from pipeline.report import format_table
from pipeline.submission import accuracy_against, read_sample_submission, validate_submission, write_submission

log = logging.getLogger(__name__)


def select_files(preds_dir: str | Path, patterns: list[str]) -> list[Path]:
    """Prediction files in `preds_dir`: all of them, or those whose run name matches a pattern."""
    preds_dir = Path(preds_dir)
    files = sorted(preds_dir.glob("*.pt")) if preds_dir.is_dir() else []
    if not files:
        raise PipelineError(f"no prediction files in {preds_dir}: train first, or set paths.preds")
    if not patterns:
        return files
    chosen = []
    for pattern in patterns:
        matched = [f for f in files if fnmatch.fnmatchcase(f.stem, pattern)]
        if not matched:
            raise PipelineError(f"blend.runs: {pattern!r} matches no prediction file in {preds_dir}")
        chosen += [f for f in matched if f not in chosen]
    return chosen


def check_compatible(runs: list[Predictions]) -> None:
    """Every run must predict the same classes, in the same order, for the same test images."""
    first = runs[0]
    for run in runs[1:]:
        if run.vocab != first.vocab:
            raise PipelineError(f"{run.path}: its vocab {run.vocab} differs from {first.path}'s {first.vocab}")
        if set(run.test_ids) != set(first.test_ids):
            raise PipelineError(f"{run.path}: its test image ids differ from those of {first.path}")


def run_weights(runs: list[Predictions], overrides: dict[str, float]) -> np.ndarray:
    """blend.weights by run name, else the weight the run was trained with (its variant's, default 1)."""
    unknown = set(overrides) - {r.run for r in runs}
    if unknown:
        raise PipelineError(f"blend.weights names runs that are not blended: {sorted(unknown)}")
    weights = np.array([overrides.get(r.run, r.weight) for r in runs], dtype=np.float64)
    if (weights < 0).any() or weights.sum() <= 0:
        raise PipelineError(f"blend weights must be non-negative with a positive sum, got {weights.tolist()}")
    return weights


def aligned(probs: Any, ids: list[str], order: list[str]) -> np.ndarray:
    """Rows of `probs` (labelled by `ids`) reordered to `order`."""
    index = pd.Index(ids).get_indexer(order)
    if (index < 0).any():
        raise PipelineError(f"image id {order[int(np.argmax(index < 0))]} has no prediction")
    return np.asarray(probs, dtype=np.float64)[index]


def weighted_mean(stack: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(runs, images, classes) -> (images, classes): the weighted arithmetic mean of probabilities."""
    return np.tensordot(weights / weights.sum(), stack, axes=1)


@dataclass
class BlendResult:
    output: Path
    runs: list[Predictions]
    weights: np.ndarray
    run_valid_acc: list[float]
    blend_valid_acc: float | None  # None where the runs do not share a validation set
    test_acc: float | None  # where the true test labels are known (the demo)


def valid_accuracy(runs: list[Predictions], weights: np.ndarray) -> float | None:
    """The blend's accuracy on the validation images, if every run held out the same ones."""
    first = runs[0]
    if any(set(r.valid_ids) != set(first.valid_ids) for r in runs[1:]):
        return None
    stack = np.stack([aligned(r.valid_probs, r.valid_ids, first.valid_ids) for r in runs])
    return float((weighted_mean(stack, weights).argmax(1) == first.valid_targets.numpy()).mean())


def blend(cfg: Any) -> BlendResult:
    runs = [load(f) for f in select_files(cfg.paths.preds, list(cfg.blend.runs))]
    check_compatible(runs)
    weights = run_weights(runs, dict(cfg.blend.weights))
    sample_path = Path(cfg.data.root) / "sample_submission.csv"
    sample = read_sample_submission(sample_path)
    order = list(sample.image_id)
    if set(order) != set(runs[0].test_ids):
        raise PipelineError(f"the prediction files' test images differ from the rows of {sample_path}")
    stack = np.stack([aligned(r.test_probs, r.test_ids, order) for r in runs])
    vocab = np.array(runs[0].vocab)
    labels = vocab[weighted_mean(stack, weights).argmax(1)]

    output = Path(cfg.blend.output)
    with atomic_path(output) as tmp:  # checked before it replaces anything
        write_submission(tmp, order, labels)
        submission = validate_submission(tmp, sample_path, runs[0].vocab)
    test_labels = cfg.data.get("test_labels")
    test_acc = accuracy_against(submission, test_labels) if test_labels and Path(test_labels).is_file() else None
    result = BlendResult(
        output, runs, weights, [r.valid_accuracy for r in runs], valid_accuracy(runs, weights), test_acc
    )
    write_record(result)
    return result


def write_record(result: BlendResult) -> Path:
    """`<output>.json` beside the CSV: which runs, with which weights, made it."""
    record = {
        "submission": str(result.output),
        "runs": [
            {"run": r.run, "file": str(r.path), "weight": float(w), "valid_accuracy": acc}
            for r, w, acc in zip(result.runs, result.weights, result.run_valid_acc, strict=True)
        ],
        "vocab": result.runs[0].vocab,  # lets pipeline.submit check labels without the training images
        "blend_valid_accuracy": result.blend_valid_acc,
        "test_accuracy": result.test_acc,
    }
    path = result.output.with_suffix(result.output.suffix + ".json")
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(record, indent=2))
    return path


def blend_table(result: BlendResult) -> str:
    def pct(x: float | None) -> str:
        return "n/a" if x is None else f"{x:.4f}"

    rows = [
        {"run": r.run, "weight": f"{w:g}", "valid acc (TTA)": pct(acc)}
        for r, w, acc in zip(result.runs, result.weights, result.run_valid_acc, strict=True)
    ]
    blend_note = "" if result.blend_valid_acc is not None else " (runs' validation sets differ)"
    rows.append(
        {
            "run": f"BLEND{blend_note}",
            "weight": f"{result.weights.sum():g}",
            "valid acc (TTA)": pct(result.blend_valid_acc),
        }
    )
    lines = [format_table(rows), f"submission: {result.output} ({len(result.runs)} runs)"]
    if result.test_acc is not None:
        lines.append(f"test accuracy of the submission against the true labels: {result.test_acc:.4f}")
    return "\n".join(lines)
