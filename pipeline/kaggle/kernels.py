"""Train a sweep's jobs in Kaggle notebooks: push each, follow it, bring its prediction files home, and
push it again from its own output when its time budget stopped it.

A job is one notebook (pipeline/kaggle/notebooks.py) named after the hashes of its runs, so the same job
is always the same notebook: a later sweep follows a notebook still running instead of pushing it again,
and skips a job whose runs are all home. The hashes are the ones training computes (the notebook trains
the config composed here), so a local run skips what came home too. At most max_parallel notebooks are
queued or running at once. Every step is recorded in the ledger (pipeline/kaggle/notebook_ledger.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
import shutil
import textwrap
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from omegaconf import OmegaConf

from pipeline.config import KaggleLauncherConfig, check_ranges
from pipeline.data.competition import Competition, scan_competition
from pipeline.data.layout import Layout
from pipeline.errors import PipelineError
from pipeline.fileio import atomic_path
from pipeline.kaggle import code_dataset
from pipeline.kaggle import notebook_ledger as ledger
from pipeline.kaggle.client import call_api, connect, credentials_source, status_of
from pipeline.kaggle.notebooks import INPUT, config_yaml, kaggle_config, slug_for, write_notebook

if TYPE_CHECKING:
    from kaggle.api.kaggle_api_extended import KaggleApi

log = logging.getLogger(__name__)

STOPPED = "stopped: time budget"
ENDED = "ended on Kaggle, not fetched"  # what pipeline.kernels records when it sees a session end
TERMINAL = ("complete", "error", "cancel_requested", "cancel_acknowledged")
LOG_TAIL_LINES = 15


@dataclass
class Job:
    num: int
    overrides: str
    cfg: Any  # the job's config as composed here, without Hydra's node
    job_dir: Path  # its folder in the sweep: the notebook pushed and what each session sent back


@dataclass
class Notebook:
    job: Job
    slug: str
    runs: dict[str, str]  # run name -> run hash
    config: str  # the YAML the notebook trains with
    competition: str
    comp: Competition  # the competition here: fetched predictions are checked against it
    preds: Path
    ref: str = ""  # owner/slug, once connected
    session: int = 0  # sessions pushed in this attempt
    resume: bool = False  # the next push continues from the last session's output
    version: int | None = None
    status: str = ""
    home: list[str] = field(default_factory=list)
    error: str = ""
    done: bool = False

    @property
    def name(self) -> str:
        return f"job #{self.job.num} ({self.job.overrides})"

    @property
    def kernel(self) -> str:
        return f"{self.ref}/{self.version}" if self.version else self.ref

    def folder(self) -> Path:
        return self.job.job_dir / "kaggle" / f"session{self.session}"


def run_jobs(jobs: list[Job], opts: Any) -> list[str | None]:
    """Train every job on Kaggle (or find it home); each job's one-line error, None when its runs are home.
    A PipelineError means nothing could start (credentials, the code upload)."""
    check_ranges(OmegaConf.merge(OmegaConf.structured(KaggleLauncherConfig), opts), prefix="hydra.launcher")
    credentials_source()  # one line before any request when there are none
    comps: dict[str, Competition] = {}
    planned: list[Notebook | str] = []
    for job in jobs:
        try:
            planned.append(plan(job, opts, comps))
        except PipelineError as e:
            log.error("%s cannot go to Kaggle: %s", f"job #{job.num} ({job.overrides})", e)
            planned.append(str(e))
    notebooks = [nb for nb in planned if isinstance(nb, Notebook)]
    for nb in notebooks:
        if len(nb.home) == len(nb.runs):
            log.info("%s: its %d run(s) are already home in %s: not pushed", nb.name, len(nb.runs), nb.preds)
            nb.done = True
    if todo := [nb for nb in notebooks if not nb.done]:
        api = connect(opts.kaggle, todo[0].competition)
        user = api.get_config_value("username")
        for nb in notebooks:
            nb.ref = f"{user}/{nb.slug}"
        Sweep(api, user, opts, todo).run()
        log.info("\n%s", ledger.table(opts.ledger, [nb.ref for nb in todo]))
    return [nb if isinstance(nb, str) else nb.error or None for nb in planned]


def plan(job: Job, opts: Any, comps: dict[str, Competition]) -> Notebook:
    """The job's notebook, checked here first: the competition folder, the runs, the weights."""
    from pipeline.training.jobs import finished
    from pipeline.training.pretrained import check_arch
    from pipeline.training.provenance import run_hash
    from pipeline.training.specs import resolve_runs

    cfg = job.cfg
    root = str(cfg.data.root)
    if root not in comps:
        try:
            comps[root] = scan_competition(root, Layout.from_config(cfg.data), cache_dir=cfg.perf.cache_dir)
        except PipelineError as e:
            raise PipelineError(
                f"{e} (fetched predictions are checked against the competition here, and blended with it: "
                f"python -m pipeline.download)"
            ) from None
    kcfg = kaggle_config(cfg, opts.time_budget_h)
    if local := [k for k in ("loss.teacher", "data.pseudo", "data.exclude") if OmegaConf.select(cfg, k)]:
        raise PipelineError(
            f"{', '.join(local)} name files here, which a Kaggle notebook cannot read: train students, "
            "pseudo-labelled and cleaned runs here (hydra/launcher=local, gpus or slurm)"
        )
    runs = resolve_runs(kcfg)
    for run in runs:
        check_arch(run.arch)  # a typo costs no Kaggle session
        if run.pretrained and run.weights and not str(run.weights).startswith(INPUT + "/"):
            raise PipelineError(
                f"model.weights={run.weights} is a file here, which a Kaggle notebook cannot read: upload it as "
                "a Kaggle dataset, add it to hydra.launcher.datasets and set model.weights=/kaggle/input/<dataset>/"
                "<file> (or model.weights=null: timm's weights, downloaded in the notebook)"
            )
    # the notebook's copy of the competition has the same fingerprints (content hashes, relative paths)
    data = {run.name: comps[root].fingerprint_for(run.recipe.aux_targets) for run in runs}
    hashes = {run.name: run_hash(run, kcfg.data, kcfg.tta, data[run.name]) for run in runs}
    job_hash = hashlib.sha256(json.dumps(sorted(hashes.items())).encode()).hexdigest()[:10]
    preds = Path(cfg.paths.preds)
    home = [name for name, h in hashes.items() if finished(preds / f"{name}.pt", h, data[name])]
    return Notebook(
        job=job,
        slug=slug_for(opts.prefix, kcfg.model.name, job_hash),
        runs=hashes,
        config=config_yaml(kcfg),
        competition=str(cfg.data.competition),
        comp=comps[root],
        preds=preds,
        home=home,
    )


