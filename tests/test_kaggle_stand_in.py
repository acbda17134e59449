"""Drive the real kaggle client against the loopback stand-in (see tests/kaggle_stand_in.py).

``kaggle`` is imported inside fixtures only: importing it authenticates and may print.
Each test gets its own stand-in on a free port; the routing is process-wide, so parallel runs need
separate processes (e.g. pytest-xdist), not threads.
"""

from __future__ import annotations

import io
import json
import os
import time
import zipfile
from pathlib import Path

import pytest
import requests

from tests.kaggle_stand_in import (
    KEY,
    RULES_NOT_ACCEPTED,
    UPLOAD_FAILED_MESSAGE,
    USERNAME,
    KaggleStandIn,
    route_kaggle_api,
)

COMPETITION = "paddy-disease-classification"
RPC = "/api/v1/competitions.CompetitionApiService/"


def _competition_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("train.csv", "image_id,label,variety,age\n100330.jpg,bacterial_leaf_blight,ADT45,45\n")
        zf.writestr("sample_submission.csv", "image_id,label\n200001.jpg,normal\n")
        zf.writestr("train_images/normal/100001.jpg", os.urandom(2048))
    return buf.getvalue()


@pytest.fixture
def stand_in(kaggle_env):
    with (
        KaggleStandIn(COMPETITION, _competition_zip(), USERNAME, KEY) as server,
        route_kaggle_api(server.base_url),
    ):
        yield server


@pytest.fixture
def api(stand_in, kaggle_env):
    from kaggle.api.kaggle_api_extended import KaggleApi

    client = KaggleApi()
    # config_dir/config are class attributes fixed at first import; pin this test's own.
    client.config_dir = str(kaggle_env)
    client.config = str(kaggle_env / "kaggle.json")
    client.authenticate()
    return client


def _submission_csv(tmp_path):
    path = tmp_path / "submission.csv"
    path.write_bytes(b"image_id,label\n200001.jpg,blast\n200002.jpg,normal\n")
    return path


def test_authenticate_with_key_sends_nothing_and_later_calls_use_basic_auth(api, stand_in):
    assert api.config_values["username"] == USERNAME
    assert stand_in.requests == []  # legacy key auth is purely local

    api.competition_submissions(COMPETITION)

    (request,) = stand_in.requests
    assert request.headers["Authorization"].startswith("Basic ")
    assert request.json == {"competitionName": COMPETITION, "page": 1, "pageToken": "", "pageSize": 20}


def test_authenticate_with_access_token_introspects_then_uses_bearer(stand_in, kaggle_env, monkeypatch):
    stand_in.token = "KGAT_stand_in_token"
    monkeypatch.delenv("KAGGLE_USERNAME")
    monkeypatch.delenv("KAGGLE_KEY")
    monkeypatch.setenv("KAGGLE_API_TOKEN", stand_in.token)
    from kaggle.api.kaggle_api_extended import KaggleApi

    api = KaggleApi()
    api.config = str(kaggle_env / "kaggle.json")
    api.authenticate()
    api.competition_submissions(COMPETITION)

    assert stand_in.calls() == [
        ("POST", "/api/v1/security.OAuthService/IntrospectToken"),
        ("POST", RPC + "ListSubmissions"),
    ]
    assert stand_in.requests[0].json == {"token": stand_in.token}
    assert stand_in.requests[1].headers["Authorization"] == f"Bearer {stand_in.token}"
    assert api.config_values["username"] == USERNAME


def test_no_credentials_at_all_exits(stand_in, kaggle_env, monkeypatch, capsys):
    monkeypatch.delenv("KAGGLE_USERNAME")
    monkeypatch.delenv("KAGGLE_KEY")
    from kaggle.api.kaggle_api_extended import KaggleApi

    api = KaggleApi()
    api.config = str(kaggle_env / "kaggle.json")
    with pytest.raises(SystemExit) as exc:
        api.authenticate()
    assert exc.value.code == 1
    assert "KAGGLE_API_TOKEN" in capsys.readouterr().out
    assert stand_in.requests == []


def test_download_writes_served_zip_and_skips_second_time(api, stand_in, tmp_path):
    out = tmp_path / "data"
    api.competition_download_files(COMPETITION, path=str(out), force=False, quiet=True)

    zip_path = out / f"{COMPETITION}.zip"
    assert zip_path.read_bytes() == stand_in.data_zip
    assert os.listdir(out) == [zip_path.name]  # no leftover .kaggle-partial marker
    assert stand_in.calls() == [("POST", RPC + "DownloadDataFiles"), ("GET", f"/blobs/{COMPETITION}.zip")]
    assert stand_in.requests[0].json == {"competitionName": COMPETITION}

    # Same size, same mtime, different bytes: a re-download would overwrite them.
    stat = zip_path.stat()
    sentinel = b"\0" * stat.st_size
    zip_path.write_bytes(sentinel)
    os.utime(zip_path, (stat.st_atime, stat.st_mtime))

    api.competition_download_files(COMPETITION, path=str(out), force=False, quiet=True)

    assert zip_path.read_bytes() == sentinel
    # The client still asks for the blob (it needs the headers to decide) but never reads the body.
    assert stand_in.count("DownloadDataFiles") == 2
    assert stand_in.count("blob") == 2

    api.competition_download_files(COMPETITION, path=str(out), force=True, quiet=True)
    assert zip_path.read_bytes() == stand_in.data_zip


