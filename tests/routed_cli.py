"""Test-only: run a pipeline CLI in a subprocess with the kaggle client routed to a loopback stand-in.

    python tests/routed_cli.py http://127.0.0.1:PORT pipeline.submit [overrides ...]

The subprocess counterpart of ``route_kaggle_api()`` (tests/kaggle_stand_in.py): it routes, then runs the
module as ``python -m`` would. Production code keeps no switch that could send the client, and the
credentials it carries, to another host.
"""

from __future__ import annotations

import contextlib
import io
import runpy
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's `pipeline`, not an installed one

from tests.kaggle_stand_in import route_kaggle_api


def main() -> None:
    base_url, module, *args = sys.argv[1:]
    with contextlib.ExitStack() as stack:
        with contextlib.redirect_stdout(io.StringIO()):  # routing imports kaggle, which authenticates and prints
            stack.enter_context(route_kaggle_api(base_url))
        sys.argv = [module, *args]
        runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
