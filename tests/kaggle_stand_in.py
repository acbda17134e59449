"""A loopback stand-in for the parts of the Kaggle API this project uses.

It lets tests drive the real ``kaggle`` client (checked against kaggle 2.2.4 + kagglesdk 0.1.37; the
datasets and notebooks part against kaggle 2.2.5 + kagglesdk 0.1.38) without internet. Standard library
only; it only ever binds 127.0.0.1. Notebooks pushed to it run for real (see "Notebooks" below).

How the client is pointed here
------------------------------
``kagglesdk.kaggle_env`` maps ``KAGGLE_API_ENVIRONMENT=TEST`` to ``http://localhost:7777``, but
``KaggleApi`` never uses it: ``KaggleApi.build_kaggle_client_with_params`` always passes an explicit
env (PROD, or STAGING/ADMIN/LOCAL from the ``--staging``/``--admin``/``--local`` entries of the class
attribute ``KaggleApi.args``), so ``get_env()`` is never consulted. ``KAGGLE_API_ENVIRONMENT=LOCALHOST``
does work, but only if set before ``kaggle`` is first imported (``args`` is filled at class creation)
and it means ``http://localhost`` on port 80. No environment variable changes the port (kagglesdk has
none). So :func:`route_kaggle_api` points every entry of ``kagglesdk.kaggle_env._env_to_endpoint`` at
this server and adds ``--local`` to ``KaggleApi.args``: a free port per test, and nothing else in the
client changes. ``port=7777`` is still available for code that builds ``KaggleClient(env=KaggleEnv.TEST)``
itself; tests on a fixed port must not run in parallel.

Credentials
-----------
``import kaggle`` runs ``KaggleApi().authenticate()`` and swallows every error (including the
``exit(1)`` after printing help when nothing is configured). ``authenticate()`` tries, in order:
an access token (``KAGGLE_API_TOKEN`` = token or file path, else ``~/.kaggle/access_token[.txt]``),
checked by ``POST .../security.OAuthService/IntrospectToken {"token": t}`` -> ``{"active": true,
"username": u}`` (400/403/404 there = "invalid token", moves on; any other error propagates);
then ``username`` + ``key`` from ``$KAGGLE_CONFIG_DIR/kaggle.json`` overlaid by every ``KAGGLE_*``
env var (``KAGGLE_USERNAME``/``KAGGLE_KEY``) - this sends no request at all, so a wrong key is only
noticed by the first real call; then OAuth creds in ``~/.kaggle/credentials.json``. The key goes out
as HTTP Basic auth, a token as ``Authorization: Bearer``. ``KaggleApi.config_dir`` is a class attribute
computed when ``kaggle`` is first imported, so tests also set ``api.config`` per instance.

Requests (base ``{endpoint}/api/v1`` for LOCAL/TEST, ``https://api.kaggle.com/v1`` for PROD)
------------------------------------------------------------------------------------------
Every RPC is ``POST /api/v1/<service>/<Method>`` with a JSON body of the request object's non-default
fields (camelCase), headers ``Content-Type: application/json``, ``Authorization`` and an empty
``User-Agent`` (``KaggleClient`` passes ``user_agent=""``).

* ``competition_download_files(c, path, force, quiet)``: ``POST competitions.CompetitionApiService/
  DownloadDataFiles {"competitionName": c}`` -> 302 to a blob URL; requests follows it with a GET
  (keeps ``Authorization`` because the host is the same; the real blob is a signed GCS URL). The output
  name is ``c + "." + <extension of the final URL>``, so the blob URL must end in ``.zip``. The GET is
  streamed and its headers decide: skip when the local file exists, is at least ``Content-Length`` bytes,
  and its mtime is not older than ``Last-Modified`` (naive local-time comparison). So a second call still
  sends the RPC and the blob GET, but never reads the body or rewrites the file. After writing, the file's
  mtime is set to ``Last-Modified``; a ``.kaggle-partial`` marker (``ETag`` or ``Last-Modified`` + size)
  allows a later call to resume a partial file with ``Range: bytes=N-`` + ``If-Range``
  (only if ``Accept-Ranges: bytes``). A body that breaks off mid-stream is retried in-process
  (up to 5 times, sleeping ``2**n + random()`` s, so >= 2 s) with ``Range: bytes=<bytes on disk>-``;
  206 appends, 200 restarts. Bytes reach the disk in 1 MiB chunks, so a small file cut short resumes
  from 0.
* ``competition_submit(f, msg, c)``: ``POST .../StartSubmissionUpload {"competitionName", "fileName",
  "contentLength", "lastModifiedEpochSeconds"}`` -> ``{"token", "createUrl"}``; then a plain
  ``PUT createUrl`` of the file bytes (new session, no auth, Content-Length set); 200/201 = done;
  then ``POST .../CreateSubmission {"competitionName", "blobFileTokens": token,
  "submissionDescription": msg}`` -> ``{"message", "ref"}``, returned as ``ApiCreateSubmissionResponse``.
  If the PUT fails (any other status, or an exception, which is printed) the client does NOT raise:
  it skips CreateSubmission and returns a response whose ``message`` is
  ``"Could not submit to competition"``.
* ``competition_submissions(c)``: ``POST .../ListSubmissions {"competitionName", "page": 1,
  "pageToken": "", "pageSize": 20}`` -> ``{"submissions": [{"ref", "fileName", "date", "description",
  "status": "PENDING"|"COMPLETE"|"ERROR", "publicScore": "0.97", "privateScore", "totalBytes", ...}],
  "nextPageToken"}``. Scores are strings (an absent score reads back as ``""``), ``date`` is ISO with
  ``Z``, and ``status`` comes back as ``kagglesdk...SubmissionStatus``.

Datasets (the code of hydra/launcher=kaggle)
-------------------------------------------
* ``dataset_list_files("owner/slug", page_size=N)``: ``POST datasets.DatasetApiService/ListDatasetFiles
  {"ownerSlug", "datasetSlug", "pageSize"[, "pageToken"]}`` -> ``{"datasetFiles": [{"name", "totalBytes"}],
  "nextPageToken"}`` (the latest version's files); 404 when there is no such dataset.
* ``dataset_create_new(folder, public=False)`` reads ``dataset-metadata.json`` (``id``, ``title``, one
  ``licenses`` entry; slug and title 6-50 characters), first asks ``GetDatasetStatus`` (any HTTP error = the
  slug is free), then uploads every file of the folder (not sub-folders unless ``dir_mode``) as a blob:
  ``POST blobs.BlobApiService/StartBlobUpload {"type": "DATASET", "name", "contentLength",
  "lastModifiedEpochSeconds"}`` -> ``{"token", "createUrl"}`` and a ``PUT createUrl`` (no auth; 200/201 =
  done; upload state is kept in ``$TMPDIR/.kaggle-uploads-<uid>/`` to resume), then ``POST
  .../CreateDataset {"ownerSlug", "slug", "title", "licenseName", "isPrivate", "files": [{"token"}]}``
  (wrapped in the client's own ``with_retry``) -> ``{"ref", "url", "status", "error"}``; an error comes
  back in ``error``, not as an HTTP status. ``dataset_create_version(folder, notes)`` does the same with
  ``CreateDatasetVersion {"ownerSlug", "datasetSlug", "body": {"versionNotes", "files"}}``.
* ``dataset_status("owner/slug")``: ``GetDatasetStatus {"ownerSlug", "datasetSlug"}`` -> ``{"status":
  "READY"}`` (a ``DatabundleVersionStatus`` name; the client returns it lowercased); here the first
  ``dataset_ready_polls`` answers after an upload are ``BLOBS_RECEIVED``.

Notebooks (kernels)
-------------------
* ``kernels_push(folder, acc=...)`` reads ``kernel-metadata.json`` and ``code_file`` and sends ``POST
  kernels.KernelsApiService/SaveKernel {"slug": "owner/slug", "newTitle", "text", "language",
  "kernelType", "isPrivate", "enableGpu", "enableInternet", "datasetDataSources",
  "competitionDataSources", "kernelDataSources", "machineShape"}`` (empty lists are not sent) ->
  ``{"ref", "url", "versionNumber", "error", "invalidDatasetSources", ...}``. Not retried by the client.
* ``GetKernel {"userName", "kernelSlug"}`` (what ``kernels_pull`` sends; the project calls it through
  ``build_kaggle_client()``) -> ``{"metadata": {"ref", "slug", "title", "currentVersionNumber"}, "blob": {}}``:
  the latest version; 404 when the notebook was never pushed.
* ``kernels_status("owner/slug/N")``: ``GetKernelSessionStatus {"userName", "kernelSlug", "versionLabel":
  "vN"}`` -> ``{"status": "QUEUED"|"RUNNING"|"COMPLETE"|"ERROR"|..., "failureMessage"}``.
* ``kernels_output("owner/slug/N", path, file_pattern=regex)``: ``ListKernelSessionOutput {"userName",
  "kernelSlug", "versionLabel", "pageSize": 20[, "pageToken"]}`` -> ``{"files": [{"fileName", "url"}],
  "log", "nextPageToken"}``; every page is listed, only names matching the pattern are fetched with a plain
  ``GET url`` (a signed storage URL: no auth), and a non-empty ``log`` is written as ``<slug>.log``.
  ``fileName`` is the path under ``/kaggle/working``. The log is a JSON list of ``{"stream_name", "time",
  "data"}`` events, as Kaggle serves it.
* ``quota_view()``: ``GetAcceleratorQuotaStatistics {}`` -> ``{"gpuQuota": {"timeUsed": "123.4s",
  "totalTimeAllowed": "108000s"}, "quotaRefreshTime"}``.

A pushed notebook runs for real, in a thread: its input is laid out under ``kernels_dir/<slug>/v<N>/input``
(the competition as a read-only copy of ``competition_root``, made once; each dataset's latest files; each
``kernel_sources`` notebook's last complete output), the script's ``Path("/kaggle/input")``,
``Path("/kaggle/working")`` and ``Path("/kaggle/temp")`` are mapped to that session's folders, and it runs
with this Python (``sys.executable``) and a bare environment (no credentials, ``PIP_NO_INDEX=1``: no
internet here; ``image_path`` as ``PYTHONPATH``, to give the image older packages than this Python's).
Exit 0 is COMPLETE, anything else ERROR; the files left in its working folder are its output.

``accept_then_fail`` (a status, e.g. 502) makes the next SaveKernel accept the push, start its session
and still answer that status, as a gateway that times out after Kaggle accepted a push: the client sees a
failed push, though a new version is running.

Errors as the client raises them
--------------------------------
Any 4xx/5xx (or a JSON body with ``"code" >= 400``) raises ``requests.exceptions.HTTPError`` with
``e.response.status_code`` set. ``str(e)`` is only the body's ``message`` when the body is JSON with a
``code`` (401 -> ``"Unauthorized"``; 403 -> the rules text below), otherwise requests' own
``"502 Server Error: Bad Gateway for url: ..."``. Nothing listening -> ``requests.exceptions.
ConnectionError`` (``"HTTPConnectionPool(host=..., port=...): Max retries exceeded with url: ...
(Caused by NewConnectionError(...: [Errno 111] Connection refused))"``); both derive from ``OSError``.
No credentials at all -> ``authenticate()`` prints help and raises ``SystemExit(1)``.

Retries
-------
None of these three methods wraps its RPCs in ``KaggleApi.with_retry``: a 5xx or 429 on
DownloadDataFiles / StartSubmissionUpload / CreateSubmission / ListSubmissions raises at once, and a
refused connection raises ``requests.exceptions.ConnectionError`` at once. Only the blob body stream
(see above) and the upload PUT (urllib3 ``Retry(total=10, backoff_factor=0.5)``: connection errors,
and 413/429/503 only when they carry ``Retry-After``) retry by themselves.

Error bodies used here: 401 ``{"code": 401, "message": "Unauthorized"}`` (as quoted in
Kaggle/kaggle-cli#46); 403 rules not accepted ``"You must accept this competition's rules before
you'll be able to download files."`` (quoted in openai/mle-bench#29); the 404/429/5xx texts are
this stand-in's own.
"""

