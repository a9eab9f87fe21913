#!/usr/bin/env bash
# Install everything the tests need on a fresh Debian machine (as root), then run them.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -k config`.
set -euo pipefail
cd "$(dirname "$0")/.."

# The CPU build of torch first: a bare `torch` requirement can pull a multi-GB CUDA build.
python3 -m pip install --quiet --disable-pip-version-check torch==2.13.0
python3 -m pip install --quiet --disable-pip-version-check -e '.[test]'
# Debian's prometheus: promtool checks the exposition and the rules; the server runs the
# end-to-end test of the dashboards and alerts. Debian's chromium opens the HTML report.
if ! command -v promtool >/dev/null 2>&1 || ! command -v prometheus >/dev/null 2>&1 \
  || ! command -v chromium >/dev/null 2>&1; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    prometheus chromium >/dev/null
fi

ruff check .
ruff format --check .
python3 -m pytest "$@"
