"""`make help` reads well when piped, and a target's help says what its recipe runs."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_help_has_no_colour_codes_when_piped() -> None:
    out = subprocess.run(["make", "--no-print-directory", "help"], cwd=ROOT, capture_output=True, text=True, check=True)
    assert "\x1b" not in out.stdout
    lines = out.stdout.splitlines()
    assert "Main" in lines and any(re.match(r"^  test\s+set everything up", line) for line in lines)


def test_burst_help_matches_its_recipe() -> None:
    text = (ROOT / "Makefile").read_text()
    m = re.search(r"^burst:.*## (?P<help>.*)\n\t(?P<recipe>.*)$", text, re.MULTILINE)
    assert m, "no burst target"
    args = dict(re.findall(r"--(stock|buyers|attempts) (\d+)", m["recipe"]))
    stock, buyers, attempts = int(args["stock"]), int(args["buyers"]), int(args["attempts"])
    assert f"{attempts:,} reserves by {buyers:,} buyers for {stock:,} units" in m["help"]