from __future__ import annotations

import base64
import contextlib
import email.utils
import hashlib
import json
import os
import secrets
import shutil
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

# Credentials the stand-in accepts; fake, never valid on Kaggle.
USERNAME, KEY = "stand-in-user", "0123456789abcdef-secret"
RULES_NOT_ACCEPTED = "You must accept this competition's rules before you'll be able to download files."
# KaggleApi.COMPETITION_SUBMIT_UPLOAD_FAILED_MESSAGE
UPLOAD_FAILED_MESSAGE = "Could not submit to competition"
COMPETITION_SERVICE = "competitions.CompetitionApiService"
OAUTH_SERVICE = "security.OAuthService"
SERVICES = (
    COMPETITION_SERVICE,
    OAUTH_SERVICE,
    "datasets.DatasetApiService",
    "blobs.BlobApiService",
    "kernels.KernelsApiService",
)
# Where a Kaggle notebook finds things, and the lines of the pushed script that say so: the stand-in
# runs the script with these mapped to temporary folders (a container's bind mounts, in effect).
KAGGLE_MOUNTS = ("/kaggle/input", "/kaggle/working", "/kaggle/temp")
# RPCs that need the competition rules accepted (ListSubmissions does not).
_NEEDS_RULES = {"DownloadDataFiles", "StartSubmissionUpload", "CreateSubmission"}


