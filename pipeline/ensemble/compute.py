"""Compute a blend from prediction files, writing nothing: members joined, weights chosen, rows aligned
by image id, figures for the report.

Every weighting the runs allow is computed and scored (config and equal always; greedy, optimize, best
and stack when the members share validation images, stack where it can be fitted on them);
`blend.weighting` picks the one pipeline.ensemble.writing writes to the CSV. Where every member covers
the training images out of fold, the label review lists the images whose label the blend doubts.
"""

from __future__ import annotations

import fnmatch
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from pipeline.config import check_ranges
from pipeline.data.layout import Layout
from pipeline.data.submission_csv import accuracy_against, read_sample_submission
from pipeline.ensemble.arithmetic import as_probs, leave_one_out_accuracy
from pipeline.ensemble.combiners import Combiner, Unfittable
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
    """One weighting's blend: its fitted combiner, and its predictions on the validation and test images."""

    combiner: Combiner  # fitted on all the validation images (a weighted mean, or stack's model)
    valid_probs: np.ndarray | None  # (valid images, classes), from the combiner fitted on all of them
    nested_probs: np.ndarray | None  # the same, each half's rows from a combiner fitted on the other half
    test_probs: np.ndarray  # (test images, classes) in the sample submission's order
    test_labels: np.ndarray  # (test images,) in the sample submission's order
    test_acc: float | None  # against the true test labels, where known (the demo)

    @property
    def weights(self) -> np.ndarray | None:
        """Per member, summing to 1; None for a learned combiner (stack)."""
        return self.combiner.weights


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
    train_root: Path  # data.root/data.train_dir: where the label review's thumbnails come from
    # the label review (pipeline.ensemble.review): the training images whose label the blend finds least
    # likely; None unless every member covers the training images out of fold
    suspects: pd.DataFrame | None = None
    notes: list[str] = field(default_factory=list)  # warnings for the report and the terminal

    @property
    def chosen(self) -> Weighted:
        return self.weighted[self.weighting]

    @property
    def out_of_fold(self) -> bool:
        """Every member is a kfold variant: its validation predictions cover every training image out of fold."""
        return self.valid is not None and all(m.split == "kfold" for m in self.members)

    @property
    def report_path(self) -> Path:
        return self.output.with_suffix(".report.html")

    @property
    def confusion_path(self) -> Path:
        return self.output.with_name(self.output.stem + ".confusion.png")

    @property
    def record_path(self) -> Path:
        return self.output.with_suffix(self.output.suffix + ".json")

    @property
    def suspects_path(self) -> Path:
        return self.output.with_name(self.output.stem + ".suspects.csv")


def fitted(
    rule: Weighting, members: list[Member], valid: ValidationSet | None, test_stack: np.ndarray, blend_cfg: BlendConfig
) -> tuple[Combiner, np.ndarray | None, np.ndarray | None, np.ndarray]:
    """A weighting's combiner fitted on the validation images, and its (valid, nested, test) probabilities:
    nested from combiners refitted on each half of the images, where the weighting is searched on them.
    Raises Unfittable where it cannot be fitted on them (or on a half)."""
    from pipeline.ensemble.weight_search import cross_fitted

    def fit(stack: np.ndarray | None, targets: np.ndarray | None) -> Combiner:
        return rule.fit(stack, targets, members, blend_cfg)

    if valid is None:
        combiner = fit(None, None)
        return combiner, None, None, combiner.probs(test_stack)
    combiner = fit(valid.stack, valid.targets)
    valid_probs = combiner.probs(valid.stack)
    nested = cross_fitted(fit, valid.stack, valid.targets, blend_cfg.seed) if rule.searched else valid_probs
    return combiner, valid_probs, nested, combiner.probs(test_stack)


def weigh(
    members: list[Member], valid: ValidationSet | None, cfg: BlendAppConfig, order: list[str], layout: Layout
) -> tuple[dict[str, Weighted], list[str]]:
    """Every weighting the members allow (the searched ones only where they share validation images),
    fitted and scored; and a note for each that could not be fitted. The chosen one that cannot be
    fitted stops the blend with one line."""
    vocab, weighting = np.array(members[0].runs[0].vocab), str(cfg.blend.weighting)
    test_stack = np.stack([m.test_probs for m in members])
    test_labels = cfg.data.get("test_labels")
    truth = test_labels if test_labels and Path(test_labels).is_file() else None
    weighted, notes = {}, []
    for entry in WEIGHTINGS.entries():
        if entry.build.searched and valid is None:
            continue
        try:
            combiner, valid_probs, nested, test_probs = fitted(entry.build, members, valid, test_stack, cfg.blend)
        except Unfittable as e:
            if entry.name == weighting:
                raise PipelineError(
                    f"blend.weighting={weighting} cannot be fitted: {e} (the nested estimate fits it on each half "
                    "of the validation images): blend runs validated on more images per class (data.split=kfold: "
                    "every training image, out of fold) or choose another blend.weighting"
                ) from None
            notes.append(f"{entry.name} is left out of the comparison: it cannot be fitted: {e}")
            continue
        labels = vocab[test_probs.argmax(1)]
        submitted = pd.DataFrame({layout.id_column: order, layout.label_column: labels})
        test_acc = None if truth is None else accuracy_against(submitted, truth, layout)
        weighted[entry.name] = Weighted(combiner, valid_probs, nested, test_probs, labels, test_acc)
    return weighted, notes


