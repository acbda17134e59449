"""pipeline.download and pipeline.submit with the real kaggle client, against the loopback stand-in.

In-process tests compose the CLIs' configs with Hydra's compose API and call the functions the CLIs
call; a few run the real CLIs in subprocesses (through tests/routed_cli.py, which routes the client).
HOME and KAGGLE_CONFIG_DIR point into tmp dirs: no real credentials are ever read.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pandas as pd
import pytest

from pipeline.data.demo import build_demo
from pipeline.errors import PipelineError
from pipeline.kaggle import ledger
from pipeline.kaggle.competition_files import MARKER, download
from pipeline.kaggle.uploads import log_table, submit
from tests import warm_python
from tests.conftest import compose
from tests.kaggle_stand_in import KEY, USERNAME, KaggleStandIn, route_kaggle_api

REPO = Path(__file__).resolve().parents[1]
COMPETITION = "paddy-disease-classification"
FMNIST = Path("/usr/share/datasets/fashion-mnist")
COMPETITION_FILES = ("train_images", "test_images", "train.csv", "sample_submission.csv")
MESSAGE = "blend of vit_a x2, convnext x1"

pytestmark = pytest.mark.skipif(not FMNIST.is_dir(), reason="needs Debian's dataset-fashion-mnist")


# -- fixtures --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    """A tiny competition folder (10 labels x 3 training images, 20 test images), built once."""
    return build_demo(FMNIST, tmp_path_factory.mktemp("demo") / "demo", train_per_class=3, test_per_class=2, seed=0)


@pytest.fixture(scope="module")
def competition_zip(demo) -> bytes:
    """The demo's competition files zipped as Kaggle ships them (top-level folders and CSVs)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name in COMPETITION_FILES:
            for path in sorted([demo / name, *(demo / name).rglob("*")]):
                if path.is_file():
                    zf.write(path, path.relative_to(demo).as_posix())
    return buf.getvalue()


@pytest.fixture
def stand_in(kaggle_env, competition_zip):
    with KaggleStandIn(COMPETITION, competition_zip, USERNAME, KEY) as server, route_kaggle_api(server.base_url):
        yield server


@pytest.fixture
def outputs(tmp_path) -> Path:
    return tmp_path / "outputs"


def download_cfg(tmp_path, *extra: str):
    return compose(
        "download",
        [
            f"paths.outputs={tmp_path / 'outputs'}",
            f"data.root={tmp_path / 'data' / COMPETITION}",
            "kaggle.backoff_s=0",
            *extra,
        ],
    )


@pytest.fixture
def submission(demo, outputs) -> Path:
    """A valid blend output at blend.output's default place: rows reversed (order is not required),
    true labels, and the record pipeline.blend writes beside it."""
    truth = pd.read_csv(demo / "test_labels.csv", dtype=str)
    csv = outputs / "submissions" / "submission.csv"
    csv.parent.mkdir(parents=True)
    truth.iloc[::-1].to_csv(csv, index=False)
    runs = [{"run": "vit_a", "weight": 2.0}, {"run": "convnext", "weight": 1.0}]
    csv.with_suffix(".csv.json").write_text(json.dumps({"submission": str(csv), "runs": runs}))
    return csv


def submit_cfg(demo, outputs, *extra: str):
    return compose(
        "submit",
        [
            f"paths.outputs={outputs}",
            f"data.root={demo}",
            "kaggle.backoff_s=0",
            "submit.poll_s=0.01",
            "submit.timeout_s=5",
            *extra,
        ],
    )


def log_rows(outputs: Path) -> list[dict]:
    return ledger.read(outputs / "kaggle_submissions.csv").to_dict("records")


# -- download --------------------------------------------------------------------------------------


def test_download_unpacks_checks_layout_and_second_run_fetches_nothing(stand_in, tmp_path):
    cfg = download_cfg(tmp_path)
    root = tmp_path / "data" / COMPETITION
    zip_path = tmp_path / "data" / f"{COMPETITION}.zip"

    first = download(cfg)

    assert (first.fetched, first.unpacked) == (True, True)
    assert zip_path.read_bytes() == stand_in.data_zip
    assert sorted(p.name for p in root.iterdir()) == sorted([*COMPETITION_FILES, MARKER])
    assert len(first.layout.label_counts) == 10 and set(first.layout.label_counts.values()) == {3}
    assert first.layout.test_images == 20
    assert sorted(p.name for p in root.parent.iterdir()) == [COMPETITION, zip_path.name]  # no leftovers

    # Same size and mtime, other bytes: a second fetch would restore the zip, a second unpack would fail.
    st = zip_path.stat()
    zip_path.write_bytes(b"\0" * st.st_size)
    os.utime(zip_path, ns=(st.st_atime_ns, st.st_mtime_ns))
    train_file = next((root / "train_images").rglob("*.jpg"))
    inode = train_file.stat().st_ino

    second = download(cfg)

    assert (second.fetched, second.unpacked) == (False, False)
    assert zip_path.read_bytes() == b"\0" * st.st_size
    assert train_file.stat().st_ino == inode
    assert second.layout == first.layout
    assert stand_in.count("DownloadDataFiles") == 2  # the client asks, then skips the body

    zip_path.unlink()  # unpacked and zip deleted to save space: no request at all
    third = download(cfg)
    assert (third.fetched, third.unpacked) == (False, False)
    assert stand_in.count("DownloadDataFiles") == 2