class Sweep:
    """Push, follow and fetch the notebooks, at most opts.max_parallel at a time, until each is done or failed."""

    def __init__(self, api: KaggleApi, user: str, opts: Any, notebooks: list[Notebook]) -> None:
        self.api, self.user, self.opts, self.notebooks = api, user, opts, notebooks
        self.source_hash = code_dataset.source_hash(code_dataset.source_root(), code_dataset.extra_wheels(opts))
        self.code: code_dataset.CodeDataset | None = None

    def run(self) -> None:
        queue = deque(self.notebooks)
        for nb in queue:
            self.adopt(nb)
        if any(nb.version is None and not nb.error for nb in queue):  # before any push: its failure stops all
            self.ensure_code()
        active: list[Notebook] = []
        delay = self.opts.poll_s
        while queue or active:
            while queue and len(active) < self.opts.max_parallel:
                nb = queue.popleft()
                if not nb.error and (nb.version is not None or self.push(nb)):
                    active.append(nb)
            if not active:
                continue
            time.sleep(delay)
            changed = False
            for nb in list(active):
                changed |= self.poll(nb)
                if nb.done or nb.error:
                    active.remove(nb)
            delay = self.opts.poll_s if changed else min(delay * 1.5, self.opts.max_poll_s)

    def adopt(self, nb: Notebook) -> None:
        """Continue from what the ledger says of this notebook: follow a session still on Kaggle, resume a
        stopped one, refuse to repeat a failure with the same code."""
        entry = ledger.read(self.opts.ledger).get(nb.ref)
        if entry is None:
            return
        status, nb.session = entry.get("status", ""), entry.get("attempt_sessions", 0)
        if status in (*ledger.ACTIVE, ENDED, "complete") and entry.get("version"):
            # an ended session is fetched at the first poll; an active one is reported when it changes
            nb.version, nb.status = entry["version"], status if status in ledger.ACTIVE else ""
            what = f"session {nb.session} (version {nb.version}): {status}"
            log.info("%s: following notebook %s, %s", nb.name, nb.ref, what)
        elif status == STOPPED:
            nb.resume = True
        elif status == "failed" and entry.get("source") == self.source_hash and not self.opts.retry_failed:
            nb.error = (
                f"notebook {nb.ref} failed before with this code ({entry.get('error', '')}): fix the cause, or "
                "hydra.launcher.retry_failed=true pushes it again"
            )
            log.error("%s: %s", nb.name, nb.error)
        else:
            nb.session = 0  # a new attempt from scratch

    def ensure_code(self) -> code_dataset.CodeDataset:
        """The code dataset, found or uploaded once per sweep (a failure stops the sweep: nothing can be pushed)."""
        self.code = self.code or code_dataset.ensure(self.api, self.user, self.opts)
        return self.code

    def push(self, nb: Notebook) -> bool:
        """Push the notebook's next session (session 1 unless resuming); False (and nb.error) when refused."""
        code = self.ensure_code()
        if nb.resume and nb.session >= self.opts.max_sessions:
            hint = "raise hydra.launcher.max_sessions, or train fewer epochs per job"
            return self.fail(nb, f"was stopped by its time budget in each of its {nb.session} sessions", hint=hint)
        nb.session = nb.session + 1 if nb.resume else 1
        try:
            folder = write_notebook(
                nb.folder() / "notebook", nb.ref, nb.session, nb.competition, code, nb.config, self.opts
            )
            response = self.save(nb, folder)
            if refused := refusal(response, nb.competition):
                raise PipelineError(f"Kaggle refused notebook {nb.ref}: {refused}")
        except PipelineError as e:
            nb.error = str(e)
            log.error("%s: %s", nb.name, e)
            ledger.update(
                self.opts.ledger,
                nb.ref,
                job=nb.job.overrides,
                runs=nb.runs,
                status="failed",
                error=nb.error,
                source=self.source_hash,
            )
            return False
        nb.version, nb.status, nb.resume = response.version_number, "queued", False
        self.record_push(nb, code, response.url)
        log.info("%s: pushed notebook %s, session %d (version %s)", nb.name, nb.ref, nb.session, nb.version)
        return True

    def save(self, nb: Notebook, folder: Path) -> Any:
        """Push the notebook folder once. A push that failed on a 5xx, a timeout or a lost connection may
        have been accepted all the same (a second push would start a second GPU session): before pushing
        again, ask Kaggle for its latest version, and follow a version that appeared since."""
        before = self.latest_version(nb)
        failed_once = False

        def push_or_find() -> Any:
            nonlocal failed_once
            if failed_once and (now := self.latest_version(nb)) != before and now is not None:
                log.warning("%s: the push failed, but Kaggle has a new version %d: following it", nb.name, now)
                url = f"https://www.kaggle.com/code/{nb.ref}"
                none: list[str] = []
                return SimpleNamespace(
                    version_number=now,
                    url=url,
                    error="",
                    invalid_dataset_sources=none,
                    invalid_competition_sources=none,
                    invalid_kernel_sources=none,
                )
            failed_once = True  # call_api calls again only after a failure that may pass
            return self.api.kernels_push(str(folder), acc=self.opts.accelerator or None)

        return call_api(push_or_find, f"push of notebook {nb.ref}", self.opts.kaggle)

    def latest_version(self, nb: Notebook) -> int | None:
        """The notebook's latest version on Kaggle; None when it was never pushed."""
        import requests
        from kagglesdk.kernels.types.kernels_api_service import ApiGetKernelRequest

        request = ApiGetKernelRequest()
        request.user_name, request.kernel_slug = nb.ref.split("/")

        def get() -> int | None:
            try:
                with self.api.build_kaggle_client() as kaggle:
                    return kaggle.kernels.kernels_api_client.get_kernel(request).metadata.current_version_number
            except requests.HTTPError as e:
                if status_of(e) == 404:
                    return None
                raise

        return call_api(get, f"latest version of notebook {nb.ref}", self.opts.kaggle)

    def record_push(self, nb: Notebook, code: code_dataset.CodeDataset, url: str) -> None:
        """The pushed session in the ledger, queued: a later sweep follows it from there."""
        entry = ledger.read(self.opts.ledger).get(nb.ref, {})
        sessions = [*entry.get("sessions", []), {"version": nb.version, "pushed": ledger.now(), "status": "queued"}]
        ledger.update(
            self.opts.ledger,
            nb.ref,
            job=nb.job.overrides,
            job_dir=str(nb.job.job_dir),
            url=url,
            runs=nb.runs,
            home=nb.home,
            code=code.ref,
            source=code.source_hash,
            version=nb.version,
            attempt_sessions=nb.session,
            sessions=sessions,
            status="queued",
            error="",
        )

    def poll(self, nb: Notebook) -> bool:
        """Check the notebook's status; at the end of a session, fetch and decide. Whether it changed."""
        try:
            got = call_api(lambda: self.api.kernels_status(nb.kernel), f"status of {nb.kernel}", self.opts.kaggle)
        except PipelineError as e:  # it goes on on Kaggle: the ledger keeps it as it was, to follow later
            nb.error = f"{e}; notebook {nb.ref} goes on on Kaggle: run the same command again to follow it"
            log.error("%s: %s", nb.name, nb.error)
            return True
        status = got.status.name.lower()
        if status == nb.status:
            return False
        log.info("notebook %s (session %d, version %s): %s", nb.ref, nb.session, nb.version, status)
        nb.status = status
        self.record_session(nb, status=status)
        if status in TERMINAL:
            self.finish(nb, status, got.failure_message or "")
        else:
            ledger.update(self.opts.ledger, nb.ref, status="running" if status == "running" else "queued")
        return True

    def finish(self, nb: Notebook, status: str, failure: str) -> None:
        """A session ended: fetch its prediction files, logs and session record, then done, resume or fail."""
        out = nb.folder() / "output"
        shutil.rmtree(out, ignore_errors=True)
        missing = [name for name in nb.runs if name not in nb.home]
        runs = "|".join(re.escape(name) for name in missing) or "(?!)"
        pattern = rf"^outputs/(preds/({runs})\.pt|kernel-session\.json|job/config\.yaml|run/[^/]+\.(log|txt))$"
        try:
            call_api(
                lambda: self.api.kernels_output(nb.kernel, path=str(out), file_pattern=pattern, force=True, quiet=True),
                f"output of notebook {nb.kernel}",
                self.opts.kaggle,
            )
        except PipelineError as e:  # kept as ended: the same command fetches it again
            nb.error = f"notebook {nb.ref} ended ({status}), but its output did not come home: {e}"
            log.error("%s: %s", nb.name, nb.error)
            ledger.update(self.opts.ledger, nb.ref, status=ENDED, error=nb.error)
            return
        record = _read_json(out / "outputs" / "kernel-session.json")
        self.record_session(nb, seconds=record.get("seconds"), state=record.get("state"))
        try:
            self.bring_home(nb, out / "outputs" / "preds")
        except PipelineError as e:
            self.fail(nb, f"sent back a prediction file that cannot be used: {e}", out)
            return
        state = record.get("state")
        if status == "complete" and state == "complete" and len(nb.home) == len(nb.runs):
            nb.done = True
            ledger.update(self.opts.ledger, nb.ref, status="complete")
            log.info("notebook %s: complete; %d prediction file(s) home in %s", nb.ref, len(nb.runs), nb.preds)
        elif status == "complete" and state == "stopped":
            log.info("notebook %s: session %d stopped by its time budget; resuming from its output", nb.ref, nb.session)
            ledger.update(self.opts.ledger, nb.ref, status=STOPPED)
            nb.resume, nb.version = True, None
            self.push(nb)
        elif status == "complete" and state == "complete":
            self.fail(nb, f"finished without {', '.join(n for n in nb.runs if n not in nb.home)}", out)
        else:
            what = {"error": "failed", "complete": "failed"}.get(status, "was cancelled on Kaggle")
            self.fail(nb, what + (f" ({failure})" if failure else ""), out)

    def bring_home(self, nb: Notebook, folder: Path) -> None:
        """Fetched prediction files, read with the safe loader and checked against the competition and the
        job here, moved into paths.preds (atomically) and added to nb.home. One that fails a check is moved
        aside into <paths.outputs>/kaggle_rejected/<notebook>/, never blended: PipelineError names them."""
        refused = []
        for name in nb.runs:
            src = folder / f"{name}.pt"
            if name in nb.home or not src.is_file():
                continue
            why = unusable(nb, name, src)
            dest = nb.preds if not why else Path(nb.job.cfg.paths.outputs) / "kaggle_rejected" / nb.slug
            with atomic_path(dest / f"{name}.pt") as tmp:
                shutil.copyfile(src, tmp)
            src.unlink()
            if why:
                refused.append(f"{why}: kept aside in {dest}, not blended")
            else:
                nb.home.append(name)
        ledger.update(self.opts.ledger, nb.ref, home=nb.home)
        if refused:
            raise PipelineError("; ".join(refused))

    def record_session(self, nb: Notebook, **fields: Any) -> None:
        entry = ledger.read(self.opts.ledger).get(nb.ref)
        if entry and entry["sessions"]:
            sessions = entry["sessions"]
            session = next((s for s in reversed(sessions) if s.get("version") == nb.version), sessions[-1])
            session.update({k: v for k, v in fields.items() if v is not None})
            ledger.update(self.opts.ledger, nb.ref, sessions=sessions)

    def fail(self, nb: Notebook, what: str, out: Path | None = None, hint: str = "") -> bool:
        """Report the notebook as failed, with the end of its log when it sent one back. Returns False."""
        where = f" (session {nb.session}, version {nb.version})" if nb.version else ""
        logs = sorted(out.glob("*.log")) if out and out.is_dir() else []
        tail = log_tail(logs[0]) if logs else []
        gist = next((line for line in reversed(tail) if line.startswith("error:")), tail[-1] if tail else "")
        nb.error = f"notebook {nb.ref}{where} {what}" + (f": {gist}" if gist else "") + (f"; {hint}" if hint else "")
        if logs:
            nb.error += f" (log: {logs[0]})"
            lines = textwrap.indent("\n".join(tail), "    ")
            log.error("notebook %s%s %s; the end of its log:\n%s", nb.ref, where, what, lines)
        log.error("%s: %s", nb.name, nb.error)
        ledger.update(self.opts.ledger, nb.ref, status="failed", error=nb.error)
        return False


