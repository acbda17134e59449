#!/usr/bin/env bash
# The test suite, after the same set-up as the demo. Extra arguments go to pytest (e.g. -k blend).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/setup.sh

.venv/bin/ruff check .
.venv/bin/python -m pytest "$@"
