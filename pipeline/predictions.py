"""The prediction file: the contract between training and blending.

One file per run, holding everything blending needs (probabilities, image ids, vocab, the run's
config), so blending never needs the data or the model. Only tensors and plain data are stored,
and files are read with `torch.load(weights_only=True)`: a shared prediction file cannot run code.
"""

from __future__ import annotations

import io
import pickle
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from pipeline.errors import PipelineError
from pipeline.fileio import write_atomic

FORMAT = "paddy-pipeline/predictions"
VERSION = 2  # 2: valid_probs_plain (no TTA), member, split
SUM_TOLERANCE = 1e-3  # how far a row of probabilities may sum from 1: float32 softmax, averaged over TTA passes
RANGE_TOLERANCE = 1e-6  # how far one probability may stray outside [0, 1]: float32 rounding of such means


@dataclass
class Predictions:
    run: str
    member: str  # the ensemble member: the run name without its fold suffix (a variant's folds share it)
    arch: str
    vocab: list[str]
    test_ids: list[str]
    test_probs: torch.Tensor  # (n_test, n_classes) float32 softmax probabilities, TTA
    valid_ids: list[str]
    valid_probs: torch.Tensor  # (n_valid, n_classes), TTA
    valid_probs_plain: torch.Tensor  # (n_valid, n_classes), one plain pass: what TTA adds is measurable
    valid_targets: torch.Tensor  # (n_valid,) int64 indices into vocab
    # pipeline.data.splits.Split.record(): strategy, seed, fold, n_folds, n_images (training images split)
    split: dict[str, Any]
    weight: float = 1.0
    metrics: dict[str, float] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    run_spec: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    created: str = ""
    device: str = ""
    run_hash: str = ""  # identity of the run's inputs (pipeline.training.provenance.run_hash)
    # versions, git commit, device, split seed, data_fingerprint (pipeline.data.competition.Competition.fingerprint)
    environment: dict[str, Any] = field(default_factory=dict)
    # extra targets (data.aux_targets), by train.csv column: vocab, weight, valid_probs (n_valid, classes;
    # one plain pass) and valid_targets; their error rates are metrics["valid_error_<column>"]
    aux_targets: dict[str, dict[str, Any]] = field(default_factory=dict)
    lr_found: float | None = None  # train.lr=find: lr_find's suggestion, the lr the run trained at
    # the recipe as table columns (optimizer, schedule, loss, extras), so that blending describes runs
    # without knowing the recipe registries (pipeline.training.recipe.recipe_columns)
    recipe_summary: dict[str, str] = field(default_factory=dict)
    # one record per epoch trained, in order, a resumed run's earlier epochs included: fit, epoch, step,
    # frozen, train_loss, valid_loss, error_rate (and error_rate_<extra target>), lr, seconds
    # (pipeline.training.history; drawn by pipeline.curves). Empty in files from before it was kept.
    history: list[dict[str, Any]] = field(default_factory=list)
    # where the run's targets came from beyond its labels, by kind, each with the blend's CSV ("blend") and
    # its probabilities file's content hash ("hash", pipeline.blend_file.content_hash): "distill" (loss=distill;
    # alpha, temperature) and "pseudo" (data.pseudo; threshold, hard, cap_per_class, fold, n_images: the test
    # images that joined training). Empty: labels alone. Blending marks members by it and warns of leaks
    teacher: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None  # where it was loaded from; not stored

    def check(self, where: str, fix: str) -> None:
        """Shapes and types agree with each other and the probabilities, the main target's and each extra
        target's, are finite, in [0, 1] and in rows summing to 1; raises PipelineError naming `where` and
        saying `fix`, what to do."""
        n_classes, n_valid = len(self.vocab), len(self.valid_ids)
        probs_by_name = {
            "test_probs": (self.test_probs, len(self.test_ids), n_classes),
            "valid_probs": (self.valid_probs, n_valid, n_classes),
            "valid_probs_plain": (self.valid_probs_plain, n_valid, n_classes),
        }
        for name, aux in self.aux_targets.items():
            probs_by_name[f"aux target {name}'s valid_probs"] = (aux["valid_probs"], n_valid, len(aux["vocab"]))
        problems = [p for name, args in probs_by_name.items() if (p := probability_problem(name, *args))]
        if tuple(self.valid_targets.shape) != (len(self.valid_ids),):
            problems.append("valid_targets does not match valid_ids")
        for name, aux in self.aux_targets.items():
            if tuple(aux["valid_targets"].shape) != (len(self.valid_ids),):
                problems.append(f"aux target {name}'s valid_targets do not match valid_ids")
        if len(set(self.test_ids)) != len(self.test_ids):
            problems.append("test_ids repeat")
        if len(set(self.valid_ids)) != len(self.valid_ids):
            problems.append("valid_ids repeat")
        if problems:
            raise PipelineError(f"prediction file {where} is invalid: {'; '.join(problems)}: {fix}")

    @property
    def valid_accuracy(self) -> float:
        return float((self.valid_probs.argmax(1) == self.valid_targets).float().mean())


