"""The kaggle client, tamed: credentials checked first, quiet lazy import, bounded retries, one-line errors.

`import kaggle` authenticates at once and prints help (then swallows its own exit) when nothing is
configured, so the credentials are looked for here first, the same way the client does, and the
import runs with its output captured. The client retries none of its API calls (only the upload PUT
and the download body stream), so `call` retries connection errors, 429 and 5xx itself.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, redirect_stdout
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from pipeline.errors import PipelineError

if TYPE_CHECKING:
    from kaggle.api.kaggle_api_extended import KaggleApi

log = logging.getLogger(__name__)
T = TypeVar("T")

TOKEN_PAGE = "kaggle.com > Settings > API > Create New Token"
# What KaggleApi.competition_submit returns, instead of raising, when the upload itself failed.
UPLOAD_FAILED_MESSAGE = "Could not submit to competition"


class UploadFailed(Exception):
    """The client's upload PUT failed: nothing was created on Kaggle, so trying again is safe."""


def config_dir() -> Path:
    """Where the client looks for kaggle.json (KaggleApi computes it the same way, once, at import)."""
    if os.environ.get("KAGGLE_CONFIG_DIR"):
        return Path(os.environ["KAGGLE_CONFIG_DIR"])
    home = Path.home() / ".kaggle"
    if sys.platform.startswith("linux") and not home.exists():
        return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "kaggle"
    return home


def credentials_source() -> str:
    """Where the client will find credentials, checked without importing it; PipelineError if nowhere.

    Order as KaggleApi.authenticate: access token, then username + key (kaggle.json overlaid by
    KAGGLE_USERNAME / KAGGLE_KEY), then OAuth credentials. The key itself is never returned."""
    from kagglesdk.kaggle_env import get_access_token_from_env  # no authentication, no output

    token, where = get_access_token_from_env()
    if token:
        return f"the access token in {where}"
    config = config_dir() / "kaggle.json"
    values: dict[str, Any] = {}
    if config.is_file():
        if os.name != "nt" and config.stat().st_mode & 0o077:
            log.warning("%s is readable by other users: chmod 600 %s", config, config)
        try:
            values = json.loads(config.read_text()) or {}
        except (OSError, ValueError):
            log.warning("%s is not valid JSON: ignored (download a new one: %s)", config, TOKEN_PAGE)
    username = os.environ.get("KAGGLE_USERNAME") or values.get("username")
    key = os.environ.get("KAGGLE_KEY") or values.get("key")
    if username and key:
        return f"the API key of {username} ({config} / KAGGLE_USERNAME, KAGGLE_KEY)"
    if Path("~/.kaggle/credentials.json").expanduser().is_file():
        return "the OAuth credentials in ~/.kaggle/credentials.json"
    raise PipelineError(
        f"no Kaggle credentials: save kaggle.json ({TOKEN_PAGE}) as {config} and chmod 600 it, "
        "or set KAGGLE_USERNAME and KAGGLE_KEY (or KAGGLE_API_TOKEN)"
    )


def connect(retry: Any, competition: str) -> KaggleApi:
    """An authenticated KaggleApi, or PipelineError. `retry` has attempts, backoff_s, max_backoff_s."""
    source = credentials_source()
    try:
        with client_output():
            try:
                from kaggle.api.kaggle_api_extended import KaggleApi
            except ImportError as e:
                raise PipelineError(f"the kaggle client cannot be imported ({e}): pip install -e .") from None
            api = KaggleApi()
            # Class attributes fixed at first import; follow the environment of this call.
            api.config_dir = str(config_dir())
            api.config = str(config_dir() / "kaggle.json")
            call(api.authenticate, "authentication", retry, competition)
    except SystemExit:  # the client found no usable credentials and printed help (captured)
        raise PipelineError(
            f"Kaggle did not accept {source}: get a new token ({TOKEN_PAGE}) and save it as kaggle.json"
        ) from None
    return api


@contextmanager
def client_output() -> Iterator[None]:
    """Keep what the client prints (help, notes, upload errors) out of the terminal; log it at debug level.

    Only stdout: the download's progress bar (tqdm, on stderr) stays visible."""
    captured = io.StringIO()
    try:
        with redirect_stdout(captured):
            yield
    finally:
        if captured.getvalue().strip():
            log.debug("kaggle client output: %s", captured.getvalue().strip())