def unusable(nb: Notebook, name: str, path: Path) -> str:
    """Why a fetched prediction file must not be blended ("" when it may): unreadable, another competition,
    or another run hash than the job's (the notebook trained something else than what was pushed)."""
    from pipeline.predictions import load

    try:
        preds = load(path)
    except PipelineError as e:
        return f"{name}.pt cannot be read ({e})"
    if preds.vocab != list(nb.comp.vocab) or sorted(preds.test_ids) != sorted(nb.comp.test_ids):
        return (
            f"{name}.pt does not match the competition in {nb.comp.root}: its labels or test images differ "
            f"(is data.root {nb.competition}?)"
        )
    if preds.run_hash != nb.runs[name]:
        return f"{name}.pt has run hash {preds.run_hash}, not the job's {nb.runs[name]} (it trained another config)"
    return ""


def refusal(response: Any, competition: str) -> str:
    """Why Kaggle refused a push ("" when it did not): its error, or the sources it cannot attach, with
    what to do about a competition whose rules are not accepted."""
    refused = response.error or "; ".join(
        f"cannot attach {', '.join(bad)}"
        for bad in (
            response.invalid_dataset_sources,
            response.invalid_competition_sources,
            response.invalid_kernel_sources,
        )
        if bad
    )
    if refused and response.invalid_competition_sources:
        refused += f" (accept the rules at https://www.kaggle.com/competitions/{competition}/rules)"
    return refused


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> list[str]:
    """The last lines of a notebook's log. Kaggle serves it as a JSON list of {stream_name, time, data};
    a plain text log is read as it is. Progress bars keep only their last state."""
    text = path.read_text(errors="replace")
    with contextlib.suppress(ValueError, AttributeError, TypeError):
        text = "".join(event.get("data", "") for event in json.loads(text))
    found = [line.split("\r")[-1].rstrip() for line in text.split("\n")]  # not splitlines: it splits at \r
    return [line for line in found if line.strip()][-lines:]


def refresh(cfg: Any) -> str:
    """Kaggle's status of the notebooks the ledger has as queued or running, recorded; and the account's GPU
    quota. No request when nothing is unfinished."""
    path = cfg.kernels.ledger
    unfinished = [e for e in ledger.read(path).values() if e.get("status") in ledger.ACTIVE and e.get("version")]
    if not unfinished:
        return ""
    api = connect(cfg.kaggle, "")
    for entry in unfinished:
        kernel = f"{entry['ref']}/{entry['version']}"
        got = call_api(lambda k=kernel: api.kernels_status(k), f"status of notebook {kernel}", cfg.kaggle)
        status = got.status.name.lower()
        if status in TERMINAL:
            status = ENDED  # a sweep with the same jobs fetches it (and resumes it if its budget stopped it)
        elif status != "running":
            status = "queued"
        ledger.update(path, entry["ref"], status=status)
    quota = call_api(api.quota_view, "GPU quota", cfg.kaggle).gpu_quota
    if quota is None or quota.total_time_allowed is None:
        return ""
    used, total = quota.time_used.total_seconds() / 3600, quota.total_time_allowed.total_seconds() / 3600
    return f"Kaggle GPU quota: {used:.1f} of {total:.1f} hours used this week"


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
