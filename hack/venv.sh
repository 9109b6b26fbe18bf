#!/usr/bin/env bash
# Creates .venv and installs the project with every component and the dev tools, from the lock file
# requirements/dev.txt (every package at one version, each file checked against its sha256; `make lock`
# regenerates it from pyproject.toml), then the project itself, editable, without resolving anything again.
# Re-runs only when pyproject.toml or the lock changes (a stamp keyed by their hash), so later calls take a second.
# PYTHON names the interpreter; by default the first of python3, python3.13, python3.12, python3.11 that is 3.11+.
set -euo pipefail
cd "$(dirname "$0")/.."
die() { echo "error: $*" >&2; exit 1; }
LOCK=requirements/dev.txt

stamp=.venv/.stamp-$(cat pyproject.toml "$LOCK" | sha256sum | cut -c1-16)
if [ -f "$stamp" ]; then exit 0; fi

new_enough() { "$1" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; }
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  for candidate in python3 python3.13 python3.12 python3.11; do
    command -v "$candidate" >/dev/null && new_enough "$candidate" && { PY=$candidate; break; }
  done
  [ -n "$PY" ] || die "Python 3.11 or newer is needed (python3 is $(python3 --version 2>&1 || echo missing)); set PYTHON=/path/to/python3.11+"
fi
new_enough "$PY" || die "$PY is $("$PY" --version 2>&1); Python 3.11 or newer is needed"

# A .venv left without pip (Debian's python3 without python3-venv stops half-way) is made again.
if [ -x .venv/bin/python ] && ! .venv/bin/python -m pip --version >/dev/null 2>&1; then
  echo "==> .venv has no pip: making it again"
  rm -rf .venv
fi
if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv with $($PY --version)"
  if ! "$PY" -m venv .venv; then
    rm -rf .venv
    # Debian ships venv's pip bootstrap separately; as root install it, as make test installs the data stores.
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      pkg="python$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')-venv"
      echo "==> installing $pkg from Debian packages"
      DEBIAN_FRONTEND=noninteractive apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$pkg" >/dev/null
      "$PY" -m venv .venv || die "could not create .venv with $PY"
    else
      die "could not create .venv with $PY (on Debian: sudo apt-get install python3-venv)"
    fi
  fi
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