def call(
    fn: Callable[[], T],
    what: str,
    retry: Any,
    competition: str,
    describe: Callable[[Exception, str], str] | None = None,
) -> T:
    """fn(), tried up to retry.attempts times on failures that may pass; any failure -> one-line PipelineError.
    `describe(error, competition)` words the failures (default `explain`, which speaks of the competition)."""
    import requests

    attempt = 1
    while True:
        try:
            return fn()
        except (requests.RequestException, UploadFailed) as e:
            status = status_of(e)
            transient = isinstance(e, (requests.ConnectionError, requests.Timeout, UploadFailed)) or (
                status is not None and (status == 429 or status >= 500)
            )
            if not transient or attempt >= retry.attempts:
                tries = f" after {attempt} attempts" if attempt > 1 else ""
                raise PipelineError(f"{what} failed{tries}: {(describe or explain)(e, competition)}") from None
            delay = min(retry.backoff_s * 2 ** (attempt - 1), retry.max_backoff_s)
            if status == 429:  # Kaggle may say how long to wait
                delay = min(max(delay, _retry_after(e)), retry.max_backoff_s)
            log.warning("%s: %s; retry %d of %d in %.3g s", what, _short(e), attempt, retry.attempts - 1, delay)
            time.sleep(delay)
            attempt += 1


def call_api(fn: Callable[[], T], what: str, retry: Any) -> T:
    """call() for the account's own datasets and notebooks: 403 and 404 worded without a competition,
    and the client's own refusals (ValueError: a bad kernel or dataset reference) as one line too."""

    def describe(e: Exception, _: str) -> str:
        status = status_of(e)
        if status == 403:
            return f"Kaggle refused access (403: {_short(e)}): check that this account owns it"
        if status == 404:
            return f"Kaggle has no such item (404: {_short(e)})"
        return explain(e, "")

    try:
        with client_output():
            return call(fn, what, retry, "", describe)
    except ValueError as e:
        raise PipelineError(f"{what} failed: {' '.join(str(e).split())}") from None


def explain(e: Exception, competition: str) -> str:
    """What went wrong and what to do, in one line, without credentials."""
    import requests

    status = status_of(e)
    page = f"https://www.kaggle.com/competitions/{competition}"
    if isinstance(e, UploadFailed):
        return f"the file upload was refused ({e}): try again later"
    if isinstance(e, (requests.ConnectionError, requests.Timeout)):
        return f"cannot reach Kaggle ({_short(e)}): check the network connection or proxy settings"
    if status == 401:
        return f"Kaggle rejected the credentials (401 Unauthorized): get a new token ({TOKEN_PAGE})"
    if status == 403:
        return (
            f"Kaggle refused access to competition {competition!r} (403: {_short(e)}): "
            f"accept the competition's rules at {page}/rules with this account"
        )
    if status == 404:
        return f"Kaggle has no competition {competition!r} (404): check data.competition (the slug in {page})"
    if status == 429:
        return "Kaggle's rate limit (429 Too Many Requests): wait a few minutes and run again"
    if status is not None and status >= 500:
        return f"Kaggle server error ({status}: {_short(e)}): try again later"
    return f"{status}: {_short(e)}" if status else _short(e)


def status_of(e: Exception) -> int | None:
    """The HTTP status of a requests error; None for one without a response."""
    return getattr(getattr(e, "response", None), "status_code", None)


def _short(e: Exception) -> str:
    """The useful part of a requests error on one line: the body's message, or the OS error."""
    text = str(e)
    errno = re.search(r"\[Errno -?\d+\] [^)'\"]+", text)
    if errno:
        return errno.group(0).strip()
    text = text.split(" for url:")[0]  # requests' own message ends with the URL
    text = text.removeprefix(f"{status_of(e)} ") if status_of(e) else text
    return " ".join(text.split())[:300] or type(e).__name__


def _retry_after(e: Exception) -> float:
    value = getattr(getattr(e, "response", None), "headers", {}).get("Retry-After", "")
    return float(value) if value.strip().isdigit() else 0.0
