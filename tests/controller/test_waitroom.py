"""The operator and a sale's waiting room: ``spec.admission`` parsed and refused by value, then against the
real kube-apiserver, Redis and PostgreSQL the room set from the spec (its window and rate), reported in
``status.queue``, and turned off when the spec drops it."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pytest

from stampede import errors
from stampede.names import sale_id
from stampede.stock import StockEngine
from stampede.vocabulary import RedisState
from stampede_operator import builders
from stampede_operator.builders import AdmissionSpec, InvalidSpec

from . import test_operator as _op
from .test_operator import create_sale, eventually, patch_spec, status_where

# The operator module's fixtures, so this module runs its own operator in a namespace of its own.
ledger, metrics_port, op_namespace, operator = _op.ledger, _op.metrics_port, _op.op_namespace, _op.operator

if TYPE_CHECKING:
    from tests.conftest import ControlPlane
    from tests.controller.conftest import OperatorProcess


def spec(**extra: Any) -> dict[str, Any]:
    return {
        "product": {"sku": "SNKR-1"},
        "stock": 10,
        "window": {"start": "2026-11-27T10:00:00Z", "end": "2026-11-27T11:00:00Z"},
        **extra,
    }


def test_parse_spec_reads_the_admission() -> None:
    assert builders.parse_spec("drop", spec()).admission is None
    s = builders.parse_spec("drop", spec(admission={"ratePerSecond": 2.5}))
    assert s.admission == AdmissionSpec(open_queue_s=600, rate_per_s=2.5)
    s = builders.parse_spec("drop", spec(admission={"openQueueSeconds": 30, "ratePerSecond": 100}))
    assert s.admission == AdmissionSpec(open_queue_s=30, rate_per_s=100.0)
    assert s.window_start == datetime(2026, 11, 27, 10, tzinfo=UTC)


@pytest.mark.parametrize(
    "admission",
    [
        {},
        {"ratePerSecond": 0},
        {"ratePerSecond": "fast"},
        {"ratePerSecond": True},
        {"ratePerSecond": 1, "openQueueSeconds": -1},
    ],
)
def test_parse_spec_refuses_an_unusable_admission(admission: dict[str, Any]) -> None:
    with pytest.raises(InvalidSpec):
        builders.parse_spec("drop", spec(admission=admission))


@pytest.mark.k8s
@pytest.mark.redis
@pytest.mark.postgres
@pytest.mark.xdist_group("k8s")
async def test_the_operator_sets_reports_and_removes_the_room(
    control_plane: ControlPlane, operator: OperatorProcess, op_namespace: str, sale: str, stock: StockEngine
) -> None:
    cp, ns = control_plane, op_namespace
    sid = sale_id(ns, sale)
    create_sale(cp, ns, sale, stock=5, start=-2, admission={"openQueueSeconds": 60, "ratePerSecond": 1000})
    await eventually(status_where(cp, ns, sale, phase="Live"))
    fs = await eventually(lambda: _queue(cp, ns, sale, enabled=True, tickets=0))
    assert fs["status"]["queue"]["waiting"] == 0
    with pytest.raises(errors.AdmissionRequired):
        await stock.reserve(sid, "walk-in")
    for i in range(3):
        await stock.room.join(sid, f"b{i}", token_ttl_ms=60_000)
    fs = await eventually(lambda: _queue(cp, ns, sale, enabled=True, tickets=3, early=0))
    assert fs["status"]["queue"]["admitted"] <= 3
    patch_spec(cp, ns, sale, {"admission": None})
    await eventually(lambda: _queue(cp, ns, sale, enabled=False, tickets=3))
    assert (await stock.reserve(sid, "walk-in")).state == RedisState.PENDING  # no room: buy directly


def _queue(cp: ControlPlane, namespace: str, name: str, **expected: Any) -> dict[str, Any]:
    fs = cp.kubectl_json("get", "fs", name, "-n", namespace)
    queue = fs.get("status", {}).get("queue") or {}
    got = {k: queue.get(k) for k in expected}
    assert got == expected, f"status.queue {got} != {expected}"
    return fs