def test_download_resumes_after_the_body_breaks_off(api, stand_in, tmp_path):
    # Costs the client's own 2-3 s back-off sleep.
    stand_in.truncate_next_blob_at = len(stand_in.data_zip) // 2
    api.competition_download_files(COMPETITION, path=str(tmp_path), quiet=True)

    assert (tmp_path / f"{COMPETITION}.zip").read_bytes() == stand_in.data_zip
    retry = stand_in.requests[-1]
    assert (retry.endpoint, retry.status) == ("blob", 206)
    assert retry.headers["Range"] == "bytes=0-"  # nothing reached the disk before the break
    assert retry.headers["If-Range"] == stand_in.etag


def test_submit_uploads_exact_bytes_and_message_then_lists_score(api, stand_in, tmp_path):
    csv = _submission_csv(tmp_path)
    stand_in.public_score = "0.98123"

    result = api.competition_submit(str(csv), "blend of 3 models", COMPETITION, quiet=True)

    assert result.message == f"Successfully submitted to {COMPETITION}"
    assert [r.endpoint for r in stand_in.requests] == ["StartSubmissionUpload", "upload", "CreateSubmission"]
    start, put, create = stand_in.requests
    assert start.json["fileName"] == "submission.csv"
    assert start.json["contentLength"] == csv.stat().st_size
    assert put.method == "PUT" and "Authorization" not in put.headers
    assert create.json["submissionDescription"] == "blend of 3 models"
    (submission,) = stand_in.submissions
    assert submission.content == csv.read_bytes()
    assert submission.description == "blend of 3 models"
    assert result.ref == submission.ref

    (listed,) = api.competition_submissions(COMPETITION)
    assert listed.ref == submission.ref
    assert listed.file_name == "submission.csv"
    assert listed.description == "blend of 3 models"
    assert listed.status.name == "COMPLETE"
    assert listed.public_score == "0.98123"


def test_submission_stays_pending_for_configured_polls(api, stand_in, tmp_path):
    stand_in.pending_polls = 2
    api.competition_submit(str(_submission_csv(tmp_path)), "m", COMPETITION, quiet=True)

    seen = [api.competition_submissions(COMPETITION)[0] for _ in range(3)]

    assert [s.status.name for s in seen] == ["PENDING", "PENDING", "COMPLETE"]
    assert [s.public_score for s in seen] == ["", "", stand_in.public_score]  # absent -> ""


def test_failed_upload_does_not_raise_and_creates_no_submission(api, stand_in, tmp_path, capsys):
    stand_in.fail_next(500, endpoint="upload")

    result = api.competition_submit(str(_submission_csv(tmp_path)), "m", COMPETITION, quiet=True)

    assert result.message == UPLOAD_FAILED_MESSAGE
    assert stand_in.count("CreateSubmission") == 0
    assert stand_in.submissions == []


def test_wrong_key_is_only_noticed_by_the_first_call(api, stand_in, tmp_path):
    stand_in.key = "a-different-key"  # the client still sends KEY

    with pytest.raises(requests.exceptions.HTTPError) as exc:
        api.competition_download_files(COMPETITION, path=str(tmp_path), quiet=True)

    assert str(exc.value) == "Unauthorized"
    assert exc.value.response.status_code == 401
    assert not (tmp_path / f"{COMPETITION}.zip").exists()


def test_unknown_competition_is_404(api, stand_in, tmp_path):
    with pytest.raises(requests.exceptions.HTTPError) as exc:
        api.competition_download_files("no-such-competition", path=str(tmp_path), quiet=True)

    assert exc.value.response.status_code == 404
    assert str(exc.value) == "Competition 'no-such-competition' not found"


def test_rules_not_accepted_is_403_with_kaggles_message(api, stand_in, tmp_path):
    stand_in.rules_accepted = False

    with pytest.raises(requests.exceptions.HTTPError) as exc:
        api.competition_download_files(COMPETITION, path=str(tmp_path), quiet=True)
    assert exc.value.response.status_code == 403
    assert str(exc.value) == RULES_NOT_ACCEPTED

    with pytest.raises(requests.exceptions.HTTPError) as exc:
        api.competition_submit(str(_submission_csv(tmp_path)), "m", COMPETITION, quiet=True)
    assert exc.value.response.status_code == 403


