"""``kubectl stampede``'s rendering by value (its run against the real control plane is in
tests/controller/test_operator.py::test_kubectl_stampede_status_and_audit)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from stampede_dev import kubectl_plugin

NOW = datetime(2026, 11, 27, 10, 5, tzinfo=UTC)
FS = {
    "metadata": {"name": "sneaker-drop", "namespace": "shop"},
    "spec": {
        "product": {"sku": "SNKR-1", "price": "199.00", "currency": "USD"},
        "stock": 5000,
        "window": {"start": "2026-11-27T10:00:00Z", "end": "2026-11-27T11:00:00Z"},
    },
    "status": {
        "phase": "Live", "phaseReason": "Open until 2026-11-27T11:00:00Z.", "stock": 5000, "remaining": 4990,
        "reserved": 4, "confirmed": 6, "compensated": 0, "drift": 0, "settleLagMs": 120,
        "lastReconcileTime": "2026-11-27T10:04:50Z",
        "api": {"desired": 4, "ready": 4, "available": 4},
        "workers": {"desired": 3, "ready": 2, "available": 2, "reason": "scaled up: settle lag 1200 ms"},
        "conditions": [
            {"type": "Ready", "status": "False", "reason": "WorkloadsUnavailable", "message": "workers: 2/3 available",
             "lastTransitionTime": "2026-11-27T10:04:00Z"},
            {"type": "Drifted", "status": "False", "reason": "NoDrift", "message": "Redis and the ledger agree",
             "lastTransitionTime": "2026-11-27T09:00:00Z"},
        ],
    },
}  # fmt: skip


def event(reason: str, at: str, message: str) -> dict[str, object]:
    return {"metadata": {}, "type": "Normal", "reason": reason, "lastTimestamp": at, "message": message}


def test_status_at_a_glance() -> None:
    events = [event(f"E{i}", f"2026-11-27T09:5{i}:00Z", f"event {i}") for i in range(10)]  # more than are shown
    out = kubectl_plugin.render_status(FS, events, NOW)
    assert out.splitlines()[:11] == [
        "FlashSale shop/sneaker-drop: SNKR-1 at 199.00 USD",
        "  Phase:      Live - Open until 2026-11-27T11:00:00Z.",
        "  Ready:      False (WorkloadsUnavailable: workers: 2/3 available)",
        "  Window:     2026-11-27T10:00:00Z .. 2026-11-27T11:00:00Z",
        "  Stock:      5000  remaining 4990  reserved 4  confirmed 6  compensated 0",
        "  Settle lag: 120 ms (oldest pending reservation)",
        "  Drift:      0",
        "  API:        4/4 available, 4 ready",
        "  Workers:    2/3 available, 2 ready (scaled up: settle lag 1200 ms)",
        "  Reconciled: 10s ago",
        "",
    ]
    assert "  Drifted     False    NoDrift                 1h    Redis and the ledger agree" in out
    shown = out.split("Last events:\n")[1].splitlines()
    assert len(shown) == kubectl_plugin.EVENTS_SHOWN
    assert shown[0].split() == ["13m", "Normal", "E2", "event", "2"]  # the last eight, oldest first
    assert shown[-1].split() == ["6m", "Normal", "E9", "event", "9"]


def test_a_sale_not_reconciled_yet() -> None:
    out = kubectl_plugin.render_status({"metadata": {"name": "x", "namespace": "d"}, "spec": {}}, [], NOW)
    assert "Phase:      Pending - not reconciled yet" in out
    assert "Ready:      Unknown" in out
    assert out.endswith("Last events:\n  (none)")


def test_bad_names_are_refused_before_kubectl_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBECTL", "/nonexistent/kubectl")  # never reached
    assert kubectl_plugin.main(["-n", "shop", "status", "Bad_Name"]) == 1
