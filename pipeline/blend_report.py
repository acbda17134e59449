"""What a blend is made of and what each part adds: figures, a static HTML report, a terminal table.

The report (`<output stem>.report.html`, self-contained: it renders in a browser and in a notebook
via IPython.display.HTML) and `<output stem>.confusion.png` are written beside the submission CSV.
"""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from pipeline.fileio import atomic_path
from pipeline.report import format_table

if TYPE_CHECKING:
    from pipeline.blending import BlendResult

WEIGHTINGS = ("config", "equal", "greedy", "optimize")
TERMINAL_RUNS = 20  # the terminal lists this many runs, heaviest first; the report lists all
STYLE = "body{font-family:sans-serif;margin:2em} .table{border-collapse:collapse} .table td,.table th{padding:2px 8px}"


def _scores(targets: np.ndarray, probs: np.ndarray | None, n_classes: int) -> tuple[float | None, float | None]:
    """(accuracy, log loss), by scikit-learn."""
    from sklearn.metrics import accuracy_score, log_loss

    from pipeline.ensemble import as_probs

    if probs is None:
        return None, None
    return float(accuracy_score(targets, probs.argmax(1))), float(
        log_loss(targets, as_probs(probs), labels=range(n_classes))
    )


def run_rows(result: BlendResult) -> list[dict[str, Any]]:
    """Per member: its weight under each weighting, validation accuracy and log loss with and without
    TTA (on its own validation images; out-of-fold for a kfold variant), and what the chosen blend
    loses without it (where the members share validation images)."""
    from pipeline.ensemble import leave_one_out_accuracy

    n_classes = len(result.vocab)
    valid, chosen = result.valid, result.chosen
    without = (
        leave_one_out_accuracy(valid.stack, chosen.weights, valid.targets, result.mean)
        if valid is not None
        else [math.nan] * len(result.members)
    )
    blend_acc, _ = _scores(valid.targets, chosen.valid_probs, n_classes) if valid is not None else (None, None)
    rows = []
    for i, m in enumerate(result.members):
        acc, loss = _scores(m.valid_targets, m.valid_probs, n_classes)
        acc_plain, loss_plain = _scores(m.valid_targets, m.valid_probs_plain, n_classes)
        left_out = None if math.isnan(without[i]) else float(without[i])
        rows.append(
            {
                "run": m.name,
                "split": m.split + (f" x{len(m.runs)}" if len(m.runs) > 1 else ""),
                **{f"w {name}": float(w.weights[i]) for name, w in result.weighted.items()},
                "acc TTA": acc,
                "log loss TTA": loss,
                "acc no TTA": acc_plain,
                "log loss no TTA": loss_plain,
                "blend acc without it": left_out,
                "it adds": None if left_out is None else blend_acc - left_out,
            }
        )
    return rows


def weighting_rows(result: BlendResult) -> list[dict[str, Any]]:
    """Per weighting: validation figures (in-sample: flattering for a searched weighting), the nested
    estimate (weights fitted on one half, scored on the other, swapped) and the test accuracy."""
    n_classes = len(result.vocab)
    targets = None if result.valid is None else result.valid.targets
    rows = []
    for name in WEIGHTINGS:
        if name not in result.weighted:
            continue
        w = result.weighted[name]
        acc, loss = _scores(targets, w.valid_probs, n_classes)
        nested_acc, nested_loss = _scores(targets, w.nested_probs, n_classes)
        rows.append(
            {
                "weighting": name + (" *" if name == result.weighting else ""),
                "valid acc": acc,
                "valid log loss": loss,
                "nested acc": nested_acc,
                "nested log loss": nested_loss,
                "test acc": w.test_acc,
                "runs used": int((w.weights > 0).sum()),
            }
        )
    return rows


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _formatted(rows: list[dict[str, Any]]) -> list[dict[str, str]]:
    return [{k: _fmt(v) for k, v in row.items()} for row in rows]


