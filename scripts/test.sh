#!/usr/bin/env bash
# Install everything the tests need on a fresh Debian or Ubuntu machine (as root), then run them.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -k config`. With `--fast` first, only
# the fast tier runs: the tests marked neither ray, subprocess nor browser (pyproject.toml), so
# neither Prometheus nor Chromium is installed.
# Run from a virtualenv, it installs into that one; otherwise into .venv/ here, made once with
# the python3 on PATH (Debian's and Ubuntu's own refuses pip outside a virtualenv: PEP 668).
set -euo pipefail
cd "$(dirname "$0")/.."

tier=()
if [ "${1:-}" = --fast ]; then
  shift
  tier=(-m "not (ray or subprocess or browser)")
fi

apt_install() {
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

if ! python3 -c 'import sys; sys.exit(sys.prefix == sys.base_prefix)'; then
  if [ ! -x .venv/bin/pip ]; then
    # Debian and Ubuntu make virtualenvs once python3-venv is installed.
    python3 -c 'import ensurepip, venv' 2>/dev/null || apt_install python3-venv
    python3 -m venv .venv
  fi
  # shellcheck disable=SC1091
  . .venv/bin/activate
fi

# The CPU build of torch first: a bare `torch` requirement can pull a multi-GB CUDA build.
python3 -m pip install --quiet --disable-pip-version-check torch==2.13.0
python3 -m pip install --quiet --disable-pip-version-check -e '.[test]'
# Debian's prometheus: promtool checks the exposition and the rules; the server runs the
# end-to-end test of the dashboards and alerts. Debian's chromium opens the HTML report.
if [ ${#tier[@]} -eq 0 ] && { ! command -v promtool >/dev/null 2>&1 \
  || ! command -v prometheus >/dev/null 2>&1 || ! command -v chromium >/dev/null 2>&1; }; then
  apt_install prometheus chromium
fi

ruff check .
ruff format --check .
python3 -m pytest "${tier[@]}" "$@"