def probability_problem(name: str, probs: torch.Tensor, n_rows: int, n_classes: int) -> str | None:
    """What is wrong with `probs` as an (n_rows, n_classes) float32 table of probabilities, if anything."""
    if probs.dtype != torch.float32:
        return f"{name} are not float32"
    if tuple(probs.shape) != (n_rows, n_classes):
        return f"{name} is {tuple(probs.shape)}, expected ({n_rows}, {n_classes})"
    if bad := int((~probs.isfinite()).sum()):  # e.g. a diverged run's NaN
        return f"{name} has {bad} NaN or infinite values"
    if not len(probs):
        return None
    # a row of [1.5, -0.5] sums to 1 but is no probability; rounding in TTA's means stays far inside this
    low, high = float(probs.min()), float(probs.max())
    if low < -RANGE_TOLERANCE or high > 1 + RANGE_TOLERANCE:
        return f"{name} has values outside [0, 1] (from {low:.4g} to {high:.4g})"
    sums = probs.double().sum(1)
    worst = float(sums[(sums - 1).abs().argmax()])
    if abs(worst - 1) > SUM_TOLERANCE:
        return f"{name} rows do not sum to 1 (one sums to {worst:.4g})"
    return None


def recipe_summary(preds: Predictions) -> dict[str, str]:
    """The training recipe as short table columns: as training described it (pipeline.training.recipe.
    recipe_columns), or, for a file from before it did, the options' names."""
    if preds.recipe_summary:
        return preds.recipe_summary
    recipe = preds.run_spec.get("recipe") or {}  # files from before recipes were recorded: the reference's
    names = {group: (recipe.get(group) or {}).get("name", name) for group, name in _REFERENCE.items()}
    return names | {"extras": "?" if recipe else "-"}


_REFERENCE = {"optimizer": "adam", "schedule": "fine_tune", "loss": "cross_entropy"}


def save(preds: Predictions, path: str | Path) -> Path:
    """Write atomically: an interrupted save never leaves a partial file at `path`."""
    path = Path(path)
    preds.check(str(path), "not saved; retrain the run (with a lower lr if its training diverged)")
    record = {k: v for k, v in asdict(preds).items() if k != "path"}
    record.update(format=FORMAT, version=VERSION)
    buffer = io.BytesIO()  # in memory first: a full disk then names the exact size (fileio.DiskFull)
    torch.save(record, buffer)
    return write_atomic(path, buffer.getvalue())


def _retrain(path: Path, config: dict[str, Any] | None = None) -> str:
    """The command that writes `path` again: a broken file is retrained without train.force."""
    model = ((config or {}).get("model") or {}).get("name") or "MODEL"
    return f"python -m pipeline.train +model={model} with the options run {path.stem} was trained with"


def load(path: str | Path) -> Predictions:
    """Read a prediction file without unpickling arbitrary objects, and check it."""
    path = Path(path)
    try:
        record = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's message advises retrying with weights_only=False, i.e. running the file's code: not passed on
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        raise PipelineError(
            f"{path} holds objects other than tensors and plain data{f' ({found[1]})' if found else ''} and was not "
            "loaded: delete it, or get it from a trusted source"
        ) from None
    except (RuntimeError, EOFError):  # torch's zip reader on a cut or damaged file
        raise PipelineError(
            f"{path} is truncated or unreadable: delete it or retrain the run ({_retrain(path)})"
        ) from None
    except OSError as e:
        raise PipelineError(f"{path} cannot be read: {e.strerror or e}") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise PipelineError(f"{path} is not a prediction file of this pipeline")
    if record.get("version") != VERSION:
        raise PipelineError(f"{path} has format version {record.get('version')}; this pipeline reads {VERSION}")
    fields = {k: record[k] for k in Predictions.__dataclass_fields__ if k in record}
    try:
        preds = Predictions(**fields, path=path)
    except TypeError as e:
        raise PipelineError(f"prediction file {path} is incomplete: {e}") from None
    preds.check(str(path), f"delete it or retrain the run ({_retrain(path, preds.config)})")
    return preds
