"""The audit is pure: each invariant of docs/architecture.md has a case that breaks it."""

from __future__ import annotations

from stampede.audit import RedisCounts, Row, audit


def rows(*spec: tuple[str, str, int, str]) -> list[Row]:
    return [Row(*s) for s in spec]


def test_clean_sale() -> None:
    r = audit(
        "s",
        stock=3,
        per_user_limit=1,
        accepted=["a", "b"],
        rows=rows(("a", "u1", 1, "confirmed"), ("b", "u2", 1, "compensated")),
        redis=RedisCounts(total=3, remaining=2, pending=0, confirmed=1),
    )
    assert r.ok, r.render()
    assert (r.confirmed_units, r.returned_units, r.drift) == (1, 1, 0)
    assert "CLEAN" in r.render()


def test_each_violation_is_reported() -> None:
    r = audit(
        "s",
        stock=1,
        per_user_limit=1,
        accepted=["a", "b", "lost", "a"],
        rows=rows(
            ("a", "u1", 1, "confirmed"), ("b", "u1", 1, "pending"), ("b", "u1", 1, "pending"), ("c", "u2", 1, "weird")
        ),
        redis=RedisCounts(total=2, remaining=0, pending=0, confirmed=1),
    )
    assert not r.ok
    text = "\n".join(r.violations)
    for needle in (
        "recorded more than once",
        "acknowledged to two",
        "have no record",
        "unknown states",
        "oversold by",
        "over the limit",
        "still pending",
        "redis total 2 != stock 1",
        "redis unbalanced",
        "drift",
    ):
        assert needle in text, needle
    assert (r.lost, r.oversold, r.over_limit_users) == (1, 2, 1)


def test_mid_sale_audit_allows_pending() -> None:
    r = audit(
        "s",
        stock=2,
        per_user_limit=1,
        accepted=["a"],
        rows=rows(("a", "u", 1, "pending")),
        redis=RedisCounts(2, 1, 1, 0),
        settled=False,
    )
    assert r.ok
    assert r.unsettled == 1


def test_acknowledged_count_without_ids() -> None:
    ok = audit(
        "s",
        stock=5,
        per_user_limit=1,
        accepted=(),
        acknowledged=2,
        rows=rows(("a", "u1", 1, "confirmed"), ("b", "u2", 1, "compensated"), ("c", "u3", 1, "confirmed")),
    )
    assert ok.ok
    assert ok.accepted == 2
    lost = audit(
        "s",
        stock=5,
        per_user_limit=1,
        accepted=(),
        acknowledged=4,
        rows=rows(
            ("a", "u1", 1, "confirmed"),
        ),
    )
    assert lost.lost == 3
    assert not lost.ok


def test_acknowledged_but_recorded_lost_before_ack_is_a_violation() -> None:
    """`lost_before_ack` means no 202 was sent; a 202'd id with that record is a cancelled acknowledgement."""
    recorded = [
        Row("a", "u1", 1, "confirmed"),
        Row("b", "u2", 1, "compensated", "lost_before_ack"),
        Row("c", "u3", 1, "compensated", "lost_before_ack"),
    ]
    redis = RedisCounts(total=3, remaining=2, pending=0, confirmed=1)
    # b was never acknowledged: the reconciler's healing of a crash before the 202 is clean.
    clean = audit("s", stock=3, per_user_limit=1, accepted=["a"], rows=recorded, redis=redis)
    assert clean.ok, clean.render()
    # c got a 202 and was then given back as never acknowledged: a broken promise.
    broken = audit("s", stock=3, per_user_limit=1, accepted=["a", "c"], rows=recorded, redis=redis)
    assert broken.violations == ["1 acknowledged reservations were recorded lost_before_ack (e.g. c)"]
    # Any other reason of giving back (a settle job that failed) after a 202 is the normal compensation path.
    paid_back = [Row("a", "u1", 1, "compensated", "job_failed")]
    ok = audit("s", stock=1, per_user_limit=1, accepted=["a"], rows=paid_back)
    assert ok.ok, ok.render()