def test_download_clears_an_interrupted_unpack_and_refuses_foreign_files(stand_in, tmp_path):
    data = tmp_path / "data"
    stale = data / f".{COMPETITION}.unpacking-abc123"
    (stale / "train_images" / "blast").mkdir(parents=True)  # what a killed unpack leaves behind

    result = download(download_cfg(tmp_path))

    assert result.unpacked and not stale.exists()
    assert (data / COMPETITION / MARKER).is_file()

    foreign = tmp_path / "mine"
    (foreign / "notes.txt").parent.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(PipelineError, match="did not unpack: move them away"):
        download(download_cfg(tmp_path, f"data.root={foreign}"))
    assert (foreign / "notes.txt").read_text() == "keep me"
    with pytest.raises(PipelineError, match=r"is inside data\.root"):
        download(download_cfg(tmp_path, f"download.zip_dir={data / COMPETITION / 'zips'}"))


def test_download_retries_server_errors_then_succeeds(stand_in, tmp_path):
    stand_in.fail_next(503, times=2, endpoint="DownloadDataFiles")

    result = download(download_cfg(tmp_path))

    assert result.fetched and stand_in.count("DownloadDataFiles") == 3


@pytest.mark.parametrize(
    ("setup", "extra", "expected"),
    [
        ("wrong_key", [], "download of paddy-disease-classification failed: Kaggle rejected the credentials (401"),
        ("rules", [], "(403: You must accept this competition's rules"),
        ("none", ["data.competition=no-such-competition"], "Kaggle has no competition 'no-such-competition' (404)"),
        ("5xx_forever", [], "failed after 4 attempts: Kaggle server error (500"),
        ("down", [], "failed after 4 attempts: cannot reach Kaggle ([Errno 111] Connection refused)"),
    ],
)
def test_download_errors_are_one_line_and_leave_nothing(stand_in, tmp_path, setup, extra, expected):
    if setup == "wrong_key":
        stand_in.key = "another-key"
    elif setup == "rules":
        stand_in.rules_accepted = False
    elif setup == "5xx_forever":
        stand_in.fail_next(500, times=99, endpoint="DownloadDataFiles")
    elif setup == "down":
        stand_in.stop()

    with pytest.raises(PipelineError) as exc:
        download(download_cfg(tmp_path, *extra))

    message = str(exc.value)
    assert expected in message and "\n" not in message and KEY not in message
    if setup == "rules":
        assert "accept the competition's rules at https://www.kaggle.com/competitions/" in message
    assert not (tmp_path / "data").exists() or not any((tmp_path / "data").iterdir())


# -- submit ----------------------------------------------------------------------------------------


def test_submit_uploads_waits_for_the_score_and_records_it(stand_in, demo, outputs, submission):
    stand_in.pending_polls = 2
    stand_in.public_score = "0.91234"

    result = submit(submit_cfg(demo, outputs))

    (sent,) = stand_in.submissions
    assert sent.content == submission.read_bytes()
    assert sent.description == MESSAGE  # from the blend record
    assert (result.ref, result.status, result.public_score) == (str(sent.ref), "complete", "0.91234")
    assert stand_in.count("ListSubmissions") == 1 + 3  # one before the upload, three polls
    (row,) = log_rows(outputs)
    assert row["file"] == str(submission) and row["competition"] == COMPETITION
    assert row["sha256"] == result.sha256 and len(row["sha256"]) == 64
    assert (row["message"], row["runs"]) == (MESSAGE, "vit_a x2, convnext x1")
    assert (row["ref"], row["status"], row["public_score"]) == (str(sent.ref), "complete", "0.91234")
    assert "0.91234" in log_table(outputs / "kaggle_submissions.csv")


