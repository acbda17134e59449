"""Every run in paths.preds as a table (`python -m pipeline.runs`), read from the prediction files alone:
no model, no training library (fastai stays unimported), so it answers in seconds.

A run's state compares what its file records with what is here now: `stale` when its data fingerprint
(the images and, with extra targets, train.csv, as training hashed them) differs from data.root's, the
way training decides to retrain it; `busy` when a job holds the run's lock (training/jobs.run_lock) — a
run training for the first time has no file yet and is a row of its own. The current fingerprint is
computed as training computes it, from the image hashes training keeps in perf.cache_dir (an image not
hashed there yet is read once).
"""

from __future__ import annotations

import csv
import fnmatch
import io
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.config import check_ranges
from pipeline.curves import run_minutes
from pipeline.data.competition import listed_competition
from pipeline.data.exclude import excluding
from pipeline.data.layout import Layout
from pipeline.errors import PipelineError
from pipeline.fileio import is_locked
from pipeline.predictions import Predictions, load
from pipeline.tables import format_table
from pipeline.training.specs import variant_name

# the CSV's columns, in order (each extra target adds valid_error_<target> after the TTA error)
CSV_COLUMNS = [
    "run",
    "model",
    "variant",
    "recipe",
    "split",
    "fold",
    "valid_error",
    "valid_error_tta",
    "epochs",
    "minutes",
    "images_per_s",
    "host",
    "device",
    "date",
    "state",
]
# the table's columns and headers: split shows its fold, aux err the extra targets', trained on host and device
HEADERS = {
    "run": "run",
    "model": "model",
    "variant": "variant",
    "recipe": "recipe",
    "split": "split",
    "valid_error": "valid err",
    "valid_error_tta": "TTA err",
    "aux_errors": "aux err",
    "epochs": "epochs",
    "minutes": "min",
    "images_per_s": "img/s",
    "trained_on": "trained on",
    "date": "date",
    "state": "state",
}


def variant_and_recipe(preds: Predictions, model: str) -> tuple[str, str]:
    """The run's variant (its name in the model file, else its size tag) and its recipe tags: the rest of
    its member name, <model>_<variant><recipe tag><tta tag> ('-' for the reference recipe)."""
    rest = preds.member.removeprefix(f"{model}_")
    spec = preds.run_spec
    names = [v.get("name") for v in (preds.config.get("model") or {}).get("variants") or []]
    if spec.get("resize"):
        names.append(variant_name(spec["resize"], tuple(spec["item_size"]), tuple(spec["size"])))
    for name in sorted({n for n in names if n}, key=len, reverse=True):
        if rest == name or rest.startswith(f"{name}_"):
            return name, rest[len(name) + 1 :] or "-"
    return rest, "?"


def run_row(preds: Predictions, state: str) -> dict[str, Any]:
    """One file's figures under the CSV's column names (None where the file has none)."""
    model = (preds.config.get("model") or {}).get("name") or preds.run_spec.get("model") or "?"
    variant, recipe = variant_and_recipe(preds, model)
    seconds = sum(r.get("seconds") or 0.0 for r in preds.history)
    env = preds.environment
    return {
        "run": preds.run,
        "model": model,
        "variant": variant,
        "recipe": recipe,
        "split": preds.split.get("strategy"),
        "fold": preds.split.get("fold"),
        "valid_error": preds.metrics.get("valid_error"),
        "valid_error_tta": preds.metrics.get("valid_error_tta"),
        **{f"valid_error_{name}": preds.metrics.get(f"valid_error_{name}") for name in preds.aux_targets},
        "epochs": len(preds.history) or preds.run_spec.get("epochs"),
        "minutes": run_minutes(preds),
        # every training image passes once per epoch, for training or validation
        "images_per_s": preds.split.get("n_images", 0) * len(preds.history) / seconds if seconds else None,
        "host": env.get("host"),
        "device": env.get("device_name") or preds.device,
        "date": preds.created[:16].replace("T", " "),
        "state": state,
    }


def data_check(cfg: Any) -> tuple[Callable[[Predictions], str], str]:
    """A function giving a file's data state (ok, stale or ?), and a note on what was checked."""
    if not cfg.runs.check_data:
        return lambda preds: "?", ""
    try:
        comp = listed_competition(cfg.data.root, Layout.from_config(cfg.data), cache_dir=cfg.perf.cache_dir)
    except (PipelineError, OSError) as e:
        return lambda preds: "?", f"data not checked: {e}"
    fingerprints: dict[tuple[tuple[str, ...], str | None], str | None] = {}

    def state(preds: Predictions) -> str:
        recorded = preds.environment.get("data_fingerprint")
        if not recorded:
            return "?"
        aux = tuple((preds.run_spec.get("recipe") or {}).get("aux_targets") or ())
        exclude = (preds.config.get("data") or {}).get("exclude")  # a cleaned run: its list as it is now
        if (aux, exclude) not in fingerprints:
            try:
                fingerprints[aux, exclude] = excluding(comp, exclude).fingerprint_for(aux)
            except PipelineError:  # the list moved or names images no longer there
                fingerprints[aux, exclude] = None
        found = fingerprints[aux, exclude]
        return "?" if found is None else "ok" if recorded == found else "stale"

    return state, f"state: each file's data fingerprint against the data at {comp.root} (data.root) now"


