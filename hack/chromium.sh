#!/usr/bin/env bash
# Headless Chromium for the browser tests of the live sale page (Playwright drives it; it never downloads a
# browser of its own): Debian's package `chromium`, installed if missing.
#
#   hack/chromium.sh          install it if missing (idempotent: a second run returns at once)
#   hack/chromium.sh path     print the binary's path, or nothing and exit 1 when it is not installed
#
# It installs only as root with apt-get. When it cannot (not root, no apt-get, or Debian's archive unreachable)
# it says why and exits 0: the browser tests then skip, naming the missing browser, and the rest of the suite
# runs. A failed install from a reachable archive is an error. STAMPEDE_CHROMIUM names another Chromium binary to use instead.
set -euo pipefail

log() { echo "==> $*" >&2; }

find_chromium() {
  local c
  for c in "${STAMPEDE_CHROMIUM:-}" /usr/bin/chromium /usr/bin/chromium-browser; do
    [ -n "$c" ] && [ -x "$c" ] && { echo "$c"; return 0; }
  done
  return 1
}

if [ "${1:-}" = path ]; then
  find_chromium
  exit
fi

if find_chromium >/dev/null; then exit 0; fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  log "chromium is not installed and cannot be installed here (needs root and apt-get): the browser tests skip"
  log "  on Debian: sudo apt-get install chromium"
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
log "installing chromium from Debian packages (for the browser tests; a few minutes the first time)"
if ! apt-get update -qq -o DPkg::Lock::Timeout=600 >/dev/null 2>&1; then
  log "Debian's package archive is unreachable: chromium not installed, the browser tests skip"
  exit 0
fi
# Several checkouts may install at once: wait for the package lock rather than fail on it.
apt-get install -y -qq -o DPkg::Lock::Timeout=600 --no-install-recommends chromium fonts-dejavu-core >/dev/null
find_chromium >/dev/null || { echo "error: chromium installed but no binary found" >&2; exit 1; }
log "chromium ready: $(find_chromium)"
