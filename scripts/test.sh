#!/usr/bin/env bash
# Set up, then run every check CI runs: ruff, mypy, the import-layering contracts, the test suite.
# The suite includes tests/test_wheel.py: it builds the wheel, installs it in a fresh venv and serves from it
# (dependencies from build/wheelhouse, filled from the package index on the first run).
set -uo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh || exit 1
mkdir -p test-artifacts
# The data-layer tests run against SQLite and a real PostgreSQL, started here from Debian's packages.
eval "$(scripts/pg.sh)" || { echo "could not start PostgreSQL for the tests" >&2; exit 1; }
.venv/bin/ruff check . || exit 1
.venv/bin/ruff format --check . || exit 1
.venv/bin/mypy || exit 1
.venv/bin/lint-imports || exit 1
.venv/bin/python -m pytest -q -rs --durations=15 "$@"
rc=$?
if [ "$rc" = 5 ]; then
  echo "pytest collected no tests: that is a failure here" >&2
  exit 1
fi
exit "$rc"
