"""The one exception type for input a user can fix; CLIs print it as a single line."""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import wraps
from typing import Any


class PipelineError(Exception):
    """Bad input or a missing prerequisite: the message says what is wrong and what to do."""


def exit_on_error(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn a PipelineError raised by a CLI's task function into one line on stderr and exit code 2."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except PipelineError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)

    return wrapper
