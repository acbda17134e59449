"""A loopback stand-in for the parts of the Kaggle API this project uses.

It lets tests drive the real ``kaggle`` client (checked against kaggle 2.2.4 + kagglesdk 0.1.37)
without internet. Standard library only; it only ever binds 127.0.0.1.

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
import json
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

# Credentials the stand-in accepts; fake, never valid on Kaggle.
USERNAME, KEY = "stand-in-user", "0123456789abcdef-secret"
RULES_NOT_ACCEPTED = "You must accept this competition's rules before you'll be able to download files."
# KaggleApi.COMPETITION_SUBMIT_UPLOAD_FAILED_MESSAGE
UPLOAD_FAILED_MESSAGE = "Could not submit to competition"
COMPETITION_SERVICE = "competitions.CompetitionApiService"
OAUTH_SERVICE = "security.OAuthService"
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

        # LOCAL/TEST clients use /api/v1/<service>/<Method>; PROD uses /v1/...
        is_rpc = (
            self.command == "POST"
            and parts[:-2] in (["api", "v1"], ["v1"])
            and parts[-2] in (COMPETITION_SERVICE, OAUTH_SERVICE)
        )
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
