"""The one exception type for input a user can fix, and how the CLIs report it: a single line.

In a Hydra multirun (-m) a failing job must not stop the jobs after it: its error is logged, the
sweep goes on, and MultirunFailures makes the command exit 2 at the end, listing what failed.
"""

from __future__ import annotations

import logging
import signal
import sys
from collections.abc import Callable
from functools import wraps
from typing import Any

from hydra.experimental.callback import Callback

log = logging.getLogger(__name__)


class PipelineError(Exception):
    """Bad input or a missing prerequisite: the message says what is wrong and what to do."""

    exit_code = 2  # what the CLI exits with; a subclass may say more (3: stopped by a time budget)


def one_line(e: BaseException) -> str:
    """The gist of an exception: fastai prefixes callback errors with a line naming the callback."""
    lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
    return f"{type(e).__name__}: {lines[-1] if lines else ''}"


class JobFailed(str):
    """What a multirun job returns instead of exiting: its one-line error."""


def _in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def exit_on_error(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run a CLI's task: a PipelineError becomes one line on stderr and exit code 2, or the error's own
    exit_code (in a multirun, a logged line and a JobFailed result); SIGTERM interrupts like Ctrl-C,
    so that temporary files are cleaned up and finished files kept."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        signal.signal(signal.SIGTERM, _interrupt)
        try:
            return fn(*args, **kwargs)
        except PipelineError as e:
            if _in_multirun():
                log.error("error: %s", e)
                return JobFailed(str(e))
            print(f"error: {e}", file=sys.stderr)
            sys.exit(e.exit_code)
        except KeyboardInterrupt:
            print("interrupted: finished files are kept; run the same command again to continue", file=sys.stderr)
            sys.exit(130)

    return wrapper


class MultirunFailures(Callback):
    """Collects the jobs of a multirun that failed and exits 2 once all of them have run."""

    def __init__(self) -> None:
        self.failed: list[str] = []

    def on_job_end(self, config: Any, job_return: Any, **kwargs: Any) -> None:
        from hydra.core.utils import JobStatus

        if job_return.status == JobStatus.COMPLETED and isinstance(job_return.return_value, JobFailed):
            overrides = " ".join(config.hydra.overrides.task)
            self.failed.append(f"job {config.hydra.job.num} ({overrides}): {job_return.return_value}")

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        if self.failed:
            print(f"error: {len(self.failed)} job(s) failed:", *self.failed, sep="\n  ", file=sys.stderr)
            sys.exit(2)
