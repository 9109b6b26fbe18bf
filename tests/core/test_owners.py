"""One owner per store: only ``Ledger`` (core/stampede/ledger.py) touches the ledger's connection pool and
only ``StockEngine`` (core/stampede/stock.py) touches the Redis client. Everything else asks them by name
(a method, SQL in core/stampede/sql/, Lua in lua/). Import contracts cannot see attributes, so this scans
the source of every part, the tests included (their one reach underneath is tests/stores.py)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PARTS = ("core", "app", "worker", "operator", "dev", "bench", "hack", "tests")
OWNERS = {ROOT / "core/stampede/ledger.py", ROOT / "core/stampede/stock.py", ROOT / "tests/stores.py"}
PRIVATE = {"_pool", "_client"}
PUBLIC = {"pool", "client"}
# What a Ledger or a StockEngine is called where it is used (ledger, own_ledger, deps.stock, engine, ...).
HOLDER = re.compile(r"ledger|stock|engine", re.IGNORECASE)


def reaches(source: str) -> list[str]:
    """Every place in ``source`` that touches a store behind its owner, as 'line: expression'."""
    found: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute):
            holder = ast.unparse(node.value)
            if (node.attr in PRIVATE and holder != "self") or (node.attr in PUBLIC and HOLDER.search(holder)):
                found.append(f"{node.lineno}: {ast.unparse(node)}")
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in {"getattr", "setattr", "hasattr"}
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
            and node.args[1].value in PRIVATE | PUBLIC
        ):
            found.append(f"{node.lineno}: {ast.unparse(node)}")
    return found


def test_no_part_touches_a_store_behind_its_owner() -> None:
    offenders = {
        str(path.relative_to(ROOT)): hits
        for part in PARTS
        for path in sorted((ROOT / part).rglob("*.py"))
        if path not in OWNERS and (hits := reaches(path.read_text(encoding="utf-8")))
    }
    assert offenders == {}


def test_the_scan_sees_each_way_in() -> None:
    source = """
async def f(ledger, deps, stock, engine, s):
    await ledger.pool.connection()
    await deps.ledger._pool.close()
    await s.stock.client.ping()
    await engine._client.flushdb()
    getattr(stock, "_client")
    await ledger.settle([], attempt=0)
    self_client = s.k8s.client
"""
    assert sorted(int(hit.split(":")[0]) for hit in reaches(source)) == [3, 4, 5, 6, 7]
