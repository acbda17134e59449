"""The label review: the training images whose given label the blend finds least likely.

Only where every member covers the training images out of fold (data.split=kfold), so each image is
judged by models that never trained on it, blended by combiners fitted on the other half of the images
(the nested probabilities). Images are ranked by the probability the blend gives their label, lowest
first (cleanlab's "self-confidence" order). cleanlab's `find_label_issues`, the field's reference, ranks
the same way but first drops the images its per-class thresholds do not flag; on the flipped-labels demo
(tests/conftest.py: flipped_kfold_runs, 22 blends over sizes, epochs and seeds) the plain ranking found as
many flipped labels in its top 40 (214 against cleanlab's 212), so the pipeline does without it. The list
goes to the report (with thumbnails) and to `<csv stem>.suspects.csv`, whose `image` column data.exclude
reads: cleaning the data is a reviewed, undoable config change.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import numpy as np
import pandas as pd

THUMBNAIL = 96  # px, the longer side of a thumbnail in the report
COLUMNS = ["image", "label", "guess", "guess_probability", "label_probability", "rank"]


def suspects(ids: list[str], targets: np.ndarray, probs: np.ndarray, vocab: list[str], top: int) -> pd.DataFrame:
    """The `top` training images (ids as in prediction files: paths under data.train_dir) whose given label
    the blend finds least likely, least likely first, with the blend's guess and both probabilities."""
    ranked = np.argsort(probs[np.arange(len(targets)), targets], kind="stable")[:top]
    guess = probs[ranked].argmax(1)
    return pd.DataFrame(
        {
            "image": [ids[i] for i in ranked],
            "label": [vocab[t] for t in targets[ranked]],
            "guess": [vocab[g] for g in guess],
            "guess_probability": probs[ranked, guess],
            "label_probability": probs[ranked, targets[ranked]],
            "rank": np.arange(1, len(ranked) + 1),
        },
        columns=COLUMNS,
    )


def thumbnail(path: Path) -> str | None:
    """The image as a small JPEG data URI, so that the report stays one self-contained file; None when
    it cannot be read (moved or deleted since training)."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            small = image.convert("RGB")
            small.thumbnail((THUMBNAIL, THUMBNAIL))
    except OSError:
        return None
    buffer = io.BytesIO()
    small.save(buffer, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def review_table(table: pd.DataFrame, train_root: Path) -> str:
    """The suspects as an HTML table, one row each, its thumbnail (read from `train_root`) beside its rank."""
    rows = []
    for s in table.itertuples():
        uri = thumbnail(train_root / s.image)
        alt = html.escape(s.image)
        picture = f'<img class="thumb" alt="{alt}" width="{THUMBNAIL}" src="{uri}">' if uri else "(unreadable)"
        cells = [
            f'<td class="num">{s.rank}</td><td>{picture}</td><td>{alt}</td><td>{html.escape(s.label)}</td>',
            f'<td class="num">{s.label_probability:.4f}</td><td>{html.escape(s.guess)}</td>',
            f'<td class="num">{s.guess_probability:.4f}</td>',
        ]
        rows.append(f"<tr>{''.join(cells)}</tr>")
    head = "".join(f"<th>{h}</th>" for h in ("rank", "", "image", "label", "p(label)", "guess", "p(guess)"))
    return f'<table class="table"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'
