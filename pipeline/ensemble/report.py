"""A blend result rendered: the terminal table, the static HTML report and the confusion-matrix PNG.

Rendering only: the figures come computed in the BlendResult (pipeline.ensemble.compute), and
pipeline.ensemble.writing writes what is rendered here. The report is self-contained: it renders in
a browser and in a notebook via IPython.display.HTML, its images embedded as data URIs. It fits a
1280-pixel-wide window without scrolling sideways (tests/test_report_browser.py checks it in Chromium):
tables in a small font, headers wrapping at spaces, run names anywhere, numbers never, figures scaled to
the page; each table sits in a box of its own, so that a table still too wide (dozens of weightings) would
scroll there, not the page.

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
    # run names are long and unbroken: they wrap anywhere, the other text at spaces, numbers never
    " .table td:first-child{overflow-wrap:anywhere;min-width:10em}"
    " img{max-width:100%;height:auto} figure{margin:0 0 1em 0}"
    " .curves{display:grid;grid-template-columns:repeat(auto-fill,minmax(min(100%,560px),1fr));gap:.5em}"
)


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
        f"report: {result.report_path}",
    ]
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


def report_html(result: BlendResult) -> tuple[str, bytes | None]:
    """The HTML report, and with shared validation images the confusion-matrix PNG it embeds."""
    valid, png = result.valid, None
    intro = (
        f"<h1>Blend: {html.escape(result.output.name)}</h1>"
        f"<p>{len(result.members)} runs; written with <b>{result.weighting}</b> weights (marked *), "
        f"{result.mean} mean of probabilities.</p>"
    )
    sections = [
        _section(
            "weightings",
            "Weightings",
            "table",
            _html_table(result.weighting_rows),
            "<p>valid: the blend on the shared validation images (out-of-fold for kfold variants), with weights "
            "fitted on those same images, which flatters greedy and optimize. nested: every image scored with "
            "weights fitted on the other half of the images, an honest estimate. test: against the true test "
            "labels, where known.</p>",
        ),
        _section(
            "runs",
            "Runs",
            "table",
            _html_table(result.run_rows),
            "<p>optimizer, schedule, loss, extras: the run's training recipe (hyper-parameters shown where they "
            "differ from the option's defaults; extras: MixUp/CutMix, weight averaging, lr find, seed, extra "
            "targets). w: weight under each weighting (summing to 1). acc / log loss: on the run's own validation "
            "images, with and without test-time augmentation. aux err: the extra targets' validation error. blend "
            "acc without it: the written blend's validation accuracy with the run left out (the others keep their "
            "weights); it adds: the blend's accuracy minus that.</p>",
        ),
    ]
    if valid is None:
        intro += "<p>The runs were validated on different images: no blend figures on validation images.</p>"
    else:
        png = confusion_png(valid.targets, result.chosen.nested_probs.argmax(1), result.vocab)
        sections += validation_sections(result, png)
    if curves := curves_section(result):
        sections.append(curves)
    contents = "".join(f'<a href="#{key}">{html.escape(title.split(":")[0])}</a>' for key, title, _ in sections)
    body = f"{intro}<nav>{contents}</nav>{''.join(part for _, _, part in sections)}"
    document = f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Blend report: {html.escape(result.output.name)}</title>
<style>{STYLE}</style></head>
<body>{body}</body></html>
"""
    return document, png
