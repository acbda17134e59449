"""What a tracker's listeners share: a tracker that fails is one warning, never a failed run."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from pipeline.errors import one_line

log = logging.getLogger(__name__)


class Guarded:
    """What a tracker's listener shares: its first failure is one warning and the tracker is left alone
    for the rest of the job (a server that is down would otherwise cost a timeout at every epoch)."""

    what = "the tracker"
    down = False

    def guarded(self, doing: str, call: Callable[[], Any]) -> Any:
        """call(), or None once the tracker failed; a failure warns once."""
        if self.down:
            return None
        try:
            return call()
        except Exception as e:  # any failure of the tracker: the run trains on, its own files hold the history
            self.down = True
            log.warning(
                "%s failed while %s (%s): nothing more is logged there by this job; each run's history stays in "
                "its prediction file",
                self.what,
                doing,
                one_line(e),
            )
            return None
