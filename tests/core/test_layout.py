"""The layout keeps its promises: nothing shadows the standard library, the core imports no component,
components never import each other, and the Lua scripts ship inside the package."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from stampede import stock

ROOT = Path(__file__).resolve().parents[2]


def test_operator_is_still_the_stdlib_module_from_the_repo_root() -> None:
    out = subprocess.run(
        [sys.executable, "-c", "import operator; print(operator.add); import stampede_operator"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "built-in function add" in out


def test_import_contracts_hold() -> None:
    lint = Path(sys.executable).with_name("lint-imports")
    res = subprocess.run([str(lint)], cwd=ROOT, capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "0 broken" in res.stdout
    # The tooling is a part of its own: no component may import it (the core's contract forbids it too).
    assert "No component imports the tooling (stampede_dev may import every part) KEPT" in res.stdout


def test_every_script_ships_with_the_package() -> None:
    for name in stock.SCRIPTS:
        assert stock.script_source(name).startswith(f"-- {name}:")
    shipped = {p.stem for p in (ROOT / "lua").glob("*.lua")}
    assert set(stock.SCRIPTS) <= shipped