@dataclass
class RecordedRequest:
    method: str
    path: str  # path and query, as sent
    endpoint: str  # RPC method name ("DownloadDataFiles", ...), "blob" or "upload"
    headers: dict[str, str]
    body: bytes
    status: int = 0  # what the stand-in answered

    @property
    def json(self):
        return json.loads(self.body) if self.body else None


@dataclass
class Submission:
    ref: int
    file_name: str
    content: bytes
    description: str
    date: datetime
    polls: int = 0  # how many ListSubmissions responses have included it


@dataclass
class Dataset:
    ref: str  # owner/slug
    title: str
    private: bool
    versions: list[dict[str, bytes]]  # per version: file name -> bytes
    status_polls: int = 0  # GetDatasetStatus calls since the latest version


@dataclass
class KernelVersion:
    number: int
    request: dict  # the SaveKernel body: text, sources, flags
    status: str = "QUEUED"  # QUEUED, RUNNING, COMPLETE, ERROR
    root: Path | None = None  # input/, working/, temp/ of the session
    log: list[dict] = field(default_factory=list)  # Kaggle's log: {stream_name, time, data} events
    returncode: int | None = None
    seconds: float = 0.0

    @property
    def working(self) -> Path:
        assert self.root is not None
        return self.root / "working"

    def outputs(self) -> list[str]:
        """The files the session left in its working folder, as Kaggle lists a notebook's output."""
        if self.status not in ("COMPLETE", "ERROR") or self.root is None:
            return []
        found = (p for p in self.working.rglob("*") if p.is_file() and not p.is_symlink())
        return sorted(p.relative_to(self.working).as_posix() for p in found)


