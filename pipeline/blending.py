"""Blend prediction files into a submission: members joined, weights chosen, rows aligned by image id.

Every weighting the runs allow is computed and scored (config and equal always; greedy and optimize
when the members share validation images); `blend.weighting` picks the one written to the CSV.
"""

from __future__ import annotations

import fnmatch
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.errors import PipelineError
from pipeline.fileio import atomic_path
from pipeline.members import Member, ValidationSet, assemble_members, shared_validation, validation_mismatch
from pipeline.predictions import Predictions, load
from pipeline.submission import accuracy_against, read_sample_submission, validate_submission, write_submission

log = logging.getLogger(__name__)

SEARCHED = ("greedy", "optimize")


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
    """Every run must predict the same classes, in the same order."""
    first = runs[0]
    for run in runs[1:]:
        if run.vocab != first.vocab:
            raise PipelineError(f"{run.path}: its vocab {run.vocab} differs from {first.path}'s {first.vocab}")


def check_test_images(runs: list[Predictions], sample_path: Path, order: list[str], data_root: str | Path) -> None:
    """Every run must predict the sample submission's test images; the stale ones are named, all of them."""
    stale = [r for r in runs if set(r.test_ids) != set(order)]
    if not stale:
        return
    models = sorted({(r.config.get("model") or {}).get("name", r.member) for r in stale})
    multi = "-m " if len(models) > 1 else ""
    raise PipelineError(
        f"{len(stale)} prediction file(s) predict other test images than the rows of {sample_path}, so were "
        f"trained on other data: {', '.join(str(r.path) for r in stale)}; retrain them on this data with their "
        f"other options unchanged (python -m pipeline.train {multi}+model={','.join(models)} data.root={data_root}) "
        "or leave them out with blend.runs"
    )


def config_weights(members: list[Member], overrides: dict[str, float]) -> np.ndarray:
    """blend.weights by member name, else the weight the run was trained with (its variant's, default 1)."""
    unknown = set(overrides) - {m.name for m in members}
    if unknown:
        raise PipelineError(f"blend.weights names runs that are not blended: {sorted(unknown)}")
    weights = np.array([overrides.get(m.name, m.weight) for m in members], dtype=np.float64)
    if (weights < 0).any() or weights.sum() <= 0:
        raise PipelineError(f"blend weights must be non-negative with a positive sum, got {weights.tolist()}")
    return weights


@dataclass
class Weighted:
    """One weighting's blend: its weights, and its predictions on the validation and test images."""

    weights: np.ndarray  # (members,), summing to 1
    valid_probs: np.ndarray | None  # (valid images, classes), with weights fitted on all of them
    nested_probs: np.ndarray | None  # the same, each half's rows from weights fitted on the other half
    test_labels: np.ndarray  # (test images,) in the sample submission's order
    test_acc: float | None  # against the true test labels, where known (the demo)


@dataclass
class BlendResult:
    output: Path
    members: list[Member]
    weighting: str  # the one written to `output`
    mean: str
    weighted: dict[str, Weighted]  # every weighting computed, by name
    valid: ValidationSet | None  # None when the members' validation images differ
    vocab: list[str]
    # filled by pipeline.blend_report, once: the report, the record and the terminal share them
    run_rows: list[dict[str, Any]] = field(default_factory=list)
    weighting_rows: list[dict[str, Any]] = field(default_factory=list)
    report: Path | None = None

    @property
    def chosen(self) -> Weighted:
        return self.weighted[self.weighting]


