"""Compute a blend from prediction files, writing nothing: members joined, weights chosen, rows aligned
by image id, figures for the report.

Every weighting the runs allow is computed and scored (config and equal always; greedy and optimize
when the members share validation images); `blend.weighting` picks the one pipeline.ensemble.writing
writes to the CSV.
"""

from __future__ import annotations

import fnmatch
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from pipeline.config import check_ranges
from pipeline.data.layout import Layout
from pipeline.data.submission_csv import accuracy_against, read_sample_submission
from pipeline.ensemble.arithmetic import as_probs, blend_probs, leave_one_out_accuracy
from pipeline.ensemble.members import Member, ValidationSet, assemble_members, shared_validation, validation_mismatch
from pipeline.ensemble.weightings import WEIGHTINGS, Weighting
from pipeline.errors import PipelineError
from pipeline.predictions import Predictions, load, recipe_summary

if TYPE_CHECKING:
    from pipeline.config import BlendAppConfig, BlendConfig

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
    """Everything a blend's outputs are made from; computed before anything is written."""

    output: Path  # where the submission CSV goes; the report, PNG and record go beside it
    sample: Path  # the competition's sample submission (data.sample_submission), which the CSV is checked against
    test_ids: list[str]  # the sample submission's order
    members: list[Member]
    weighting: str  # the one written to `output`
    mean: str
    weighted: dict[str, Weighted]  # every weighting computed, by name
    valid: ValidationSet | None  # None when the members' validation images differ
    vocab: list[str]
    run_rows: list[dict[str, Any]]  # per member: weights and figures (run_rows)
    weighting_rows: list[dict[str, Any]]  # per weighting: figures (weighting_rows)
    layout: Layout  # the CSV's id and label columns

    @property
    def chosen(self) -> Weighted:
        return self.weighted[self.weighting]

    @property
    def report_path(self) -> Path:
        return self.output.with_suffix(".report.html")

    @property
    def confusion_path(self) -> Path:
        return self.output.with_name(self.output.stem + ".confusion.png")

    @property
    def record_path(self) -> Path:
        return self.output.with_suffix(self.output.suffix + ".json")


def weigh(
    members: list[Member], valid: ValidationSet | None, blend_cfg: BlendConfig
) -> dict[str, tuple[np.ndarray, Any]]:
    """Weights of every weighting the members allow (the searched ones only where they share validation
    images), each with the function that refits it on a subset of the validation images (None where
    nothing is fitted), for the nested estimate."""
    out: dict[str, tuple[np.ndarray, Any]] = {}
    for entry in WEIGHTINGS.entries():
        if entry.build.searched and valid is None:
            continue

        def fit(stack: np.ndarray, targets: np.ndarray, rule: Weighting = entry.build) -> np.ndarray:
            weights = rule.fit(stack, targets, members, blend_cfg)
            return weights / weights.sum()

        stack, targets = (valid.stack, valid.targets) if valid is not None else (None, None)
        out[entry.name] = (fit(stack, targets), fit if entry.build.searched else None)
    return out


def compute_blend(cfg: BlendAppConfig) -> BlendResult:
    """The blend of the selected prediction files under every weighting they allow; writes nothing."""
    from pipeline.ensemble.weight_search import cross_fitted

    check_ranges(cfg)
    WEIGHTINGS[cfg.blend.weighting]  # an unknown name: one line listing the known ones, before any file is read
    layout = Layout.from_config(cfg.data)  # a config error before any file is read
    if not Path(cfg.data.root).is_dir():  # said first: a wrong folder would otherwise read as "no prediction files"
        raise PipelineError(
            f"data folder {cfg.data.root} does not exist: set data.root to the competition folder "
            f"(blend reads its {layout.sample_submission})"
        )
    runs = [load(f) for f in select_files(cfg.paths.preds, list(cfg.blend.runs))]
    sample_path = Path(cfg.data.root) / layout.sample_submission
    order = list(read_sample_submission(sample_path, layout)[layout.id_column])
    check_test_images(runs, sample_path, order, cfg.data.root)
    check_compatible(runs)
    members = assemble_members(runs, order)
    weighting, mean = str(cfg.blend.weighting), str(cfg.blend.mean)
    mismatch = validation_mismatch(members)
    if mismatch and WEIGHTINGS[weighting].build.searched:
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
        submitted = pd.DataFrame({layout.id_column: order, layout.label_column: labels})
        test_acc = None if truth is None else accuracy_against(submitted, truth, layout)
        weighted[name] = Weighted(weights, valid_probs, nested, labels, test_acc)

    rows = run_rows(members, weighted, weighting, valid, mean, len(vocab))
    weights_rows = weighting_rows(weighted, weighting, valid, len(vocab))
    return BlendResult(
        Path(cfg.blend.output),
        sample_path,
        order,
        members,
        weighting,
        mean,
        weighted,
        valid,
        list(vocab),
        rows,
        weights_rows,
        layout,
    )


