"""hack/chromium.sh, which `make browser` (and so `make test`) runs: idempotent, and either a Chromium the
browser tests can drive or a plain reason why there is none."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "hack" / "chromium.sh"


def test_a_second_run_changes_nothing_and_names_the_browser_or_why_not() -> None:
    first = subprocess.run([SCRIPT], capture_output=True, text=True, timeout=1200, check=False)
    assert first.returncode == 0, first.stderr
    started = time.monotonic()
    again = subprocess.run([SCRIPT], capture_output=True, text=True, timeout=60, check=False)
    assert again.returncode == 0, again.stderr
    found = subprocess.run([SCRIPT, "path"], capture_output=True, text=True, timeout=10, check=False)
    if found.returncode == 0:
        path = found.stdout.strip()
        assert os.access(path, os.X_OK), path
        assert again.stderr == "" and time.monotonic() - started < 30  # installed: nothing to do
        version = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=60, check=False)
        assert "Chromium" in version.stdout, version.stdout + version.stderr
    else:
        assert "browser tests skip" in again.stderr, again.stderr  # the reason is said, not swallowed


def test_another_chromium_can_be_named() -> None:
    found = subprocess.run(
        [SCRIPT, "path"], env={**os.environ, "STAMPEDE_CHROMIUM": "/bin/true"}, capture_output=True, text=True,
        timeout=10, check=False,
    )  # fmt: skip
    assert (found.returncode, found.stdout.strip()) == (0, "/bin/true")
