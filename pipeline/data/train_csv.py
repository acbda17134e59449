"""Extra targets from train.csv (data.aux_targets): lesson 7's variety beside the disease.

train.csv (data.train_csv) has a row per training image: the id column (data.id_column, Paddy's image_id:
the file name), the label, and other columns, such as Paddy's variety and age. Each extra target is one
such column, read as categories. Rows are matched to images by label folder and id when train.csv has the
label column (data.label_column), else by id alone, and then a file name in two label folders is refused.
A numeric column with more than MAX_NUMERIC_CLASSES values is refused: a measurement, not a class.
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


# A column whose values are all numbers and which has more distinct values than this is refused as an
# extra target: it looks like a measurement (Paddy's age), and as classes each value would be a class of
# its own with a handful of images. Numbers with few values (a grade, a year) stay categories.
MAX_NUMERIC_CLASSES = 20


def image_key(path: str | Path) -> str:
    """How a training image is named in train.csv's lookup: its label folder and file name, as split
    records name them, so that one file name in two label folders stays two images."""
    path = Path(path)
    return f"{path.parent.name}/{path.name}"


@dataclass(frozen=True)
class AuxTarget:
    name: str  # the train.csv column
    weight: float  # of its loss in the summed loss
    vocab: list[str]  # its values, sorted
    values: dict[str, str]  # image_key (label folder/file name) -> value, for every training image

    def __call__(self, item: Any) -> str:
        """The target of a training image file: fastai's get_y."""
        return self.values[image_key(item)]


def read_aux_targets(comp: Competition, weights: dict[str, float]) -> list[AuxTarget]:
    """The columns named in `weights` (target -> loss weight) for every training image; one clear line
    for a missing file or column, an image without a row or a value, a column with one value or one
    that looks like a number rather than a class."""
    if not weights:
        return []
    path = comp.train_csv_path
    rows = _rows_by_image(comp, _read_table(comp, list(weights)))
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
        if len(vocab) > MAX_NUMERIC_CLASSES and pd.to_numeric(column, errors="coerce").notna().all():
            raise PipelineError(
                f"data.aux_targets: {name} in {path} looks like a number, not a class ({len(vocab)} numeric "
                f"values, more than {MAX_NUMERIC_CLASSES}): each would be a class of its own; drop it"
            )
        targets.append(AuxTarget(name, weight, vocab, dict(zip(rows.index, column, strict=True))))
    return targets


def _read_table(comp: Competition, columns: list[str]) -> pd.DataFrame:
    """train.csv as text, with the id column and `columns` checked present."""
    path, key = comp.train_csv_path, comp.layout.id_column
    if not path.is_file():
        raise PipelineError(f"data.aux_targets needs {path} (columns {key} and {', '.join(columns)}): it is missing")
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise PipelineError(f"{path} is not a readable CSV ({e}): data.aux_targets reads its columns") from None
    if missing := [c for c in [key, *columns] if c not in table.columns]:
        raise PipelineError(
            f"data.aux_targets: {path} has no column {missing[0]!r} (its columns: {', '.join(table.columns)})"
        )
    return table


def _rows_by_image(comp: Competition, table: pd.DataFrame) -> pd.DataFrame:
    """train.csv's row of each training image, in file-list order, indexed by image_key. Rows are matched by
    label and id when train.csv has the label column, else by id alone, refused if ambiguous."""
    path, key, label = comp.train_csv_path, comp.layout.id_column, comp.layout.label_column
    keys = [image_key(f) for f in comp.train_files]
    if label in table.columns:
        table = table.set_index(table[label].str.strip() + "/" + table[key].str.strip())
    else:
        folders: dict[str, str] = {}
        for f in comp.train_files:
            if (other := folders.setdefault(f.name, f.parent.name)) != f.parent.name:
                raise PipelineError(
                    f"{path} names images by {key} alone, but {f.name} is in two label folders ({other} and "
                    f"{f.parent.name}): add a {label} column to it, or rename one of the images"
                )
        table = table.set_index(table[key].map(lambda i: f"{folders.get(i.strip())}/{i.strip()}"))
    rows = table[table.index.isin(keys)]
    if repeated := sorted(set(rows.index[rows.index.duplicated()])):
        raise PipelineError(f"{path} lists training image {repeated[0]} more than once: keep one row per image")
    if absent := [k for k in keys if k not in rows.index]:
        raise PipelineError(
            f"{len(absent)} training image(s) have no row in {path} (e.g. {absent[0]}): data.aux_targets needs "
            f"a row ({key}{', ' + label if label in table.columns else ''}) for every image in "
            f"{comp.layout.train_dir}/<label>/"
        )
    return rows.loc[keys]


def target_sizes(n_classes: int, aux: Sequence[AuxTarget]) -> list[int]:
    """Sizes of the model output's slices: the main target's classes first, then each extra target's."""
    return [n_classes, *(len(t.vocab) for t in aux)]