def _scores(targets: np.ndarray, probs: np.ndarray | None, n_classes: int) -> tuple[float | None, float | None]:
    """(accuracy, log loss), by scikit-learn."""
    from sklearn.metrics import accuracy_score, log_loss

    if probs is None:
        return None, None
    return float(accuracy_score(targets, probs.argmax(1))), float(
        log_loss(targets, as_probs(probs), labels=range(n_classes))
    )


def run_rows(
    members: list[Member],
    weighted: dict[str, Weighted],
    weighting: str,
    valid: ValidationSet | None,
    mean: str,
    n_classes: int,
) -> list[dict[str, Any]]:
    """Per member: its training recipe, its weight under each weighting, validation accuracy and log loss
    with and without TTA (on its own validation images; out-of-fold for a kfold variant), its extra
    targets' validation error (mean over folds), and what the chosen blend loses without it (where the
    members share validation images)."""
    chosen = weighted[weighting]
    without = (
        leave_one_out_accuracy(valid.stack, chosen.weights, valid.targets, mean)
        if valid is not None
        else [math.nan] * len(members)
    )
    blend_acc, _ = _scores(valid.targets, chosen.valid_probs, n_classes) if valid is not None else (None, None)
    rows = []
    for i, m in enumerate(members):
        acc, loss = _scores(m.valid_targets, m.valid_probs, n_classes)
        acc_plain, loss_plain = _scores(m.valid_targets, m.valid_probs_plain, n_classes)
        left_out = None if math.isnan(without[i]) else float(without[i])
        rows.append(
            {
                "run": m.name,
                "split": m.split + (f" x{len(m.runs)}" if len(m.runs) > 1 else ""),
                **recipe_summary(m.runs[0]),
                **{f"w {name}": float(w.weights[i]) for name, w in weighted.items()},
                "acc TTA": acc,
                "log loss TTA": loss,
                "acc no TTA": acc_plain,
                "log loss no TTA": loss_plain,
                "aux err": aux_errors(m.runs),
                "blend acc without it": left_out,
                "it adds": None if left_out is None else blend_acc - left_out,
            }
        )
    return rows


def aux_errors(runs: list[Predictions]) -> str:
    """The extra targets' validation error rates (pipeline.training.targets), averaged over a member's runs."""
    names = runs[0].aux_targets
    errors = {n: float(np.mean([r.metrics[f"valid_error_{n}"] for r in runs])) for n in names}
    return ", ".join(f"{n} {e:.4f}" for n, e in errors.items()) or "-"


def weighting_rows(
    weighted: dict[str, Weighted], weighting: str, valid: ValidationSet | None, n_classes: int
) -> list[dict[str, Any]]:
    """Per weighting: validation figures (in-sample: flattering for a searched weighting), the nested
    estimate (weights fitted on one half, scored on the other, swapped) and the test accuracy."""
    targets = None if valid is None else valid.targets
    rows = []
    for name, w in weighted.items():
        acc, loss = _scores(targets, w.valid_probs, n_classes)
        nested_acc, nested_loss = _scores(targets, w.nested_probs, n_classes)
        rows.append(
            {
                "weighting": name + (" *" if name == weighting else ""),
                "valid acc": acc,
                "valid log loss": loss,
                "nested acc": nested_acc,
                "nested log loss": nested_loss,
                "test acc": w.test_acc,
                "runs used": int((w.weights > 0).sum()),
            }
        )
    return rows
