"""A sale behind its waiting room over real HTTP: gunicorn (2 uvicorn workers) and a settle worker, a k6 spike
of buyers joining before the start (k6/waiting-room.js), bots polling as fast as they can, cheaters buying
without a token. It ends with the audit and the room's own invariants: the admission rate held within 10%,
nobody admitted before their place, no buyer admitted twice, the sale sold out only to admitted buyers."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest

from stampede.audit import audit, counts_from
from stampede.ledger import Ledger
from stampede.stock import StockEngine
from stampede.vocabulary import Status
from stampede.waitroom import admission_violations
from stampede_dev.sale_audit import k6_accepted

from .conftest import SECRET, open_sale, settled_counts

pytestmark = [pytest.mark.redis, pytest.mark.postgres, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


async def test_k6_spike_through_the_waiting_room(
    server: str, k6_bin: str, stock: StockEngine, ledger: Ledger, sale: str, tmp_path: Path
) -> None:
    units, buyers, bots, cheaters, rate = 200, 300, 10, 10, 25.0
    await open_sale(stock, ledger, sale, total=units, limit=1)
    now = await stock.now_ms()
    start = now + 12_000  # k6 starts its 320 users and they join, spread over 4 s, before the start
    await stock.room.configure(sale, on=True, open_ms=now, start_ms=start, end_ms=0, rate_per_s=rate)
    summary = tmp_path / "summary.json"
    k6 = await asyncio.create_subprocess_exec(
        k6_bin,
        "run",
        "--quiet",
        str(ROOT / "k6" / "waiting-room.js"),
        env={
            **os.environ,
            "BASE_URL": server,
            "SALE": sale,
            "JWT_SECRET": SECRET,
            "BUYERS": str(buyers),
            "BOTS": str(bots),
            "CHEATERS": str(cheaters),
            "JOIN_SECONDS": "4",
            "MAX_SECONDS": "90",
            "SUMMARY_PATH": str(summary),
            "K6_NO_USAGE_REPORT": "true",
        },
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await k6.communicate()
    text = out.decode(errors="replace")
    assert k6.returncode == 0, text[-3000:]  # thresholds: no unexpected answer, no cheater served
    print(text.strip().splitlines()[-1])
    metrics = json.loads(summary.read_text())["metrics"]
    assert metrics["queue_too_soon"]["values"]["count"] > 0  # the bots were held back
    assert metrics["cheaters_refused"]["values"]["count"] > 0

    counts = await settled_counts(ledger, sale)
    rows = await ledger.rows(sale)
    snap = await stock.snapshot(sale)
    report = audit(
        sale,
        stock=units,
        per_user_limit=1,
        accepted=[],
        acknowledged=k6_accepted(summary),
        rows=rows,
        redis=counts_from(snap),
    )
    assert report.ok, report.render()
    assert counts[Status.CONFIRMED] == units and snap.remaining == 0  # sold out

    admitted = await stock.room.admitted(sale)
    held_by = [r.user for r in rows if r.status in (Status.CONFIRMED, Status.PENDING)]
    assert admission_violations(held_by, admitted) == []
    assert not any(u.startswith("cheater-") for u in held_by)
    # Nobody, bots included, was admitted before the cursor reached their place (Redis time on both sides).
    early = [a for a in admitted if a.admitted_ms < start + a.position * 1000 / rate]
    assert early == [], early[:3]
    # The rate at which buyers were let in, from the first admission to the one that sold the sale out.
    times = sorted(a.admitted_ms for a in admitted)[:units]
    measured = (len(times) - 1) * 1000 / (times[-1] - times[0])
    print(f"admission rate {measured:.2f}/s for {rate}/s ({len(admitted)} admitted, load {os.getloadavg()[0]:.1f})")
    assert measured == pytest.approx(rate, rel=0.10)
