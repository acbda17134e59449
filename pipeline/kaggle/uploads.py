"""Submit a CSV to a Kaggle competition: check it, upload it once, wait for its score, record it.

Everything that can be checked locally (the CSV against the sample file, an earlier upload of the same
bytes, the credentials) is checked before the first request. The submission is recorded as pending as
soon as Kaggle has it, then updated with its score, so an interrupted wait never loses it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.config import check_ranges
from pipeline.data.layout import Layout
from pipeline.data.submission_csv import validate_submission
from pipeline.errors import PipelineError
from pipeline.kaggle import ledger
from pipeline.kaggle.client import UPLOAD_FAILED_MESSAGE, UploadFailed, call, client_output, connect
from pipeline.tables import format_table

if TYPE_CHECKING:
    from kaggle.api.kaggle_api_extended import KaggleApi

    from pipeline.config import SubmitAppConfig

log = logging.getLogger(__name__)


@dataclass
class SubmitResult:
    file: Path
    sha256: str
    message: str
    ref: str | None  # None: not uploaded (dry run)
    status: str  # "dry run", "pending", "complete" or "error"
    public_score: str


def blend_record(csv: Path) -> dict[str, Any] | None:
    """The `<csv>.json` pipeline.blend writes beside the CSV, if there is one."""
    path = csv.with_suffix(csv.suffix + ".json")
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise PipelineError(f"blend record {path} is not valid JSON ({e}): blend again or delete it") from None


def runs_text(record: dict[str, Any] | None) -> str:
    """'vit_a x2, convnext x1': the runs and weights that made a blend ('vit_a (stacked)' for a learned
    combiner, which has no weights)."""
    runs = (record or {}).get("runs", [])
    return ", ".join(f"{r['run']} " + ("(stacked)" if r["weight"] is None else f"x{r['weight']:g}") for r in runs)


def label_vocab(train: Path, record: dict[str, Any] | None, csv: Path) -> list[str]:
    """The competition's labels: the label folders in `train` (data.train_dir), else the vocab the blend recorded."""
    labels = sorted(p.name for p in train.iterdir() if p.is_dir()) if train.is_dir() else []
    if labels:
        return labels
    if record and record.get("vocab"):
        return list(record["vocab"])
    raise PipelineError(
        f"no labels to check {csv} against: {train} has no label folders and no blend record beside the CSV "
        "lists a vocab (run pipeline.download, or blend again)"
    )


def submit(cfg: SubmitAppConfig) -> SubmitResult:
    check_ranges(cfg)
    s, slug = cfg.submit, cfg.data.competition
    csv, root, layout = Path(s.file), Path(cfg.data.root), Layout.from_config(cfg.data)
    record = blend_record(csv)
    labels = label_vocab(root / layout.train_dir, record, csv)
    sub = validate_submission(csv, root / layout.sample_submission, labels, same_order=False, layout=layout)
    sha256 = hashlib.sha256(csv.read_bytes()).hexdigest()
    earlier = ledger.find(s.log, slug, sha256)
    if len(earlier) and not s.force:
        last = earlier.iloc[-1]
        raise PipelineError(
            f"{csv} was already submitted to {slug} at {last.time} (ref {last.ref}, {last.status}, "
            f"public score {last.public_score or 'n/a'}): submit.force=true submits it again"
        )
    runs = runs_text(record)
    message = s.message or (f"blend of {runs}" if runs else "")
    if not message:
        raise PipelineError(f"no submit.message, and no blend record beside {csv} to describe it: set submit.message")

    api = connect(cfg.kaggle, slug)
    # Read-only and before the upload: checks the credentials and the slug, and tells later which
    # submissions already existed.
    known = {x.ref for x in list_submissions(api, slug, cfg.kaggle)}
    if s.dry_run:
        log.info("dry run: would submit %s (%d rows, sha256 %s) to %s as %r", csv, len(sub), sha256[:12], slug, message)
        return SubmitResult(csv, sha256, message, None, "dry run", "")

    ref = str(upload(api, csv, message, slug, known, cfg.kaggle))
    now = datetime.now(UTC).isoformat(timespec="seconds")
    row = {"time": now, "competition": slug, "file": str(csv), "sha256": sha256, "message": message}
    ledger.append(s.log, {**row, "runs": runs, "ref": ref, "status": "pending", "public_score": ""})
    log.info("submitted %s to %s (ref %s); waiting for its score", csv, slug, ref)
    try:
        status, score, error = wait_for_score(api, slug, int(ref), s.timeout_s, s.poll_s, cfg.kaggle)
    except PipelineError as e:
        raise PipelineError(
            f"submitted as ref {ref} (recorded as pending), but its score could not be read: {e}"
        ) from None
    ledger.update(s.log, slug, ref, status=status, public_score=score)
    if status == "error":
        raise PipelineError(f"Kaggle could not score submission {ref} of {csv}: {error or 'no reason given'}")
    if status == "pending":
        log.warning(
            "no score after %g s: recorded as pending; see https://www.kaggle.com/competitions/%s/submissions",
            s.timeout_s,
            slug,
        )
    return SubmitResult(csv, sha256, message, ref, status, score)


def list_submissions(api: KaggleApi, slug: str, retry: Any) -> list[Any]:
    """The account's latest submissions to the competition (ApiSubmission objects), newest first."""
    return [x for x in call(lambda: api.competition_submissions(slug), "listing submissions", retry, slug) or [] if x]


def upload(api: KaggleApi, csv: Path, message: str, slug: str, known: set[int], retry: Any) -> int:
    """Submit once: before a retry, adopt the submission a failed attempt may have created anyway."""
    attempts = 0

    def attempt() -> int:
        nonlocal attempts
        attempts += 1
        if attempts > 1:
            for x in api.competition_submissions(slug) or []:
                if x and x.ref not in known and x.file_name == csv.name and x.description == message:
                    log.warning("the failed attempt did create submission %s: not submitting again", x.ref)
                    return x.ref
        with client_output():
            response = api.competition_submit(str(csv), message, slug, quiet=True)
        if response.message == UPLOAD_FAILED_MESSAGE:  # the client returns this instead of raising
            raise UploadFailed(response.message)
        return response.ref

    return call(attempt, f"submission of {csv}", retry, slug)


def wait_for_score(
    api: KaggleApi, slug: str, ref: int, timeout_s: float, poll_s: float, retry: Any
) -> tuple[str, str, str]:
    """(status, public score, error) of submission `ref` once Kaggle has scored it, or ("pending", "", "")."""
    deadline = time.monotonic() + timeout_s
    while True:
        mine = next((x for x in list_submissions(api, slug, retry) if x.ref == ref), None)
        if mine is not None and mine.status.name != "PENDING":
            return mine.status.name.lower(), mine.public_score or "", mine.error_description or ""
        if time.monotonic() + poll_s > deadline:
            return "pending", "", ""
        time.sleep(poll_s)


def log_table(path: str | Path) -> str:
    """The recorded submissions, oldest first, for `submit.list=true`."""
    df = ledger.read(path)
    if df.empty:
        return f"no submissions recorded in {path}"
    columns = ["time", "competition", "file", "message", "ref", "status", "public_score"]
    return format_table(df[columns].to_dict("records")) + f"\n({len(df)} submissions, log: {path})"