def test_same_file_is_refused_the_second_time_unless_forced(stand_in, demo, outputs, submission):
    submit(submit_cfg(demo, outputs, "submit.message=first"))
    requests_before = len(stand_in.requests)

    with pytest.raises(PipelineError, match=r"already submitted .* submit.force=true submits it again"):
        submit(submit_cfg(demo, outputs))
    assert len(stand_in.requests) == requests_before

    submit(submit_cfg(demo, outputs, "submit.force=true", "submit.message=again"))
    assert [s.description for s in stand_in.submissions] == ["first", "again"]
    assert [r["message"] for r in log_rows(outputs)] == ["first", "again"]


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda df: df.iloc[1:], "has 19 rows, the sample 20"),
        (lambda df: df.assign(label="not_a_label"), "label(s) outside the vocab"),
        (lambda df: df.rename(columns={"label": "class"}), "has columns"),
    ],
)
def test_invalid_csv_is_refused_before_any_request(stand_in, demo, outputs, submission, edit, expected):
    edit(pd.read_csv(submission, dtype=str)).to_csv(submission, index=False)

    with pytest.raises(PipelineError, match=re.escape(expected)):
        submit(submit_cfg(demo, outputs))

    assert stand_in.requests == []
    assert not (outputs / "kaggle_submissions.csv").exists()


@pytest.mark.parametrize(
    ("setup", "extra", "expected"),
    [
        ("wrong_key", [], "Kaggle rejected the credentials (401 Unauthorized)"),
        ("none", ["data.competition=no-such-competition"], "Kaggle has no competition 'no-such-competition' (404)"),
        ("rules", [], "accept the competition's rules at"),
        ("429_forever", [], "failed after 4 attempts: Kaggle's rate limit (429"),
        ("upload_fails", [], "failed after 4 attempts: the file upload was refused (Could not submit to competition)"),
        ("down", [], "cannot reach Kaggle ([Errno 111] Connection refused)"),
    ],
)
def test_submit_errors_are_one_line_and_record_nothing(
    stand_in, demo, outputs, submission, setup, extra, expected, capsys
):
    if setup == "wrong_key":
        stand_in.key = "another-key"
    elif setup == "rules":
        stand_in.rules_accepted = False  # listing works; the upload is refused
    elif setup == "429_forever":
        stand_in.fail_next(429, times=99, endpoint="StartSubmissionUpload", retry_after="0")
    elif setup == "upload_fails":
        stand_in.fail_next(500, times=99, endpoint="upload")  # the client returns a message, not an error
    elif setup == "down":
        stand_in.stop()

    with pytest.raises(PipelineError) as exc:
        submit(submit_cfg(demo, outputs, *extra))

    assert expected in str(exc.value) and "\n" not in str(exc.value)
    assert stand_in.submissions == []
    assert log_rows(outputs) == []
    assert KEY not in str(exc.value) + "".join(capsys.readouterr())


def test_transient_failures_are_retried_and_submit_once(stand_in, demo, outputs, submission):
    stand_in.fail_next(502, endpoint="ListSubmissions", json_body=False, message="<html>Bad Gateway</html>")
    stand_in.fail_next(429, endpoint="StartSubmissionUpload", retry_after="0")
    stand_in.fail_next(500, endpoint="upload")

    result = submit(submit_cfg(demo, outputs))

    assert result.status == "complete"
    assert len(stand_in.submissions) == 1
    assert stand_in.count("StartSubmissionUpload") == 3  # 429, failed PUT, success
    assert [r["status"] for r in log_rows(outputs)] == ["complete"]


class LosesCreateResponse(KaggleStandIn):
    """Creates the submission, then answers 502: the client sees an error for a submission that exists."""

    def _rpc(self, method, body):
        status, payload, headers = super()._rpc(method, body)
        if method == "CreateSubmission" and not getattr(self, "lost", False):
            self.lost = True
            return 502, {"code": 502, "message": "Bad Gateway"}, {}
        return status, payload, headers


def test_a_submission_created_by_a_failed_attempt_is_adopted_not_repeated(
    kaggle_env, competition_zip, demo, outputs, submission
):
    with (
        LosesCreateResponse(COMPETITION, competition_zip, USERNAME, KEY) as server,
        route_kaggle_api(server.base_url),
    ):
        result = submit(submit_cfg(demo, outputs))

    (sent,) = server.submissions
    assert server.count("CreateSubmission") == 1
    assert (result.ref, result.status) == (str(sent.ref), "complete")


def test_unscored_before_the_timeout_is_recorded_as_pending(stand_in, demo, outputs, submission):
    stand_in.pending_polls = 10_000

    result = submit(submit_cfg(demo, outputs, "submit.timeout_s=0.2", "submit.poll_s=0.05"))

    assert (result.status, result.public_score) == ("pending", "")
    assert [(r["status"], r["public_score"]) for r in log_rows(outputs)] == [("pending", "")]


