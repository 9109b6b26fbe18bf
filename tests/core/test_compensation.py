"""The one compensation step (``stampede.compensation``), and the pure planner that stands apart from the
adapters. The ledger and Redis are fakes here: the rule under test is pure (release only where the
ledger move won); the real stores run it in tests/worker and tests/controller."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterable, Sequence

from stampede.compensation import compensate
from stampede.domain import Outcome, Settled, Settlement
from stampede.vocabulary import Reason, Status


class FakeLedger:
    def __init__(self, final: dict[str, Status]) -> None:
        self.final = final

    async def settle(self, settlements: Sequence[Settlement], *, attempt: int) -> list[Settled]:
        out = []
        for s in settlements:
            was = self.final.get(s.reservation_id, Status.PENDING)
            moved = was == Status.PENDING
            self.final[s.reservation_id] = s.outcome if moved else was
            out.append(Settled(s.reservation_id, s.sale or "s", 1, self.final[s.reservation_id], moved, None))
        return out


class FakeStock:
    def __init__(self) -> None:
        self.released: list[tuple[str, str]] = []

    async def release(self, sale: str, reservation_ids: Iterable[str]) -> dict[str, Outcome]:
        ids = list(reservation_ids)
        self.released += [(sale, rid) for rid in ids]
        return dict.fromkeys(ids, Outcome.RELEASED)


async def test_compensate_releases_only_where_the_ledger_move_won() -> None:
    ledger, stock = FakeLedger({"b": Status.CONFIRMED, "c": Status.COMPENSATED}), FakeStock()
    done = await compensate(ledger, stock, ["a", "b", "c"], Reason.JOB_FAILED, sale="s")
    assert done.won == ["a"]
    assert stock.released == [("s", "a")]
    assert done.released == {"s": {"a": Outcome.RELEASED}}
    assert [r.status for r in done.rows] == [Status.COMPENSATED, Status.CONFIRMED, Status.COMPENSATED]
    again = await compensate(ledger, stock, ["a"], Reason.JOB_FAILED, sale="s")
    assert again.won == [] and stock.released == [("s", "a")]
    assert ledger.final["a"] == "compensated"  # the wire value of the status is its plain string


async def test_nothing_listed_touches_nothing() -> None:
    stock = FakeStock()
    done = await compensate(FakeLedger({}), stock, [], Reason.SALE_DELETED, sale="s")
    assert (done.rows, done.released, stock.released) == ([], {}, [])


def test_the_planner_imports_no_adapter() -> None:
    code = (
        "import sys, stampede.healing, stampede.audit; "
        "print(sorted(m for m in sys.modules if m in {'stampede.stock', 'stampede.ledger', 'stampede.queue', "
        "'redis', 'psycopg', 'psycopg_pool', 'procrastinate'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