def terminal_table(result: BlendResult) -> str:
    """The weightings compared, then the heaviest runs."""
    runs = sorted(result.run_rows, key=lambda r: -r[f"w {result.weighting}"])
    shown = [
        {k: r[k] for k in ("run", f"w {result.weighting}", "acc TTA", "acc no TTA", "log loss TTA", "it adds")}
        for r in runs[:TERMINAL_RUNS]
    ]
    lines = [format_table(_formatted(result.weighting_rows)), "", format_table(_formatted(shown))]
    if len(runs) > TERMINAL_RUNS:
        lines.append(f"... {len(runs) - TERMINAL_RUNS} more runs in the report")
    lines += [
        "",
        f"* written: {result.output} ({result.weighting} weights, {result.mean} mean of {len(runs)} runs)",
        f"report: {result.report}",
    ]
    return "\n".join(lines)


def confusion_png(path: Path, targets: np.ndarray, predicted: np.ndarray, vocab: list[str]) -> Path:
    """The blend's confusion matrix on the validation images (counts; rows: true class)."""
    from matplotlib.figure import Figure  # no pyplot: no global backend state, renders headless (Agg)
    from sklearn.metrics import confusion_matrix

    matrix = confusion_matrix(targets, predicted, labels=range(len(vocab)))
    side = 2 + 0.5 * len(vocab)
    fig = Figure(figsize=(side + 1, side))
    ax = fig.subplots()
    image = ax.imshow(matrix, cmap="Blues")
    fig.colorbar(image, ax=ax)
    ax.set(xticks=range(len(vocab)), yticks=range(len(vocab)), xlabel="predicted", ylabel="true")
    ax.set_xticklabels(vocab, rotation=90)
    ax.set_yticklabels(vocab)
    middle = matrix.max() / 2
    for (i, j), count in np.ndenumerate(matrix):  # one label per cell, classes x classes
        ax.text(j, i, count, ha="center", va="center", fontsize=8, color="white" if count > middle else "black")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    return path


def _html_table(rows: list[dict[str, Any]]) -> str:
    return pd.DataFrame(_formatted(rows)).to_html(index=False, border=0, classes="table")


def write_report(result: BlendResult) -> Path:
    """The HTML report (and, with shared validation images, the confusion-matrix PNG) beside the CSV."""
    from sklearn.metrics import classification_report

    path = result.output.with_suffix(".report.html")
    valid = result.valid
    parts = [
        f"<h1>Blend: {html.escape(result.output.name)}</h1>",
        f"<p>{len(result.members)} runs; written with <b>{result.weighting}</b> weights (marked *), "
        f"{result.mean} mean of probabilities.</p>",
        "<h2>Weightings</h2>",
        _html_table(result.weighting_rows),
        "<p>valid: the blend on the shared validation images (out-of-fold for kfold variants), with weights "
        "fitted on those same images, which flatters greedy and optimize. nested: every image scored with "
        "weights fitted on the other half of the images, an honest estimate. test: against the true test "
        "labels, where known.</p>",
        "<h2>Runs</h2>",
        _html_table(result.run_rows),
        "<p>w: weight under each weighting (summing to 1). acc / log loss: on the run's own validation images, "
        "with and without test-time augmentation. blend acc without it: the written blend's validation accuracy "
        "with the run left out (the others keep their weights); it adds: the blend's accuracy minus that.</p>",
    ]
    if valid is None:
        parts.append("<p>The runs were validated on different images: no blend figures on validation images.</p>")
    else:
        probs = result.chosen.nested_probs
        predicted = probs.argmax(1)
        table = classification_report(
            valid.targets,
            predicted,
            labels=range(len(result.vocab)),
            target_names=result.vocab,
            output_dict=True,
            zero_division=0,
        )
        png = confusion_png(
            path.with_name(result.output.stem + ".confusion.png"), valid.targets, predicted, result.vocab
        )
        parts += [
            f"<h2>Per class: the {result.weighting} blend on {len(valid.ids)} validation images (nested)</h2>",
            pd.DataFrame(table).T.round(4).to_html(border=0, classes="table"),
            "<h2>Confusion matrix</h2>",
            f'<img alt="confusion matrix" src="data:image/png;base64,{base64.b64encode(png.read_bytes()).decode()}">',
        ]
    document = f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Blend report: {html.escape(result.output.name)}</title>
<style>{STYLE}</style></head>
<body>{"".join(parts)}</body></html>
"""
    with atomic_path(path) as tmp:
        tmp.write_text(document)
    return path
