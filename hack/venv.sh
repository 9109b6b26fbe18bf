#!/usr/bin/env bash
# Creates .venv and installs the project with every component and the dev tools.
# Re-runs only when pyproject.toml changes (a stamp keyed by its hash), so later calls take a second.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
stamp=.venv/.stamp-$(sha256sum pyproject.toml | cut -c1-16)
if [ -f "$stamp" ]; then exit 0; fi
if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
echo "==> installing stampede and its dependencies into .venv"
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[api,operator,dev]"
rm -f .venv/.stamp-*
touch "$stamp"
echo "==> .venv ready"
