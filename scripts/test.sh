#!/usr/bin/env bash
# The test suite, after the same set-up as the demo. Extra arguments go to pytest (e.g. -k blend).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/setup.sh

.venv/bin/ruff check .
# two workers: most tests wait on processes, sleeps or I/O, so one worker keeps a 2-core machine half idle;
# PYTEST_WORKERS=0 runs in this process (for pdb, or -s output in order)
.venv/bin/python -m pytest -n "${PYTEST_WORKERS:-2}" --dist loadgroup "$@"
