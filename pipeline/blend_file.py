"""The blend's probabilities: the contract between a blend and the runs that learn from it.

A blend is named by its submission CSV; beside it, `<csv stem>.probs.pt` holds what a student
(loss=distill), a pseudo-labelled run (data.pseudo) and the label review need: the blend's test
probabilities (also per fold, where every member is a kfold variant of one split, so that fold k's
student learns only from the teachers' fold-k models), its out-of-fold probabilities for the training
images where its members have them, image ids, vocab and the members' runs with their run hashes.
The same safe format as prediction files: tensors and plain data, read with weights_only, refused
when not finite or not normalised.
"""

from __future__ import annotations

import hashlib
import io
import pickle
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from pipeline.errors import PipelineError
from pipeline.predictions import probability_problem

FORMAT = "paddy-pipeline/blend-probabilities"
VERSION = 1


@dataclass
class BlendFile:
    csv: str  # the blend's submission CSV, which names it
    weighting: str
    vocab: list[str]
    test_ids: list[str]  # the sample submission's order
    test_probs: torch.Tensor  # (n_test, n_classes) float32: the blend written to the CSV
    # out-of-fold probabilities of the training images (ids as prediction files' valid_ids: paths under
    # data.train_dir), each from models that never trained on it; empty when a member has none (holdout)
    oof_ids: list[str] = field(default_factory=list)
    oof_probs: torch.Tensor = field(default_factory=lambda: torch.zeros(0, 0))
    oof_targets: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.int64))  # given labels
    # (n_folds, n_test, n_classes): fold k's test probabilities from the members' fold-k runs only;
    # empty unless every member is a kfold variant of the split in `split`
    fold_test_probs: torch.Tensor = field(default_factory=lambda: torch.zeros(0, 0, 0))
    split: dict[str, Any] = field(default_factory=dict)  # the members' shared kfold split: seed, n_folds, n_images
    # per member: {"member", "weight", "runs": [{"run", "run_hash", "fold", "teacher"}]}; "teacher" is the
    # content hash of the blend file that run learned from, if any (the report warns on a member whose
    # teacher blend holds a member of this blend)
    members: list[dict[str, Any]] = field(default_factory=list)
    created: str = ""

    @property
    def has_oof(self) -> bool:
        return bool(self.oof_ids)

    def check(self, where: str) -> None:
        """Shapes agree and every table is probabilities; raises PipelineError naming `where`."""
        n = len(self.vocab)
        tables = {"test_probs": (self.test_probs, len(self.test_ids))}
        if self.oof_ids:
            tables["oof_probs"] = (self.oof_probs, len(self.oof_ids))
        for k, probs in enumerate(self.fold_test_probs):
            tables[f"fold {k}'s test_probs"] = (probs, len(self.test_ids))
        problems = [p for name, (t, rows) in tables.items() if (p := probability_problem(name, t, rows, n))]
        if self.oof_ids and tuple(self.oof_targets.shape) != (len(self.oof_ids),):
            problems.append("oof_targets does not match oof_ids")
        if len(set(self.test_ids)) != len(self.test_ids) or len(set(self.oof_ids)) != len(self.oof_ids):
            problems.append("image ids repeat")
        if problems:
            raise PipelineError(f"blend probabilities {where} are invalid: {'; '.join(problems)}: blend again")


def probs_path(csv: str | Path) -> Path:
    """Where the blend named by its CSV keeps its probabilities."""
    csv = Path(csv)
    return csv.with_name(csv.stem + ".probs.pt")


def encode(blend: BlendFile) -> bytes:
    """The file's bytes, checked first (written by pipeline.ensemble.writing with the blend's other files)."""
    blend.check(str(probs_path(blend.csv)))
    buffer = io.BytesIO()
    torch.save(asdict(blend) | {"format": FORMAT, "version": VERSION}, buffer)
    return buffer.getvalue()


def content_hash(path: str | Path) -> str:
    """What a run that learns from a blend records of it: a new blend of other runs retrains it."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def load(csv: str | Path, what: str) -> BlendFile:
    """The probabilities of the blend named by `csv` (its CSV or the .probs.pt itself); `what` names the
    option that points at it (loss.teacher, data.pseudo) for the one-line errors."""
    path = Path(csv) if str(csv).endswith(".probs.pt") else probs_path(csv)
    if not path.is_file():
        raise PipelineError(
            f"{what}={csv}: no blend probabilities at {path}; blend first (python -m pipeline.blend "
            f"blend.output={Path(csv).with_suffix('.csv')}) and point {what} at its CSV"
        )
    try:
        record = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise PipelineError(f"{path} holds objects other than tensors and plain data and was not loaded") from None
    except (RuntimeError, EOFError, OSError):
        raise PipelineError(f"{path} is truncated or unreadable: blend again") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT or record.get("version") != VERSION:
        raise PipelineError(f"{path} is not a blend probabilities file (version {VERSION}) of this pipeline")
    blend = BlendFile(**{k: record[k] for k in BlendFile.__dataclass_fields__ if k in record})
    blend.check(str(path))
    return blend
