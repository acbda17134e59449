"""The table of scripts/beyond_averaging.sh: each row's accuracy and log loss on the demo's true test labels,
its honest validation estimate (out-of-fold for a run, the nested estimate for a searched weighting) and its
inference speed. Reads only the files the commands wrote. Usage: python scripts/beyond_averaging.py OUT"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, log_loss

from pipeline import blend_file
from pipeline.ensemble.arithmetic import as_probs
from pipeline.ensemble.compute import images_per_second
from pipeline.ensemble.members import assemble_members
from pipeline.predictions import load
from pipeline.tables import format_table


def scores(targets: np.ndarray, probs: np.ndarray) -> tuple[float, float]:
    return float(accuracy_score(targets, probs.argmax(1))), float(
        log_loss(targets, as_probs(probs), labels=range(probs.shape[1]))
    )


def member_rows(preds: Path, truth: pd.DataFrame, label: str) -> list[dict]:
    """One row per member of the prediction files in `preds` (a kfold variant's folds joined)."""
    runs = [load(p) for p in sorted(preds.glob("*.pt"))]
    vocab = runs[0].vocab
    targets = np.array([vocab.index(v) for v in truth["label"]])
    rows = []
    for m in assemble_members(runs, list(truth["image_id"])):
        test_acc, test_loss = scores(targets, m.test_probs)
        oof_acc, oof_loss = scores(m.valid_targets, m.valid_probs)
        rows.append(
            {
                "row": f"{label}: {m.name}",
                "test acc": test_acc,
                "test log loss": test_loss,
                "honest acc": oof_acc,
                "honest log loss": oof_loss,
                "img/s": images_per_second(m.runs),
            }
        )
    return rows


def blend_rows(blends: Path, truth: pd.DataFrame) -> list[dict]:
    """One row per weighting's blend of the teachers: its nested estimate from the blend's record."""
    rows = []
    for csv in sorted(p for p in blends.glob("teachers_*.csv") if p.suffixes == [".csv"]):
        probs = blend_file.load(csv, "blend")
        order = pd.Index(probs.test_ids).get_indexer(truth["image_id"])
        targets = np.array([probs.vocab.index(v) for v in truth["label"]])
        test_acc, test_loss = scores(targets, probs.test_probs.numpy()[order])
        record = json.loads(csv.with_suffix(".csv.json").read_text())
        (chosen,) = [r for r in record["weightings"] if r["weighting"].endswith(" *")]
        rows.append(
            {
                "row": f"blend: {record['weighting']}",
                "test acc": test_acc,
                "test log loss": test_loss,
                "honest acc": chosen["nested acc"],
                "honest log loss": chosen["nested log loss"],
                "img/s": None,
            }
        )
    return rows


def main(out: Path) -> None:
    truth = pd.read_csv(out / "data" / "demo" / "test_labels.csv")
    rows = member_rows(out / "teachers", truth, "teacher")
    rows += blend_rows(out / "blends", truth)
    rows += member_rows(out / "pseudo", truth, "pseudo-labelled")
    rows += member_rows(out / "students", truth, "student")
    print(format_table(rows))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