@dataclass
class Fault:
    status: int
    times: int = 1
    endpoint: str | None = None  # None = the next request of any kind
    message: str | None = None
    retry_after: str | None = None
    json_body: bool = True  # False: a plain-text body, like an HTML error page from a proxy


class KaggleStandIn:
    """Serve one competition's data zip and accept submissions to it, on 127.0.0.1.

    ``port=0`` picks a free port (use :func:`route_kaggle_api`); ``port=7777`` is what kagglesdk's TEST
    env expects, and tests using a fixed port must not run in parallel.
    """

    def __init__(
        self,
        competition: str,
        data_zip: bytes,
        username: str = "stand-in-user",
        key: str = "stand-in-key",
        token: str | None = None,
        port: int = 0,
        competition_root: Path | None = None,
        kernels_dir: Path | None = None,
    ) -> None:
        self.competition = competition
        self.data_zip = data_zip
        self.username = username
        self.key = key
        self.token = token
        self.port = port
        # Knobs the tests turn.
        self.public_score = "0.9876"
        self.private_score = ""
        self.pending_polls = 0  # ListSubmissions reports PENDING this many times per submission
        self.rules_accepted = True
        self.faults: list[Fault] = []
        self.truncate_next_blob_at: int | None = None  # send only this many bytes of the next full blob
        self.last_modified = email.utils.formatdate(time.time() - 3600, usegmt=True)
        # What happened.
        self.requests: list[RecordedRequest] = []
        self.submissions: list[Submission] = []
        self.uploads: dict[str, bytes] = {}  # upload token -> bytes PUT to its createUrl
        self._upload_names: dict[str, str] = {}
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        # Datasets and notebooks. A pushed notebook runs for real: its script, with this Python, on a
        # read-only copy of `competition_root` mounted as the competition, in folders under `kernels_dir`.
        self.competition_root = competition_root
        self.kernels_dir = kernels_dir
        self.python = sys.executable
        self.dataset_ready_polls = 1  # GetDatasetStatus says BLOBS_RECEIVED this many times, then READY
        self.push_error = ""  # SaveKernel answers {"error": push_error} when set
        self.accept_then_fail = 0  # the next SaveKernel accepts the push and answers this status (0: off)
        self.script_edit: tuple[str, str] | None = None  # (old, new) replaced in pushed scripts before they run
        # Folders ahead of this Python's own packages in notebooks (PYTHONPATH): an image with older packages.
        self.image_path: list[Path] = []
        self.kernel_timeout_s = 600.0
        self.gpu_quota_s = 30 * 3600
        self.datasets: dict[str, Dataset] = {}
        self.kernels: dict[str, list[KernelVersion]] = {}  # owner/slug -> its versions
        self.competition_copy: Path | None = None  # what notebooks see as /kaggle/input/<competition>
        self.competition_digest = ""  # of competition_copy when it was made
        self._processes: list[subprocess.Popen] = []

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> KaggleStandIn:
        handler = type("Handler", (_Handler,), {"stand_in": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), handler)
        self._server.daemon_threads = True
        self._server.block_on_close = False
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.02,), name="kaggle-stand-in", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        for proc in self._processes:
            if proc.poll() is None:
                proc.kill()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> KaggleStandIn:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def etag(self) -> str:
        return f'"{len(self.data_zip)}-{hash(self.data_zip) & 0xFFFFFFFF:08x}"'

    # -- inspection helpers ------------------------------------------------------------------------

    def calls(self) -> list[tuple[str, str]]:
        """(method, path without query) of every request received, in order."""
        return [(r.method, urlsplit(r.path).path) for r in self.requests]

    def count(self, endpoint: str) -> int:
        return sum(r.endpoint == endpoint for r in self.requests)

    def fail_next(self, status: int, times: int = 1, endpoint: str | None = None, **kw) -> None:
        self.faults.append(Fault(status, times, endpoint, **kw))

    def _take_fault(self, endpoint: str) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.times > 0 and fault.endpoint in (None, endpoint):
                    fault.times -= 1
                    return fault
        return None

    # -- request handling (called from server threads) ---------------------------------------------

    def _authorized(self, header: str | None) -> bool:
        if not header:
            return False
        scheme, _, value = header.partition(" ")
        if scheme == "Basic":
            try:
                user, _, key = base64.b64decode(value).decode().partition(":")
            except ValueError:
                return False
            return (user, key) == (self.username, self.key)
        return scheme == "Bearer" and self.token is not None and value == self.token

    def _rpc(self, method: str, body: dict) -> tuple[int, dict, dict[str, str]]:
        status, payload = self._answer(method, body)
        if method == "DownloadDataFiles" and status == 200:
            url = f"{self.base_url}/blobs/{self.competition}.zip?token={secrets.token_hex(4)}"
            return 302, {}, {"Location": url}
        return status, payload, {}

    def _answer(self, method: str, body: dict) -> tuple[int, dict]:
        if method in _NOTEBOOK_RPCS:
            return getattr(self, _NOTEBOOK_RPCS[method])(body)
        if method == "IntrospectToken":
            if self.token is not None and body.get("token") == self.token:
                return 200, {"active": True, "username": self.username, "scope": "resources.admin:*"}
            return 200, {"active": False}
        if body.get("competitionName") != self.competition:
            return 404, {"code": 404, "message": f"Competition '{body.get('competitionName')}' not found"}
        if method in _NEEDS_RULES and not self.rules_accepted:
            return 403, {"code": 403, "message": RULES_NOT_ACCEPTED}
        if method == "StartSubmissionUpload":
            token = secrets.token_hex(8)
            with self._lock:
                self._upload_names[token] = body.get("fileName", "")
            return 200, {"token": token, "createUrl": f"{self.base_url}/upload/{token}"}
        if method == "CreateSubmission":
            token = body.get("blobFileTokens", "")
            if token not in self.uploads:
                return 400, {"code": 400, "message": "Blob file token not found (file was not uploaded)"}
            with self._lock:
                sub = Submission(
                    ref=len(self.submissions) + 1000,
                    file_name=self._upload_names[token],
                    content=self.uploads[token],
                    description=body.get("submissionDescription", ""),
                    date=datetime.now(UTC).replace(tzinfo=None),
                )
                self.submissions.append(sub)
            return 200, {"message": f"Successfully submitted to {self.competition}", "ref": sub.ref}
        if method == "DownloadDataFiles":
            return 200, {}
        if method == "ListSubmissions":
            return 200, {"submissions": [self._describe(s) for s in reversed(self.submissions)]}
        return 404, {"code": 404, "message": f"Stand-in does not implement {method}"}

    # -- datasets, blobs and notebooks -----------------------------------------------------------------

    def _own(self, owner: str | None) -> tuple[int, dict] | None:
        if owner != self.username:
            return 403, {"code": 403, "message": f"Permission denied: {owner} is not {self.username}"}
        return None

    def _start_blob_upload(self, body: dict) -> tuple[int, dict]:
        token = secrets.token_hex(8)
        with self._lock:
            self._upload_names[token] = body.get("name", "")
        return 200, {"token": token, "createUrl": f"{self.base_url}/upload/{token}"}

    def _uploaded_files(self, files: list[dict]) -> dict[str, bytes] | None:
        tokens = [f.get("token") for f in files]
        if not tokens or any(t not in self.uploads for t in tokens):
            return None
        return {self._upload_names[t]: self.uploads[t] for t in tokens}

    def _create_dataset(self, body: dict) -> tuple[int, dict]:
        owner, slug = body.get("ownerSlug"), body.get("slug", "")
        if denied := self._own(owner):
            return denied
        ref = f"{owner}/{slug}"
        if ref in self.datasets:
            return 200, {"error": f'The requested slug "{slug}" is already in use by a dataset.'}
        files = self._uploaded_files(body.get("files", []))
        if files is None:
            return 200, {"error": "Blob file token not found (file was not uploaded)"}
        with self._lock:
            self.datasets[ref] = Dataset(ref, body.get("title", ""), body.get("isPrivate", False), [files])
        return 200, {"ref": ref, "url": f"https://www.kaggle.com/datasets/{ref}", "status": "Ok"}

    def _create_dataset_version(self, body: dict) -> tuple[int, dict]:
        owner, slug = body.get("ownerSlug"), body.get("datasetSlug", "")
        if denied := self._own(owner):
            return denied
        dataset = self.datasets.get(f"{owner}/{slug}")
        if dataset is None:
            return 404, {"code": 404, "message": f"Dataset {owner}/{slug} not found"}
        files = self._uploaded_files(body.get("body", {}).get("files", []))
        if files is None:
            return 200, {"error": "Blob file token not found (file was not uploaded)"}
        with self._lock:
            dataset.versions.append(files)
            dataset.status_polls = 0
        return 200, {"ref": dataset.ref, "url": f"https://www.kaggle.com/datasets/{dataset.ref}", "status": "Ok"}

    def _dataset(self, body: dict) -> Dataset | None:
        return self.datasets.get(f"{body.get('ownerSlug')}/{body.get('datasetSlug')}")

    def _get_dataset_status(self, body: dict) -> tuple[int, dict]:
        dataset = self._dataset(body)
        if dataset is None:
            return 404, {"code": 404, "message": "Dataset not found"}
        with self._lock:
            dataset.status_polls += 1
            ready = dataset.status_polls > self.dataset_ready_polls
        return 200, {"status": "READY" if ready else "BLOBS_RECEIVED"}

    def _list_dataset_files(self, body: dict) -> tuple[int, dict]:
        dataset = self._dataset(body)
        if dataset is None:
            return 404, {"code": 404, "message": "Dataset not found"}
        names = sorted(dataset.versions[-1])
        start, size = int(body.get("pageToken") or 0), int(body.get("pageSize") or 20)
        page = [{"name": n, "totalBytes": len(dataset.versions[-1][n])} for n in names[start : start + size]]
        more = start + size < len(names)
        return 200, {"datasetFiles": page, **({"nextPageToken": str(start + size)} if more else {})}

    def _save_kernel(self, body: dict) -> tuple[int, dict]:
        ref = body.get("slug", "")
        if denied := self._own(ref.split("/")[0]):
            return denied
        if self.push_error:
            return 200, {"error": self.push_error}

        def has_output(kernel: str) -> bool:
            return any(v.status == "COMPLETE" for v in self.kernels.get(kernel, []))

        invalid = {
            "invalidCompetitionSources": [c for c in body.get("competitionDataSources", []) if c != self.competition],
            "invalidDatasetSources": [d for d in body.get("datasetDataSources", []) if d not in self.datasets],
            "invalidKernelSources": [k for k in body.get("kernelDataSources", []) if not has_output(k)],
        }
        if any(invalid.values()):
            return 200, {k: v for k, v in invalid.items() if v}
        with self._lock:
            versions = self.kernels.setdefault(ref, [])
            version = KernelVersion(len(versions) + 1, body)
            versions.append(version)
        threading.Thread(target=self._run_kernel, args=(ref, version), name=f"kernel-{ref}", daemon=True).start()
        owner, slug = ref.split("/")
        if self.accept_then_fail:
            status, self.accept_then_fail = self.accept_then_fail, 0
            return status, {"code": status, "message": "Stand-in: push accepted, answer lost"}
        return 200, {
            "ref": f"/code/{owner}/{slug}",
            "url": f"https://www.kaggle.com/code/{owner}/{slug}",
            "versionNumber": version.number,
        }

    def _kernel_version(self, body: dict) -> KernelVersion | None:
        versions = self.kernels.get(f"{body.get('userName')}/{body.get('kernelSlug')}", [])
        label = body.get("versionLabel")
        if label is None:
            return versions[-1] if versions else None
        return next((v for v in versions if f"v{v.number}" == label), None)

    def _get_kernel(self, body: dict) -> tuple[int, dict]:
        version = self._kernel_version({**body, "versionLabel": None})
        if version is None:
            return 404, {"code": 404, "message": "Notebook not found"}
        ref = f"{body['userName']}/{body['kernelSlug']}"
        meta = {"ref": ref, "slug": body["kernelSlug"], "title": version.request.get("newTitle", "")}
        return 200, {"metadata": {**meta, "currentVersionNumber": version.number}, "blob": {}}

    def _get_kernel_session_status(self, body: dict) -> tuple[int, dict]:
        version = self._kernel_version(body)
        if version is None:
            return 404, {"code": 404, "message": "Notebook not found"}
        return 200, {"status": version.status}

    def _list_kernel_session_output(self, body: dict) -> tuple[int, dict]:
        version = self._kernel_version(body)
        if version is None:
            return 404, {"code": 404, "message": "Notebook not found"}
        ref = f"{body['userName']}/{body['kernelSlug']}"
        names = version.outputs()
        start, size = int(body.get("pageToken") or 0), int(body.get("pageSize") or 20)
        files = [
            {"fileName": n, "url": f"{self.base_url}/kernel-output/{ref}/{version.number}/{n}"}
            for n in names[start : start + size]
        ]
        answer = {"files": files, "log": json.dumps(version.log) if version.log else ""}
        if start + size < len(names):
            answer["nextPageToken"] = str(start + size)
        return 200, answer

    def _get_accelerator_quota_statistics(self, body: dict) -> tuple[int, dict]:
        used = sum(v.seconds for versions in self.kernels.values() for v in versions)
        quota = {"timeUsed": f"{used:.3f}s", "totalTimeAllowed": f"{self.gpu_quota_s}s"}
        return 200, {"gpuQuota": quota, "quotaRefreshTime": "2030-01-01T00:00:00Z"}

    def _kernel_output_file(self, path: str) -> tuple[int, bytes]:
        _, owner, slug, number, name = path.split("/", 4)
        versions = self.kernels.get(f"{owner}/{slug}", [])
        version = next((v for v in versions if str(v.number) == number), None)
        if version is None or unquote(name) not in version.outputs():
            return 404, b"no such output file"
        return 200, (version.working / unquote(name)).read_bytes()

    # -- running a notebook --------------------------------------------------------------------------

    def _competition_input(self) -> Path:
        """A read-only copy of competition_root, made once: the notebooks' competition data."""
        with self._lock:
            if self.competition_copy is None:
                assert self.competition_root and self.kernels_dir, "notebooks need competition_root and kernels_dir"
                copy = self.kernels_dir / "competition-input" / self.competition
                shutil.copytree(self.competition_root, copy)
                _read_only(copy)
                self.competition_copy, self.competition_digest = copy, tree_digest(copy)
            return self.competition_copy

    def _run_kernel(self, ref: str, version: KernelVersion) -> None:
        try:
            self._run_session(ref, version)
        except Exception as e:  # the stand-in's own failure: an errored session saying why, not a hang
            version.log.append({"stream_name": "stderr", "time": 0, "data": f"stand-in: {type(e).__name__}: {e}\n"})
            version.status = "ERROR"

    def _run_session(self, ref: str, version: KernelVersion) -> None:
        """Lay out the session's input (competition, datasets, notebooks' outputs, all read-only), run the
        pushed script with the mounts mapped, and keep its log and working folder as the output."""
        request, slug = version.request, ref.split("/")[1]
        root = self.kernels_dir / slug / f"v{version.number}"
        version.root = root
        inputs = root / "input"
        inputs.mkdir(parents=True)
        for name in request.get("competitionDataSources", []):
            (inputs / name).symlink_to(self._competition_input(), target_is_directory=True)
        for name in request.get("datasetDataSources", []):
            folder = inputs / name.split("/")[1]
            folder.mkdir()
            for file_name, content in self.datasets[name].versions[-1].items():
                (folder / file_name).write_bytes(content)
            _read_only(folder)
        for name in request.get("kernelDataSources", []):
            last = [v for v in self.kernels[name] if v.status == "COMPLETE"][-1]
            shutil.copytree(last.working, inputs / name.split("/")[1], symlinks=True)
            _read_only(inputs / name.split("/")[1])
        script = request.get("text", "")
        if self.script_edit:  # a notebook that runs other than what was pushed (edited on Kaggle, a stale copy)
            script = script.replace(*self.script_edit)
        for kaggle_path, local in zip(KAGGLE_MOUNTS, ("input", "working", "temp"), strict=True):
            script = script.replace(f'Path("{kaggle_path}")', f"Path({str(root / local)!r})")
        (root / "working").mkdir()
        (root / "temp").mkdir()
        (root / "home").mkdir()
        (root / "code.py").write_text(script)
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(root / "home"),
            "LANG": "C.UTF-8",
            "KAGGLE_KERNEL_RUN_TYPE": "Batch",
            "PIP_NO_INDEX": "1",  # no internet here: pip may only use local files
            "HF_HUB_OFFLINE": "1",
            "OMP_NUM_THREADS": "1",  # notebooks share this machine's cores; on Kaggle each has its own
        }
        if self.image_path:
            env["PYTHONPATH"] = os.pathsep.join(map(str, self.image_path))
        started = time.monotonic()
        version.status = "RUNNING"
        proc = subprocess.Popen(
            [self.python, str(root / "code.py")],
            cwd=root / "working",
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
        )
        self._processes.append(proc)
        readers = [
            threading.Thread(target=self._read_log, args=(version, stream, name, started), daemon=True)
            for stream, name in ((proc.stdout, "stdout"), (proc.stderr, "stderr"))
        ]
        for reader in readers:
            reader.start()
        try:
            version.returncode = proc.wait(timeout=self.kernel_timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            version.returncode = proc.wait()
        for reader in readers:
            reader.join()
        version.seconds = time.monotonic() - started
        version.status = "COMPLETE" if version.returncode == 0 else "ERROR"

    def _read_log(self, version: KernelVersion, stream, name: str, started: float) -> None:
        for line in stream:
            with self._lock:
                version.log.append({"stream_name": name, "time": round(time.monotonic() - started, 3), "data": line})

    def _describe(self, sub: Submission) -> dict:
        with self._lock:
            sub.polls += 1
            done = sub.polls > self.pending_polls
        row = {
            "ref": sub.ref,
            "totalBytes": len(sub.content),
            "date": sub.date.isoformat(timespec="milliseconds") + "Z",
            "description": sub.description,
            "fileName": sub.file_name,
            "status": "COMPLETE" if done else "PENDING",
            "submittedBy": self.username,
            "teamName": self.username,
            "url": f"/submissions/{sub.ref}/{sub.file_name}",
        }
        if done:
            row["publicScore"] = self.public_score
            if self.private_score:
                row["privateScore"] = self.private_score
        return row


_NOTEBOOK_RPCS = {
    "StartBlobUpload": "_start_blob_upload",
    "CreateDataset": "_create_dataset",
    "CreateDatasetVersion": "_create_dataset_version",
    "GetDatasetStatus": "_get_dataset_status",
    "ListDatasetFiles": "_list_dataset_files",
    "SaveKernel": "_save_kernel",
    "GetKernel": "_get_kernel",
    "GetKernelSessionStatus": "_get_kernel_session_status",
    "ListKernelSessionOutput": "_list_kernel_session_output",
    "GetAcceleratorQuotaStatistics": "_get_accelerator_quota_statistics",
}


def _read_only(root: Path) -> None:
    for path in [root, *root.rglob("*")]:
        if not path.is_symlink():
            path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def tree_digest(root: Path) -> str:
    """Names, modes and bytes of every file under `root`: equal digests, unchanged tree."""
    h = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        h.update(f"{path.relative_to(root)}\0{path.stat().st_mode:o}\0".encode())
        if path.is_file():
            h.update(path.read_bytes())
    return h.hexdigest()


class _Handler(BaseHTTPRequestHandler):
    stand_in: KaggleStandIn
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # keep pytest output clean
        pass

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _send(self, record, status, body=b"", content_type="application/json", headers=None):
        record.status = status
        if isinstance(body, dict):
            body = json.dumps(body).encode()
        self.send_response(status)
        if body or status not in (204, 302):
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _handle(self) -> None:
        s = self.stand_in
        path = urlsplit(self.path).path
        parts = path.strip("/").split("/")
        if path.startswith("/blobs/"):
            endpoint = "blob"
        elif path.startswith("/upload/"):
            endpoint = "upload"
        elif path.startswith("/kernel-output/"):
            endpoint = "kernel-output"
        else:
            endpoint = parts[-1]
        record = RecordedRequest(
            method=self.command,
            path=self.path,
            endpoint=endpoint,
            headers=dict(self.headers),
            body=self._read_body(),
        )
        with s._lock:
            s.requests.append(record)

        fault = s._take_fault(endpoint)
        if fault is not None:
            extra = {"Retry-After": fault.retry_after} if fault.retry_after else {}
            msg = fault.message or f"Stand-in injected HTTP {fault.status}"
            if not fault.json_body:
                return self._send(record, fault.status, msg.encode(), "text/plain", extra)
            return self._send(record, fault.status, {"code": fault.status, "message": msg}, headers=extra)

        if endpoint == "blob":
            return self._blob(record)
        if endpoint == "upload":
            return self._upload(record, parts[-1])
        if endpoint == "kernel-output":  # a signed storage URL on Kaggle: no credentials needed
            status, content = s._kernel_output_file(path.strip("/"))
            return self._send(record, status, content, "application/octet-stream")

        # LOCAL/TEST clients use /api/v1/<service>/<Method>; PROD uses /v1/...
        is_rpc = self.command == "POST" and parts[:-2] in (["api", "v1"], ["v1"]) and parts[-2] in SERVICES
        if not is_rpc:
            return self._send(record, 404, {"code": 404, "message": f"No route for {self.command} {path}"})
        if parts[-2] != OAUTH_SERVICE and not s._authorized(self.headers.get("Authorization")):
            return self._send(record, 401, {"code": 401, "message": "Unauthorized"})
        try:
            body = json.loads(record.body or b"{}")
        except ValueError:
            return self._send(record, 400, {"code": 400, "message": "Request body is not JSON"})
        status, payload, headers = s._rpc(endpoint, body)
        self._send(record, status, payload if payload or status != 302 else b"", headers=headers)

    def _blob(self, record) -> None:
        s = self.stand_in
        data = s.data_zip
        headers = {
            "Last-Modified": s.last_modified,
            "ETag": s.etag,
            "Accept-Ranges": "bytes",
        }
        wanted = self.headers.get("Range")
        if_range = self.headers.get("If-Range")
        if wanted and (if_range is None or if_range in (s.etag, s.last_modified)):
            start = int(wanted.removeprefix("bytes=").split("-")[0])
            if start >= len(data):
                return self._send(record, 416, b"", "text/plain", {"Content-Range": f"bytes */{len(data)}"})
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
            return self._send(record, 206, data[start:], "application/zip", headers)
        cut = s.truncate_next_blob_at
        if cut is not None:
            s.truncate_next_blob_at = None
            record.status = 200
            self.send_response(200)
            self.send_header("Content-Type", "application/zip")
            self.send_header("Content-Length", str(len(data)))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data[:cut])
            self.wfile.flush()
            self.close_connection = True
            return None
        return self._send(record, 200, data, "application/zip", headers)

    def _upload(self, record, token) -> None:
        s = self.stand_in
        if self.command != "PUT" or token not in s._upload_names:
            return self._send(record, 404, {"code": 404, "message": "Unknown upload URL"})
        with s._lock:
            s.uploads[token] = record.body
        return self._send(record, 200, {})

    do_GET = do_POST = do_PUT = do_HEAD = _handle


@contextlib.contextmanager
def route_kaggle_api(base_url: str) -> Iterator[None]:
    """Make every ``KaggleApi`` (existing or new) talk to ``base_url`` instead of api.kaggle.com.

    Every entry of kagglesdk's endpoint table points at ``base_url`` *before* ``kaggle`` is imported,
    so even the import-time ``authenticate()`` (which uses PROD and calls IntrospectToken when an access
    token is configured) stays on loopback. ``--local`` in ``KaggleApi.args`` gives the ``/api/v1`` paths
    of the LOCAL/TEST environments. Process-wide: do not use from concurrent threads.
    """
    from kagglesdk.kaggle_env import _env_to_endpoint

    saved_endpoints = dict(_env_to_endpoint)
    _env_to_endpoint.update(dict.fromkeys(saved_endpoints, base_url))
    try:
        from kaggle.api.kaggle_api_extended import KaggleApi

        saved_args = KaggleApi.args
        KaggleApi.args = [*saved_args, "--local"]
        try:
            yield
        finally:
            KaggleApi.args = saved_args
    finally:
        _env_to_endpoint.update(saved_endpoints)