def compute_blend(cfg: BlendAppConfig) -> BlendResult:
    """The blend of the selected prediction files under every weighting they allow; writes nothing."""
    from pipeline.ensemble.review import suspects
    from pipeline.ensemble.teachers import teacher_warnings

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
    weighted, notes = weigh(members, valid, cfg, order, layout)
    vocab = list(runs[0].vocab)
    result = BlendResult(
        Path(cfg.blend.output),
        sample_path,
        order,
        members,
        weighting,
        mean,
        weighted,
        valid,
        vocab,
        run_rows(members, weighted, weighting, valid, mean, len(vocab)),
        weighting_rows(weighted, weighting, valid, len(vocab), len(members)),
        layout,
        Path(cfg.data.root) / layout.train_dir,
        notes=notes + teacher_warnings(members),
    )
    if result.out_of_fold and cfg.blend.review.top > 0:
        result.suspects = suspects(valid.ids, valid.targets, result.chosen.nested_probs, vocab, cfg.blend.review.top)
    for note in result.notes:
        log.warning("%s", note)
    return result


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
    """Per member: its training recipe, its weight under each weighting (None for a learned combiner),
    validation accuracy and log loss with and without TTA (on its own validation images; out-of-fold for a
    kfold variant), its extra targets' validation error (mean over folds), its inference speed, the blend it
    learned from, and what the chosen blend loses without it (where the members share validation images and
    the chosen blend is a weighted mean)."""
    from pipeline.ensemble.teachers import teacher_mark

    chosen = weighted[weighting]
    without = (
        leave_one_out_accuracy(valid.stack, chosen.weights, valid.targets, mean)
        if valid is not None and chosen.weights is not None
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
                "teacher": teacher_mark(m.runs),
                **{f"w {name}": None if w.weights is None else float(w.weights[i]) for name, w in weighted.items()},
                "acc TTA": acc,
                "log loss TTA": loss,
                "acc no TTA": acc_plain,
                "log loss no TTA": loss_plain,
                "aux err": aux_errors(m.runs),
                "TTA n": (m.runs[0].config.get("tta") or {}).get("n"),
                "img/s": images_per_second(m.runs),
                "blend acc without it": left_out,
                "it adds": None if left_out is None else blend_acc - left_out,
            }
        )
    return rows


def images_per_second(runs: list[Predictions]) -> float | None:
    """A member's inference speed at its TTA setting: images a second through all its runs in turn (a kfold
    variant predicts each test image with each fold's model), from each run's TTA time over the test and
    validation images it predicted (timings["tta_s"], on the device it ran on); None where a run lacks it."""
    seconds = [r.timings.get("tta_s") for r in runs]
    if not all(seconds):
        return None
    return 1 / sum(s / (len(r.test_ids) + len(r.valid_ids)) for s, r in zip(seconds, runs, strict=True))


def blend_images_per_second(rows: list[dict[str, Any]], weights: np.ndarray | None) -> float | None:
    """The written blend's speed: every member it uses (weight above 0; all of them for a learned
    combiner), each in turn; None where one lacks its timings."""
    used = [r["img/s"] for i, r in enumerate(rows) if weights is None or weights[i] > 0]
    return None if None in used else 1 / sum(1 / s for s in used)


def aux_errors(runs: list[Predictions]) -> str:
    """The extra targets' validation error rates (pipeline.training.targets), averaged over a member's runs."""
    names = runs[0].aux_targets
    errors = {n: float(np.mean([r.metrics[f"valid_error_{n}"] for r in runs])) for n in names}
    return ", ".join(f"{n} {e:.4f}" for n, e in errors.items()) or "-"


def weighting_rows(
    weighted: dict[str, Weighted], weighting: str, valid: ValidationSet | None, n_classes: int, n_members: int
) -> list[dict[str, Any]]:
    """Per weighting: validation figures (in-sample: flattering for a searched weighting), the nested
    estimate (fitted on one half, scored on the other, swapped), the test accuracy and what was fitted."""
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
                "runs used": n_members if w.weights is None else int((w.weights > 0).sum()),
                "fit": w.combiner.describe(),
            }
        )
    return rows
