"""What a run trains on beyond its label folders, by image: pseudo-labelled test images and a teacher's
probabilities (pipeline.training.teachers chooses them from a blend), and the items that result.

Data with such targets carries two probability targets after the categories (pipeline.data.loaders):
  probs    what the label's loss learns: a labelled image's one-hot row, a pseudo-labelled test image's
           blend probabilities (data.pseudo_hard: the one-hot row of the blend's top class)
  teacher  a distillation teacher's probabilities (loss=distill), or a zero row where there is none: for
           validation images, so that their loss is the label's alone, and for every image of a run that
           does not distil
The label itself stays a category (a pseudo-labelled image's: the blend's top class), so that metrics,
validation targets and the prediction file read as with labels alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from pipeline.data.competition import Competition


def select_pseudo(probs: torch.Tensor, threshold: float, cap_per_class: int = 0) -> list[int]:
    """Rows of `probs` (test images, classes) whose top probability reaches `threshold`; with
    `cap_per_class` > 0, at most that many a top class, the most confident. In row order."""
    top, best = probs.max(1)
    chosen = (top >= torch.tensor(threshold, dtype=top.dtype)).nonzero().flatten()  # at the probabilities' precision
    if cap_per_class:
        kept = []
        for c in best[chosen].unique():
            rows = chosen[best[chosen] == c]
            kept.append(rows[top[rows].argsort(descending=True, stable=True)[:cap_per_class]])
        chosen = torch.cat(kept) if kept else chosen
    return sorted(int(i) for i in chosen)


@dataclass
class SoftTargets:
    """A run's probability targets by item (an image file): fastai's get_y for the label, probs and teacher.
    Plain data, so that DataLoader workers pickle it."""

    vocab: list[str]
    pseudo: dict[Path, torch.Tensor]  # a pseudo-labelled test image -> the blend's probabilities for it
    teacher: dict[Path, torch.Tensor]  # an image -> its teacher's probabilities; absent: none (a zero row)
    hard: bool = False  # pseudo-labels learn the blend's top class alone
    record: dict[str, Any] = field(default_factory=dict)  # where they came from: the prediction file's `teacher`

    def __post_init__(self) -> None:
        self.index = {name: i for i, name in enumerate(self.vocab)}

    def _one_hot(self, i: int) -> torch.Tensor:
        row = torch.zeros(len(self.vocab))
        row[i] = 1.0
        return row

    def label(self, item: Path) -> str:
        """The label's category: the label folder, or a pseudo-labelled image's top class."""
        found = self.pseudo.get(item)
        return Path(item).parent.name if found is None else self.vocab[int(found.argmax())]

    def probs(self, item: Path) -> torch.Tensor:
        """What the label's loss learns: the one-hot row of the label, or the blend's probabilities."""
        found = self.pseudo.get(item)
        if found is None or self.hard:
            return self._one_hot(self.index[self.label(item)])
        return found

    def teacher_probs(self, item: Path) -> torch.Tensor:
        found = self.teacher.get(item)
        return torch.zeros(len(self.vocab)) if found is None else found

    def getters(self) -> list[Getter]:
        """fastai's get_y for the label, the target probabilities and the teacher's, in that order."""
        return [Getter(self, "label"), Getter(self, "probs"), Getter(self, "teacher_probs")]


@dataclass(frozen=True)
class Getter:
    """One of SoftTargets' three as fastai's get_y: a callable object, as fastai's Transform takes a bound
    method for one of its own (it would look for encodes and decodes on it)."""

    targets: SoftTargets
    what: str  # label | probs | teacher_probs

    def __call__(self, item: Path) -> Any:
        return getattr(self.targets, self.what)(item)


def run_items(comp: Competition, valid_idx: Sequence[int], extra: Sequence[Path] = ()) -> tuple[list[Path], list[int]]:
    """A run's items and the indices of its validation items among them: every training image but those
    data.exclude leaves out of training (validation keeps them all), then `extra` (pseudo-labelled test
    images), which train only."""
    held = {int(i) for i in valid_idx}
    files = enumerate(comp.train_files)
    kept = [(f, i in held) for i, f in files if i in held or comp.image_id(f) not in comp.excluded]
    return [f for f, _ in kept] + list(extra), [j for j, (_, valid) in enumerate(kept) if valid]
