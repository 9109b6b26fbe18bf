#!/usr/bin/env bash
# Creates .venv and installs the project with every component and the dev tools, from the lock file
# requirements/dev.txt (every package at one version, each file checked against its sha256; `make lock`
# regenerates it from pyproject.toml), then the project itself, editable, without resolving anything again.
# Re-runs only when pyproject.toml or the lock changes (a stamp keyed by their hash), so later calls take a second.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
LOCK=requirements/dev.txt
stamp=.venv/.stamp-$(cat pyproject.toml "$LOCK" | sha256sum | cut -c1-16)
if [ -f "$stamp" ]; then exit 0; fi
if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
echo "==> installing the locked dependencies ($LOCK) into .venv"
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q --require-hashes -r "$LOCK"
echo "==> installing stampede (editable)"
.venv/bin/python -m pip install -q --no-deps --no-build-isolation -e .
if ! .venv/bin/python -m pip check >/dev/null; then
  .venv/bin/python -m pip check || true
  echo "venv.sh: pyproject.toml asks for what $LOCK does not hold: run \`make lock\`, then \`make setup\`" >&2
  exit 1
fi
rm -f .venv/.stamp-*
touch "$stamp"
echo "==> .venv ready"
