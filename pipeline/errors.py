"""The one exception type for input a user can fix, and how the CLIs report it: a single line.

In a Hydra multirun (-m) a failing job must not stop the other jobs: its error is logged and returned
(a JobFailed), the sweep goes on, and the sweep's report (pipeline.launchers.report) lists what failed
and makes the command exit 2 at the end, whichever launcher ran the jobs.
"""

from __future__ import annotations

import logging
import signal
import sys
import traceback
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class PipelineError(Exception):
    """Bad input or a missing prerequisite: the message says what is wrong and what to do."""

    exit_code = 2  # what the CLI exits with; a subclass may say more (3: stopped by a time budget)


def one_line(e: BaseException) -> str:
    """The gist of an exception: fastai prefixes callback errors with a line naming the callback."""
    lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
    return f"{type(e).__name__}: {lines[-1] if lines else ''}"


class JobFailed(str):
    """What a multirun job returns instead of exiting: its one-line error, and what each of its runs
    did when the error says some runs failed (`runs`, plain data)."""

    runs: tuple[dict[str, Any], ...] = ()


def _in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def exit_on_error(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run a CLI's task: a PipelineError becomes one line on stderr and exit code 2, or the error's own
    exit_code (in a multirun, a logged line and a JobFailed result unless the error `ends_process`, as a
    DDP rank's failure must, and so is any other exception, its
    traceback kept in the job's folder); SIGTERM interrupts like Ctrl-C, so that temporary files are
    cleaned up and finished files kept. Under SLURM this replaces submitit's handler that ignores
    SIGTERM, and leaves its USR2 handler alone: at a time-out, USR2 comes first and submitit requeues
    the job before SLURM's SIGTERM ends it here; on a preemption the job ends cleanly and SLURM requeues
    it. The requeued job resumes from the run's epoch checkpoint (tests/test_launchers.py)."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        signal.signal(signal.SIGTERM, _interrupt)
        try:
            return fn(*args, **kwargs)
        except PipelineError as e:
            if _in_multirun() and not getattr(e, "ends_process", False):
                log.error("error: %s", e)
                failed = JobFailed(str(e))
                failed.runs = tuple(getattr(e, "runs", ()))
                return failed
            print(f"error: {e}", file=sys.stderr)
            sys.exit(e.exit_code)
        except Exception as e:
            if not _in_multirun():
                raise
            log.error("error: %s%s", one_line(e), _save_traceback())
            return JobFailed(one_line(e))
        except KeyboardInterrupt:
            print("interrupted: finished files are kept; run the same command again to continue", file=sys.stderr)
            sys.exit(130)

    return wrapper


def _save_traceback() -> str:
    """Keep the traceback of the exception being handled in the job's folder; where it went."""
    from hydra.core.hydra_config import HydraConfig

    path = Path(HydraConfig.get().runtime.output_dir) / "traceback.txt"
    path.write_text(traceback.format_exc())
    return f" (traceback: {path})"
