"""Learning curves from a prediction file's history (Predictions.history: one record per epoch, made by
pipeline.training.history): as a CSV, as a PNG (loss and error rate against epoch, the frozen epochs
shaded) and as the minutes the run took. Base layer: training's loggers and the blend report both draw
with it, from plain data, so that neither imports the other.
"""

from __future__ import annotations

import csv
import io
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from pipeline.predictions import Predictions

History = list[dict[str, Any]]


def columns(history: History) -> list[str]:
    """Every field of the records, in the order they first appear."""
    return list(dict.fromkeys(k for record in history for k in record))


def history_csv(history: History) -> str:
    """The history as CSV text, a row per epoch (empty cells where a record lacks a field)."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns(history), lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    return text.getvalue()


def run_minutes(preds: Predictions) -> float:
    """The run's training and TTA minutes: its epochs' seconds (a resumed run's earlier sessions included),
    else, for a file without a history, the fit this session timed."""
    fit_s = sum(r.get("seconds") or 0.0 for r in preds.history) if preds.history else preds.timings.get("fit_s", 0.0)
    return (fit_s + preds.timings.get("tta_s", 0.0)) / 60


def _frozen_span(ax: Axes, histories: dict[str, History]) -> None:
    """Shade the epochs trained with the body frozen (fine_tune's first stage)."""
    frozen = sorted({r["step"] + 1 for h in histories.values() for r in h if r.get("frozen")})
    if frozen:
        ax.axvspan(frozen[0] - 0.5, frozen[-1] + 0.5, color="0.9", label="body frozen")


def _plot(ax: Axes, histories: dict[str, History], fields: dict[str, str], ylabel: str) -> None:
    """One line per run and field (field -> line style); a legend naming the run only when there are several."""
    _frozen_span(ax, histories)
    for i, (label, history) in enumerate(histories.items()):
        for field, style in fields.items():
            points = [(r["step"] + 1, r[field]) for r in history if r.get(field) is not None]
            if points:
                name = field.removeprefix("error_rate_")  # an extra target's error by the target's name
                x, y = zip(*points, strict=True)
                text = name if len(histories) == 1 else f"{label} {name}"
                ax.plot(x, y, style, color=f"C{i % 10}", marker="o", markersize=3, label=text)
    ax.set(xlabel="epoch", ylabel=ylabel)
    ax.xaxis.get_major_locator().set_params(integer=True)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)


def curves_png(histories: dict[str, History], title: str, dpi: int = 80) -> bytes | None:
    """Loss (train solid, valid dashed) and validation error (the label's solid, extra targets' dotted)
    against epoch, one colour per run (a kfold variant's folds side by side); None without any history."""
    from matplotlib.figure import Figure  # no pyplot: no global backend state, renders headless (Agg)

    histories = {label: h for label, h in histories.items() if h}
    if not histories:
        return None
    errors = [f for f in dict.fromkeys(k for h in histories.values() for k in columns(h)) if f.startswith("error_rate")]
    fig = Figure(figsize=(9, 3))
    loss_ax, error_ax = fig.subplots(1, 2)
    _plot(loss_ax, histories, {"train_loss": "-", "valid_loss": "--"}, "loss")
    _plot(error_ax, histories, {f: "-" if f == "error_rate" else ":" for f in errors}, "validation error rate")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=dpi)
    return png.getvalue()