def list_runs(cfg: Any) -> tuple[list[dict[str, Any]], list[str]]:
    """The rows of the runs in cfg.paths.preds whose name matches runs.filter, sorted by runs.sort, and
    notes (files that could not be read, what the state was checked against)."""
    preds_dir = Path(cfg.paths.preds)
    files = sorted(preds_dir.glob("*.pt")) if preds_dir.is_dir() else []
    locks = sorted(preds_dir.glob(".*.lock")) if preds_dir.is_dir() else []
    busy = {p.name[1:].removesuffix(".lock") for p in locks if is_locked(p)}
    chosen = [f for f in files if fnmatch.fnmatchcase(f.stem, cfg.runs.filter)]
    state, note = data_check(cfg) if chosen else (None, "")
    rows, notes = [], [note] if note else []
    for f in chosen:
        try:
            preds = load(f)
        except PipelineError as e:
            notes.append(f"not listed: {e}")
            continue
        rows.append(run_row(preds, "busy" if f.stem in busy else state(preds)))
    known = {f.stem for f in files}
    for name in sorted(busy - known):
        if fnmatch.fnmatchcase(name, cfg.runs.filter):
            rows.append({"run": name, "state": "busy (first training, no file yet)"})
    return sort_rows(rows, str(cfg.runs.sort)), notes


def columns(rows: list[dict[str, Any]]) -> list[str]:
    """The CSV's columns for these rows: each extra target's error after the TTA error."""
    aux = sorted({k for r in rows for k in r if k.startswith("valid_error_") and k != "valid_error_tta"})
    at = CSV_COLUMNS.index("valid_error_tta") + 1
    return [*CSV_COLUMNS[:at], *aux, *CSV_COLUMNS[at:]]


def sort_rows(rows: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    """Rows by `key` (a leading - for descending), those without the figure last."""
    name, descending = key.removeprefix("-"), key.startswith("-")
    if name not in CSV_COLUMNS and not name.startswith("valid_error_"):
        raise PipelineError(
            f"runs.sort={key}: no such column; sort by one of {', '.join(CSV_COLUMNS)}, valid_error_<target> "
            "(a leading - for descending)"
        )
    present = [r for r in rows if r.get(name) is not None]
    present.sort(key=lambda r: r[name], reverse=descending)
    return present + [r for r in rows if r.get(name) is None]


def _cell(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def as_table(rows: list[dict[str, Any]]) -> str:
    """Aligned columns for reading: extra targets' errors in one column, split with its fold."""
    shown = []
    for r in rows:
        aux = {k.removeprefix("valid_error_"): v for k, v in r.items() if k.startswith("valid_error_")}
        aux.pop("tta", None)
        fold = r.get("fold")
        row = {
            **{c: _cell(r.get(c)) for c in HEADERS},
            "split": _cell(r.get("split")) + ("" if fold is None else f" {fold}"),
            "aux_errors": ", ".join(f"{k} {_cell(v)}" for k, v in aux.items()) or "-",
            "minutes": _cell(r.get("minutes"), 1),
            "images_per_s": _cell(r.get("images_per_s"), 0),
            "trained_on": " ".join(_cell(r.get(k)) for k in ("host", "device")) if r.get("host") else "-",
        }
        shown.append({HEADERS[c]: row[c] for c in HEADERS})
    return format_table(shown)


def as_csv(rows: list[dict[str, Any]]) -> str:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns(rows), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return text.getvalue()


def show_runs(cfg: Any) -> list[dict[str, Any]]:
    """`python -m pipeline.runs`: the table (or CSV) on stdout, then the notes (on stderr beside a CSV);
    with no run, a note alone. Returns the rows."""
    check_ranges(cfg)
    rows, notes = list_runs(cfg)
    as_data = cfg.runs.format == "csv"
    if rows:
        sys.stdout.write(as_csv(rows) if as_data else as_table(rows) + "\n")
    else:
        notes.insert(0, f"no runs in {cfg.paths.preds} (paths.preds) match runs.filter={cfg.runs.filter!r}")
    for note in notes:
        print(note, file=sys.stderr if as_data else sys.stdout)
    return rows
