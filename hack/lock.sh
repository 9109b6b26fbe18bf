#!/usr/bin/env bash
# Regenerate the lock files in requirements/ from pyproject.toml (`make lock`): every package pinned to one
# version with the sha256 of each of its files, for every Python the project supports (>= 3.11).
#
#   requirements/dev.txt       core + api + operator + dev extras + the build backend (make setup, CI)
#   requirements/api.txt       core + api extra       (the api image)
#   requirements/worker.txt    core                    (the worker image)
#   requirements/operator.txt  core + operator extra   (the operator image)
#
# dev.txt is resolved first and constrains the others, so a package has the same version in every file.
# Installs use plain pip: `pip install --require-hashes -r requirements/X.txt`, then the project with --no-deps.
# Set UPGRADE=1 to move every pin to the newest version pyproject.toml allows (otherwise pins are kept).
set -euo pipefail
cd "$(dirname "$0")/.."
# uv from the venv (a dev dependency), else from PATH, else the locked version installed into .venv: a change of
# pyproject.toml can make `make setup` refuse the venv until the lock follows, so locking must not need it.
UV=${UV:-.venv/bin/uv}
if [[ ! -x "$UV" ]]; then
    if command -v uv >/dev/null; then
        UV="$(command -v uv)"
    else
        [[ -x .venv/bin/python ]] || "${PYTHON:-python3}" -m venv .venv
        .venv/bin/python -m pip install -q "uv==$(sed -n 's/^uv==\([^ ]*\) .*/\1/p' requirements/dev.txt)"
    fi
fi
upgrade=()
if [[ "${UPGRADE:-0}" == 1 ]]; then upgrade=(--upgrade); fi
compile() { # OUT ARGS...
    local out="$1"
    shift
    "$UV" pip compile --quiet --universal --python-version 3.11 --generate-hashes --no-emit-index-url \
        --custom-compile-command "make lock" "${upgrade[@]}" -o "$out" "$@"
}
compile requirements/dev.txt pyproject.toml requirements/build.in --extra api --extra operator --extra dev
compile requirements/api.txt pyproject.toml requirements/build.in --extra api -c requirements/dev.txt
compile requirements/worker.txt pyproject.toml requirements/build.in --extra worker -c requirements/dev.txt
compile requirements/operator.txt pyproject.toml requirements/build.in --extra operator -c requirements/dev.txt
echo "==> requirements/ locked" >&2