def weigh(members: list[Member], valid: ValidationSet | None, blend_cfg: Any) -> dict[str, tuple[np.ndarray, Any]]:
    """Weights of every weighting the members allow, each with the function that refits it on a
    subset of the validation images (None where nothing is fitted), for the nested estimate."""
    from pipeline.weight_search import search_weights

    mean, seed = str(blend_cfg.mean), blend_cfg.seed
    greedy = {k: blend_cfg.greedy[k] for k in ("steps", "init", "bags", "bag_fraction")}
    fixed = {
        "config": config_weights(members, dict(blend_cfg.weights)),
        "equal": np.ones(len(members)),
    }
    out: dict[str, tuple[np.ndarray, Any]] = {name: (w / w.sum(), None) for name, w in fixed.items()}
    if valid is not None:
        for name in SEARCHED:

            def fit(stack: np.ndarray, targets: np.ndarray, name: str = name) -> np.ndarray:
                return search_weights(name, stack, targets, mean, greedy, seed)

            out[name] = (fit(valid.stack, valid.targets), fit)
    return out


def blend(cfg: Any) -> BlendResult:
    from pipeline.ensemble import blend_probs
    from pipeline.weight_search import cross_fitted

    runs = [load(f) for f in select_files(cfg.paths.preds, list(cfg.blend.runs))]
    sample_path = Path(cfg.data.root) / "sample_submission.csv"
    order = list(read_sample_submission(sample_path).image_id)
    check_test_images(runs, sample_path, order, cfg.data.root)
    check_compatible(runs)
    members = assemble_members(runs, order)
    weighting, mean = str(cfg.blend.weighting), str(cfg.blend.mean)
    mismatch = validation_mismatch(members)
    if mismatch and weighting in SEARCHED:
        raise PipelineError(
            f"blend.weighting={weighting} searches weights on validation images all runs share, but {mismatch}: "
            "train them with data.split=holdout or kfold and one data.seed, pick such runs with blend.runs, "
            "or use blend.weighting=config or equal"
        )
    if mismatch:
        log.warning("no blend validation figures: %s", mismatch)
    valid = None if mismatch else shared_validation(members)

    vocab = np.array(runs[0].vocab)
    test_stack = np.stack([m.test_probs for m in members])
    test_labels = cfg.data.get("test_labels")
    truth = test_labels if test_labels and Path(test_labels).is_file() else None
    weighted = {}
    for name, (weights, fit) in weigh(members, valid, cfg.blend).items():
        labels = vocab[blend_probs(test_stack, weights, mean).argmax(1)]
        valid_probs = None if valid is None else blend_probs(valid.stack, weights, mean)
        nested = valid_probs if fit is None else cross_fitted(fit, valid.stack, valid.targets, mean, cfg.blend.seed)
        test_acc = (
            None if truth is None else accuracy_against(pd.DataFrame({"image_id": order, "label": labels}), truth)
        )
        weighted[name] = Weighted(weights, valid_probs, nested, labels, test_acc)

    output = Path(cfg.blend.output)
    with atomic_path(output) as tmp:  # checked before it replaces anything
        write_submission(tmp, order, weighted[weighting].test_labels)
        validate_submission(tmp, sample_path, runs[0].vocab)
    from pipeline.blend_report import run_rows, weighting_rows, write_report

    result = BlendResult(output, members, weighting, mean, weighted, valid, list(vocab))
    result.run_rows, result.weighting_rows = run_rows(result), weighting_rows(result)
    result.report = write_report(result)
    write_record(result)
    return result


def write_record(result: BlendResult) -> Path:
    """`<output>.json` beside the CSV: which runs, with which weights, made it, and how they scored."""
    weights = result.chosen.weights
    record = {
        "submission": str(result.output),
        "weighting": result.weighting,
        "mean": result.mean,
        "runs": [
            {"run": r.run, "member": m.name, "file": str(r.path), "weight": float(w) / len(m.runs)}
            for m, w in zip(result.members, weights, strict=True)
            for r in m.runs
        ],
        "vocab": result.vocab,  # lets pipeline.submit check labels without the training images
        "members": result.run_rows,
        "weightings": result.weighting_rows,
        "report": str(result.report),
    }
    path = result.output.with_suffix(result.output.suffix + ".json")
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(record, indent=2))
    return path
