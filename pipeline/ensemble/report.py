"""A blend result rendered: the terminal table, the static HTML report and the confusion-matrix PNG.

Rendering only: the figures come computed in the BlendResult (pipeline.ensemble.compute), and
pipeline.ensemble.writing writes what is rendered here. The report is self-contained: it renders in
a browser and in a notebook via IPython.display.HTML.
"""

from __future__ import annotations

import base64
import html
import io
import math
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from pipeline.ensemble.review import review_html
from pipeline.tables import format_table

if TYPE_CHECKING:
    from pipeline.ensemble.compute import BlendResult

TERMINAL_RUNS = 20  # the terminal lists this many runs, heaviest first; the report lists all
STYLE = (
    "body{font-family:sans-serif;margin:2em} .table{border-collapse:collapse} .table td,.table th{padding:2px 8px}"
    " .note{color:#a40} .thumb{image-rendering:pixelated}"
)

WEIGHTINGS_NOTE = (
    "<p>valid: the blend on the shared validation images (out-of-fold for kfold variants), fitted on those "
    "same images, which flatters greedy, optimize and stack. nested: every image scored by a blend fitted on "
    "the other half of the images, an honest estimate. test: against the true test labels, where known. "
    "fit: a weighted mean of the runs' probabilities, or stack's logistic regression over their "
    "log-probabilities (C chosen by inner cross-validation), which has no weights.</p>"
)
RUNS_NOTE = (
    "<p>optimizer, schedule, loss, extras: the run's training recipe (hyper-parameters shown where they "
    "differ from the option's defaults; extras: MixUp/CutMix, weight averaging, lr find, seed, extra targets). "
    "teacher: the blend it learned from (loss=distill, data.pseudo) and that blend's content hash. "
    "w: weight under each weighting (summing to 1; n/a for stack, which learns a model instead). acc / log "
    "loss: on the run's own validation images, with and without test-time augmentation. aux err: the extra "
    "targets' validation error. TTA n: its augmented views (plus one plain pass); img/s: images a second "
    "through its TTA, all its fold models in turn, on the device it ran on (its file's TTA time over the "
    "test and validation images it predicted). blend acc without it: the written blend's validation accuracy "
    "with the run left out (the others keep their weights; n/a for stack); it adds: the blend's accuracy "
    "minus that.</p>"
)


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _formatted(rows: list[dict[str, Any]]) -> list[dict[str, str]]:
    return [{k: _fmt(v) for k, v in row.items()} for row in rows]


def _how(result: BlendResult) -> str:
    """How the written blend combines its runs, in a few words."""
    if result.chosen.weights is None:
        return f"{result.weighting}: {result.chosen.combiner.describe()} over {len(result.members)} runs"
    return f"{result.weighting} weights, {result.mean} mean of {len(result.members)} runs"


def _speed(result: BlendResult) -> str:
    from pipeline.ensemble.compute import blend_images_per_second

    speed = blend_images_per_second(result.run_rows, result.chosen.weights)
    return "n/a (a run's file lacks its TTA time)" if speed is None else f"{speed:.1f} images/s"


def terminal_table(result: BlendResult) -> str:
    """The weightings compared, then the heaviest runs (by validation accuracy for a learned combiner)."""
    weight = f"w {result.weighting}"
    runs = sorted(result.run_rows, key=lambda r: -(r[weight] if r[weight] is not None else r["acc TTA"] or 0))
    columns = ("run", weight, "acc TTA", "acc no TTA", "log loss TTA", "img/s", "it adds")
    shown = [{k: r[k] for k in columns} for r in runs[:TERMINAL_RUNS]]
    lines = [format_table(_formatted(result.weighting_rows)), "", format_table(_formatted(shown))]
    if len(runs) > TERMINAL_RUNS:
        lines.append(f"... {len(runs) - TERMINAL_RUNS} more runs in the report")
    lines += [
        "",
        f"* written: {result.output} ({_how(result)}; {_speed(result)} through them all)",
        *(f"note: {note}" for note in result.notes),
    ]
    if result.suspects is not None:
        lines.append(f"label review: {len(result.suspects)} suspect training labels in {result.suspects_path}")
    lines.append(f"report: {result.report_path}")
    return "\n".join(lines)


def confusion_png(targets: np.ndarray, predicted: np.ndarray, vocab: list[str]) -> bytes:
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
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=100)
    return png.getvalue()


def _html_table(rows: list[dict[str, Any]]) -> str:
    return pd.DataFrame(_formatted(rows)).to_html(index=False, border=0, classes="table")


def report_html(result: BlendResult) -> tuple[str, bytes | None]:
    """The HTML report, and with shared validation images the confusion-matrix PNG it embeds."""
    from sklearn.metrics import classification_report

    valid, png = result.valid, None
    parts = [
        f"<h1>Blend: {html.escape(result.output.name)}</h1>",
        f"<p>{len(result.members)} runs; written: <b>{html.escape(_how(result))}</b> (marked *); "
        f"{_speed(result)} through every run it uses.</p>",
        *(f'<p class="note">Note: {html.escape(note)}</p>' for note in result.notes),
        "<h2>Weightings</h2>",
        _html_table(result.weighting_rows),
        WEIGHTINGS_NOTE,
        "<h2>Runs</h2>",
        _html_table(result.run_rows),
        RUNS_NOTE,
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
        png = confusion_png(valid.targets, predicted, result.vocab)
        parts += [
            f"<h2>Per class: the {result.weighting} blend on {len(valid.ids)} validation images (nested)</h2>",
            pd.DataFrame(table).T.round(4).to_html(border=0, classes="table"),
            "<h2>Confusion matrix</h2>",
            f'<img alt="confusion matrix" src="data:image/png;base64,{base64.b64encode(png).decode()}">',
        ]
    if result.suspects is not None:
        parts.append(review_html(result.suspects, result.train_root, result.suspects_path.name))
    document = f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Blend report: {html.escape(result.output.name)}</title>
<style>{STYLE}</style></head>
<body>{"".join(parts)}</body></html>
"""
    return document, png