def test_server_error_is_not_retried_by_the_client(api, stand_in, tmp_path):
    stand_in.fail_next(500, endpoint="DownloadDataFiles")

    with pytest.raises(requests.exceptions.HTTPError) as exc:
        api.competition_download_files(COMPETITION, path=str(tmp_path), quiet=True)
    assert exc.value.response.status_code == 500
    assert stand_in.count("DownloadDataFiles") == 1  # no retry of its own

    api.competition_download_files(COMPETITION, path=str(tmp_path), quiet=True)  # the caller's retry works
    assert (tmp_path / f"{COMPETITION}.zip").read_bytes() == stand_in.data_zip


def test_non_json_error_body_gives_requests_own_message(api, stand_in):
    stand_in.fail_next(502, endpoint="ListSubmissions", message="<html>Bad Gateway</html>", json_body=False)

    with pytest.raises(requests.exceptions.HTTPError) as exc:
        api.competition_submissions(COMPETITION)

    assert str(exc.value).startswith("502 Server Error: Bad Gateway for url: http://127.0.0.1:")


def test_rate_limit_is_not_retried_either(api, stand_in):
    stand_in.fail_next(429, endpoint="ListSubmissions", retry_after="0", message="Too many requests")

    with pytest.raises(requests.exceptions.HTTPError) as exc:
        api.competition_submissions(COMPETITION)

    assert exc.value.response.status_code == 429
    assert str(exc.value) == "Too many requests"
    assert stand_in.count("ListSubmissions") == 1


def test_server_not_running_is_connection_error(api, stand_in, tmp_path):
    stand_in.stop()

    with pytest.raises(requests.exceptions.ConnectionError) as exc:
        api.competition_download_files(COMPETITION, path=str(tmp_path), quiet=True)

    assert "Connection refused" in str(exc.value)
    assert isinstance(exc.value, OSError)  # requests' RequestException derives from IOError


def test_a_pushed_notebook_runs_for_real_and_its_output_and_log_come_back(kaggle_env, tmp_path):
    competition = tmp_path / "competition"
    competition.mkdir()
    (competition / "sample_submission.csv").write_text("image_id,label\n")
    with (
        KaggleStandIn(COMPETITION, b"", USERNAME, KEY, competition_root=competition, kernels_dir=tmp_path / "k") as s,
        route_kaggle_api(s.base_url),
    ):
        from kaggle.api.kaggle_api_extended import KaggleApi

        api = KaggleApi()
        api.authenticate()
        data = tmp_path / "dataset"
        data.mkdir()
        (data / "hello.txt").write_text("from a dataset")
        ref = f"{USERNAME}/hello-data"
        (data / "dataset-metadata.json").write_text(
            json.dumps({"id": ref, "title": "hello-data", "licenses": [{"name": "other"}]})
        )
        assert not api.dataset_create_new(str(data), quiet=True).error
        assert [f.name for f in api.dataset_list_files(ref).dataset_files] == ["hello.txt"]
        assert [api.dataset_status(ref), api.dataset_status(ref)] == ["blobs_received", "ready"]

        notebook = tmp_path / "notebook"
        notebook.mkdir()
        (notebook / "run.py").write_text(
            "from pathlib import Path\n"
            'INPUT, WORKING = Path("/kaggle/input"), Path("/kaggle/working")\n'
            'text = (INPUT / "hello-data" / "hello.txt").read_text()\n'
            'rows = (INPUT / "paddy-disease-classification" / "sample_submission.csv").read_text()\n'
            '(WORKING / "out").mkdir()\n'
            '(WORKING / "out" / "a.txt").write_text(text + " " + rows)\n'
            '(WORKING / "b.txt").write_text("not fetched")\n'
            'print("done")\n'
        )
        metadata = {
            "id": f"{USERNAME}/hello-notebook",
            "title": "hello-notebook",
            "code_file": "run.py",
            "language": "python",
            "kernel_type": "script",
            "dataset_sources": [ref],
            "competition_sources": [COMPETITION],
        }
        (notebook / "kernel-metadata.json").write_text(json.dumps(metadata))
        pushed = api.kernels_push(str(notebook), acc="NvidiaTeslaT4")
        assert pushed.version_number == 1 and not pushed.error
        kernel = f"{USERNAME}/hello-notebook/1"
        deadline = time.monotonic() + 60
        while api.kernels_status(kernel).status.name not in ("COMPLETE", "ERROR"):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert api.kernels_status(kernel).status.name == "COMPLETE"

        files, _ = api.kernels_output(kernel, path=str(tmp_path / "got"), file_pattern=r"^out/", quiet=True)

    got = sorted(Path(f).relative_to(tmp_path / "got").as_posix() for f in files)
    assert got == ["hello-notebook.log", "out/a.txt"]
    assert (tmp_path / "got" / "out" / "a.txt").read_text() == "from a dataset image_id,label\n"
    log = json.loads((tmp_path / "got" / "hello-notebook.log").read_text())
    assert [(e["stream_name"], e["data"]) for e in log] == [("stdout", "done\n")]
    (save,) = [r.json for r in s.requests if r.endpoint == "SaveKernel"]
    assert save["machineShape"] == "NvidiaTeslaT4" and save["datasetDataSources"] == [ref]
