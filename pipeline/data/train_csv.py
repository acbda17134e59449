"""Extra targets from train.csv (data.aux_targets): lesson 7's variety beside the disease.

train.csv (data.train_csv) has a row per training image: the id column (data.id_column, Paddy's image_id:
the file name), the label, and other columns, such as Paddy's variety and age. Each extra target is one
such column, read as categories.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from pipeline.errors import PipelineError

if TYPE_CHECKING:
    from pipeline.data.competition import Competition


@dataclass(frozen=True)
class AuxTarget:
    name: str  # the train.csv column
    weight: float  # of its loss in the summed loss
    vocab: list[str]  # its values, sorted
    values: dict[str, str]  # image id -> value, for every training image

    def __call__(self, item: Any) -> str:
        """The target of a training image file: fastai's get_y."""
        return self.values[Path(item).name]


def read_aux_targets(comp: Competition, weights: dict[str, float]) -> list[AuxTarget]:
    """The columns named in `weights` (target -> loss weight) for every training image; one clear line
    for a missing file or column, an image without a row or a value, or a column with one value."""
    if not weights:
        return []
    path, key = comp.train_csv_path, comp.layout.id_column
    if not path.is_file():
        raise PipelineError(f"data.aux_targets needs {path} (columns {key} and {', '.join(weights)}): it is missing")
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise PipelineError(f"{path} is not a readable CSV ({e}): data.aux_targets reads its columns") from None
    wanted = [key, *weights]
    if missing := [c for c in wanted if c not in table.columns]:
        raise PipelineError(
            f"data.aux_targets: {path} has no column {missing[0]!r} (its columns: {', '.join(table.columns)})"
        )
    ids = [f.name for f in comp.train_files]
    rows = table[table[key].isin(ids)]
    if repeated := sorted(set(rows[key][rows[key].duplicated()])):
        raise PipelineError(f"{path} lists training image {repeated[0]} more than once: keep one row per image")
    rows = rows.set_index(key)
    if absent := [i for i in ids if i not in rows.index]:
        raise PipelineError(
            f"{len(absent)} training image(s) have no row in {path} (e.g. {absent[0]}): "
            f"data.aux_targets needs a row for every image in {comp.layout.train_dir}/"
        )
    rows = rows.loc[ids]
    targets = []
    for name, weight in weights.items():
        column = rows[name].str.strip()
        if len(blank := column[column == ""]):
            raise PipelineError(f"{path}: {len(blank)} training image(s) have no {name} (e.g. {blank.index[0]})")
        vocab = sorted(set(column))
        if len(vocab) < 2:
            raise PipelineError(
                f"data.aux_targets: {name} in {path} has one value ({vocab[0]!r}) for every training image: "
                "nothing to learn, drop it"
            )
        targets.append(AuxTarget(name, weight, vocab, dict(zip(ids, column, strict=True))))
    return targets


def target_sizes(n_classes: int, aux: Sequence[AuxTarget]) -> list[int]:
    """Sizes of the model output's slices: the main target's classes first, then each extra target's."""
    return [n_classes, *(len(t.vocab) for t in aux)]