def test_dry_run_checks_everything_but_uploads_and_records_nothing(stand_in, demo, outputs, submission):
    result = submit(submit_cfg(demo, outputs, "submit.dry_run=true"))

    assert (result.status, result.ref, result.message) == ("dry run", None, MESSAGE)
    assert [r.endpoint for r in stand_in.requests] == ["ListSubmissions"]  # credentials and slug checked
    assert stand_in.submissions == []
    assert not (outputs / "kaggle_submissions.csv").exists()


def test_missing_credentials_is_one_line_before_any_request(stand_in, demo, outputs, submission, monkeypatch, capsys):
    monkeypatch.delenv("KAGGLE_USERNAME")
    monkeypatch.delenv("KAGGLE_KEY")

    with pytest.raises(
        PipelineError, match=r"no Kaggle credentials: save kaggle.json .* KAGGLE_USERNAME and KAGGLE_KEY"
    ):
        submit(submit_cfg(demo, outputs))

    assert stand_in.requests == []
    assert capsys.readouterr().out == ""  # the client's help text was never printed


def test_rejected_access_token_is_one_line(stand_in, demo, outputs, submission, monkeypatch, capsys):
    monkeypatch.delenv("KAGGLE_USERNAME")
    monkeypatch.delenv("KAGGLE_KEY")
    monkeypatch.setenv("KAGGLE_API_TOKEN", "KGAT_expired")  # the stand-in knows no token: introspection says inactive

    with pytest.raises(PipelineError, match=r"Kaggle did not accept the access token in KAGGLE_API_TOKEN"):
        submit(submit_cfg(demo, outputs))

    assert [r.endpoint for r in stand_in.requests] == ["IntrospectToken"]
    assert capsys.readouterr().out == ""  # the client's help text was captured


def test_kaggle_json_readable_by_others_is_warned_about(
    stand_in, kaggle_env, demo, outputs, submission, monkeypatch, caplog
):
    monkeypatch.delenv("KAGGLE_USERNAME")
    monkeypatch.delenv("KAGGLE_KEY")
    config = kaggle_env / "kaggle.json"
    config.write_text(json.dumps({"username": USERNAME, "key": KEY}))
    config.chmod(0o644)

    result = submit(submit_cfg(demo, outputs, "submit.dry_run=true"))

    assert result.status == "dry run"  # the file's credentials were used
    assert f"{config} is readable by other users: chmod 600" in caplog.text
    assert KEY not in caplog.text


def test_submission_without_message_or_blend_record_is_refused(stand_in, demo, outputs, submission):
    submission.with_suffix(".csv.json").unlink()

    with pytest.raises(PipelineError, match=r"set submit\.message"):
        submit(submit_cfg(demo, outputs))
    assert stand_in.requests == []


# -- the real CLIs, in subprocesses ---------------------------------------------------------------


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return warm_python.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=120)


def test_cli_download_then_submit_then_list(stand_in, tmp_path):
    outputs, root = tmp_path / "outputs", tmp_path / "data" / COMPETITION
    common = [f"paths.outputs={outputs}", f"data.root={root}", "kaggle.backoff_s=0"]
    routed = ["tests/routed_cli.py", stand_in.base_url]

    done = run_cli(*routed, "pipeline.download", *common)
    assert done.returncode == 0, done.stderr
    assert "TOTAL" in done.stdout and "test images: 20" in done.stdout

    truth = pd.read_csv(root / "sample_submission.csv", dtype=str).assign(label="trouser")
    csv = tmp_path / "mine.csv"
    truth.to_csv(csv, index=False)
    done = run_cli(
        *routed, "pipeline.submit", *common, f"submit.file={csv}", "submit.message=cli test", "submit.poll_s=0.01"
    )
    assert done.returncode == 0, done.stderr
    assert f"public score {stand_in.public_score}" in done.stdout
    assert stand_in.submissions[0].description == "cli test"

    done = run_cli("-m", "pipeline.submit", *common, "submit.list=true")  # local only: no routing needed
    assert done.returncode == 0, done.stderr
    assert "cli test" in done.stdout and stand_in.public_score in done.stdout
    assert KEY not in done.stdout + done.stderr


def test_cli_without_credentials_prints_one_line_and_no_traceback(kaggle_env, tmp_path, monkeypatch):
    monkeypatch.delenv("KAGGLE_USERNAME")
    monkeypatch.delenv("KAGGLE_KEY")

    done = run_cli("-m", "pipeline.download", f"paths.outputs={tmp_path / 'outputs'}", f"data.root={tmp_path / 'd'}")

    assert done.returncode == 2
    assert done.stdout == ""
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("error: no Kaggle credentials: save kaggle.json") and str(kaggle_env) in line
