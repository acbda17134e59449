"""A blend result rendered: the terminal table, the static HTML report and the confusion-matrix PNG.

Rendering only: the figures come computed in the BlendResult (pipeline.ensemble.compute), and
pipeline.ensemble.writing writes what is rendered here. The report is self-contained: it renders in
a browser and in a notebook via IPython.display.HTML, its images embedded as data URIs. It fits a
1280-pixel-wide window without scrolling sideways (tests/test_report_browser.py checks it in Chromium):
tables in a small font, text wrapping at spaces (anywhere when a table would not fit otherwise), numbers
never, figures scaled to the page; each table sits in a box of its own, so that a table still too wide
(dozens of weightings) would scroll there, not the page.

Each part is a `section` listed in the contents at the top, saying what it holds (`data-holds`: a table
or figures): what the report promises, and what the browser test checks is there.
"""

from __future__ import annotations

import base64
import html
import io
import math
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from pipeline.curves import curves_png
from pipeline.ensemble.review import review_table
from pipeline.tables import format_table

if TYPE_CHECKING:
    from pipeline.ensemble.compute import BlendResult

TERMINAL_RUNS = 20  # the terminal lists this many runs, heaviest first; the report lists all
STYLE = (
    "body{font-family:sans-serif;margin:1em 1.5em;font-size:14px}"
    " nav a{margin-right:1em} .wide{overflow-x:auto}"
    " .table{border-collapse:collapse;font-size:12px}"
    " .table td,.table th{padding:2px 5px;border-bottom:1px solid #ddd}"
    " .table th{vertical-align:bottom} .table td.num{white-space:nowrap;text-align:right}"
    # text wraps at spaces, and anywhere when a table would not fit otherwise (run names and recipes are long
    # unbroken words: the widths of fonts and figures on another machine once pushed a table 2 px past its
    # box); run names keep 10em; numbers never wrap
    " .table td.text,.table th{overflow-wrap:anywhere} .table td:first-child{min-width:10em}"
    " img{max-width:100%;height:auto} figure{margin:0 0 1em 0}"
    " .curves{display:grid;grid-template-columns:repeat(auto-fill,minmax(min(100%,560px),1fr));gap:.5em}"
    " .note{color:#a40} .thumb{image-rendering:pixelated;width:96px}"
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


def _cell(value: Any) -> str:
    number = value is None or (isinstance(value, int | float) and not isinstance(value, bool))
    return f'<td class="{"num" if number else "text"}">{html.escape(_fmt(value))}</td>'


def _html_table(rows: list[dict[str, Any]]) -> str:
    """Rows as an HTML table, its number cells marked (class num) so that they never wrap."""
    if not rows:
        return ""
    head = "".join(f"<th>{html.escape(str(key))}</th>" for key in rows[0])
    body = "".join(f"<tr>{''.join(_cell(v) for v in row.values())}</tr>" for row in rows)
    return _wide(f'<table class="table"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>')


def _wide(table: str) -> str:
    """A table in a box of its own: should a table ever be wider than the page, it scrolls, not the page."""
    return f'<div class="wide">{table}</div>'


def _png(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _section(key: str, title: str, holds: str, *body: str) -> tuple[str, str, str]:
    """(key, title, html) of one part of the report; `holds`: table or figures, what it promises."""
    return (
        key,
        title,
        f'<section id="{key}" data-holds="{holds}"><h2>{html.escape(title)}</h2>{"".join(body)}</section>',
    )


def curves_section(result: BlendResult) -> tuple[str, str, str] | None:
    """Each member's learning curves, from its files' histories (a kfold variant's folds in one figure)."""
    figures, missing = [], []
    for m in result.members:
        labels = [f"fold{r.split['fold']}" if r.split.get("fold") is not None else r.run for r in m.runs]
        png = curves_png({label: r.history for label, r in zip(labels, m.runs, strict=True)}, m.name)
        if png is None:
            missing.append(m.name)
        else:
            figures.append(f"<figure>{_png(png, f'learning curves of {m.name}')}</figure>")
    if not figures:
        return None
    note = (
        f"<p>No per-epoch history in the files of {html.escape(', '.join(missing))} (trained before it was kept).</p>"
        if missing
        else ""
    )
    caption = (
        "<p>Per epoch of each run (over its fits): training and validation loss, and validation error rate "
        "(extra targets' dotted); shaded: epochs trained with the pretrained body frozen (fine_tune).</p>"
    )
    return _section(
        "curves", "Learning curves", "figures", caption, f'<div class="curves">{"".join(figures)}</div>', note
    )


def validation_sections(result: BlendResult, confusion: bytes) -> list[tuple[str, str, str]]:
    """The chosen blend on the shared validation images (nested): per class, and its confusion matrix."""
    from sklearn.metrics import classification_report

    valid = result.valid
    table = classification_report(
        valid.targets,
        result.chosen.nested_probs.argmax(1),
        labels=range(len(result.vocab)),
        target_names=result.vocab,
        output_dict=True,
        zero_division=0,
    )
    return [
        _section(
            "per-class",
            f"Per class: the {result.weighting} blend on {len(valid.ids)} validation images (nested)",
            "table",
            _wide(pd.DataFrame(table).T.round(4).to_html(border=0, classes="table")),
        ),
        _section("confusion", "Confusion matrix", "figures", f"<figure>{_png(confusion, 'confusion matrix')}</figure>"),
    ]


def review_section(result: BlendResult) -> tuple[str, str, str]:
    """The label review: the training images whose label the blend doubts, with thumbnails."""
    caption = (
        "<p>Out-of-fold probabilities of the written blend (each image judged by models that never trained on it, "
        "combined by a fit on the other half of the images), least likely label first; also in "
        f"{html.escape(result.suspects_path.name)}, which data.exclude=&lt;that file&gt; leaves out of training. "
        "A weak blend doubts many right labels too: look before excluding. blend.review.top sets how many.</p>"
    )
    title = f"Label review: {len(result.suspects)} training images whose label the blend doubts"
    return _section("review", title, "table", caption, _wide(review_table(result.suspects, result.train_root)))


def report_html(result: BlendResult) -> tuple[str, bytes | None]:
    """The HTML report, and with shared validation images the confusion-matrix PNG it embeds."""
    valid, png = result.valid, None
    intro = (
        f"<h1>Blend: {html.escape(result.output.name)}</h1>"
        f"<p>{len(result.members)} runs; written: <b>{html.escape(_how(result))}</b> (marked *); "
        f"{_speed(result)} through every run it uses.</p>"
        + "".join(f'<p class="note">Note: {html.escape(note)}</p>' for note in result.notes)
    )
    sections = [
        _section(
            "weightings",
            "Weightings",
            "table",
            _html_table(result.weighting_rows),
            WEIGHTINGS_NOTE,
        ),
        _section(
            "runs",
            "Runs",
            "table",
            _html_table(result.run_rows),
            RUNS_NOTE,
        ),
    ]
    if valid is None:
        intro += "<p>The runs were validated on different images: no blend figures on validation images.</p>"
    else:
        png = confusion_png(valid.targets, result.chosen.nested_probs.argmax(1), result.vocab)
        sections += validation_sections(result, png)
    if curves := curves_section(result):
        sections.append(curves)
    if result.suspects is not None:
        sections.append(review_section(result))
    contents = "".join(f'<a href="#{key}">{html.escape(title.split(":")[0])}</a>' for key, title, _ in sections)
    body = f"{intro}<nav>{contents}</nav>{''.join(part for _, _, part in sections)}"
    document = f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Blend report: {html.escape(result.output.name)}</title>
<style>{STYLE}</style></head>
<body>{body}</body></html>
"""
    return document, png
