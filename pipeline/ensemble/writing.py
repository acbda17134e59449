"""Write a computed blend as one set: the submission CSV, the HTML report, the confusion-matrix PNG, the
JSON record that pipeline.submit reads, the blend's probabilities (<stem>.probs.pt, pipeline/blend_file.py:
what students and pseudo-labelled runs learn from) and, with out-of-fold members, the label review's
<stem>.suspects.csv. Nothing in place is replaced until all of them are
rendered and the CSV is checked against the sample submission; then all of them are, in one step
(fileio.write_set: each name is a symlink into the current set's folder, switched by one rename)."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline import blend_file
from pipeline.data.submission_csv import submission_text, validate_submission
from pipeline.ensemble.compute import BlendResult, compute_blend
from pipeline.ensemble.probabilities import blend_file_of
from pipeline.ensemble.report import report_html
from pipeline.fileio import write_set

if TYPE_CHECKING:
    from pipeline.config import BlendAppConfig


def blend(cfg: BlendAppConfig) -> BlendResult:
    """`python -m pipeline.blend`: compute the blend, then write its files."""
    result = compute_blend(cfg)
    write_blend(result)
    return result


def record(result: BlendResult) -> dict[str, Any]:
    """Which runs, with which weights (None for a learned combiner), made the submission, and how they scored."""
    weights = result.chosen.weights
    share = [None if weights is None else float(weights[i]) / len(m.runs) for i, m in enumerate(result.members)]
    return {
        "submission": str(result.output),
        "weighting": result.weighting,
        "mean": result.mean,
        "runs": [
            {"run": r.run, "member": m.name, "file": str(r.path), "weight": share[i]}
            for i, m in enumerate(result.members)
            for r in m.runs
        ],
        "vocab": result.vocab,  # lets pipeline.submit check labels without the training images
        "members": result.run_rows,
        "weightings": result.weighting_rows,
        "report": str(result.report_path),
        "probabilities": str(blend_file.probs_path(result.output)),
        "suspects": None if result.suspects is None else str(result.suspects_path),
        "notes": result.notes,
    }


def write_blend(result: BlendResult) -> list[Path]:
    """The CSV, report, record, probabilities (and PNG, suspects where there are some), replaced as one set;
    the paths written."""
    document, png = report_html(result)
    files: dict[Path, str | bytes] = {
        result.output: submission_text(result.test_ids, result.chosen.test_labels, result.layout),
        result.report_path: document,
        result.record_path: json.dumps(record(result), indent=2),
        blend_file.probs_path(result.output): blend_file.encode(blend_file_of(result)),
    }
    if png is not None:
        files[result.confusion_path] = png
    if result.suspects is not None:
        files[result.suspects_path] = result.suspects.to_csv(index=False)
    check = partial(validate_submission, sample_path=result.sample, vocab=result.vocab, layout=result.layout)
    write_set(files, check)  # the CSV is checked before anything is replaced
    return list(files)
