"""The request-metrics tally by value: what it folds into Prometheus children equals what observing
each request directly would have written (a unit test of pure logic, real prometheus-client objects)."""

from __future__ import annotations

import random

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from stampede_api.tally import Tally

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 1.0)


def _samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): round(s.value, 6)  # sums add in another order
        for m in registry.collect()
        for s in m.samples
        if not s.name.endswith("_created")
    }


def _metrics(registry: CollectorRegistry) -> tuple[Counter, Histogram, Gauge]:
    return (
        Counter("req", "r", ["status"], registry=registry),
        Histogram("lat", "l", ["route"], buckets=BUCKETS, registry=registry),
        Gauge("left", "g", ["sale"], registry=registry),
    )


def test_flush_writes_what_direct_calls_would_have() -> None:
    rng = random.Random(3)
    direct, tallied = CollectorRegistry(), CollectorRegistry()
    dc, dh, dg = _metrics(direct)
    tc, th, tg = _metrics(tallied)
    tally = Tally()
    values = [rng.choice([0.0005, 0.001, 0.0025, 0.003, 0.05, 0.7, 2.0, 30.0]) for _ in range(500)]
    for i, v in enumerate(values):
        status = ("202", "409")[i % 2]
        dc.labels(status).inc()
        dh.labels("/buy").observe(v)
        dg.labels("s").set(len(values) - i)
        tally.inc(tc.labels(status))
        tally.observe(th.labels("/buy"), v)
        tally.set(tg.labels("s"), len(values) - i)
        if i == 200:
            tally.flush()  # a flush mid-way changes nothing about the totals
    assert _samples(direct) != _samples(tallied)  # not yet flushed
    tally.flush()
    assert _samples(direct) == _samples(tallied)
    tally.flush()  # nothing pending: nothing written twice
    assert _samples(direct) == _samples(tallied)
