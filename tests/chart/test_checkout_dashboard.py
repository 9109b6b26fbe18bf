"""The chart's dashboard shows checkout holds: held, paid and expired units, checkouts by outcome, and the
workers' expiries and returns, with metrics the processes define."""

from __future__ import annotations

import json
from pathlib import Path

CHART = Path(__file__).resolve().parents[2] / "charts" / "stampede"


def test_dashboard_has_a_checkout_holds_row() -> None:
    dashboard = json.loads((CHART / "dashboards" / "stampede.json").read_text())
    titles = [p["title"] for p in dashboard["panels"]]
    assert "Checkout holds" in titles
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p.get("targets", []))
    for needle in (
        'state=~"held|paid|expired"',
        "sum by (outcome) (rate(stampede_api_checkouts_total",
        "sum by (outcome) (rate(stampede_worker_holds_total",
        'action="replay_expire"',
    ):
        assert needle in exprs, f"no panel queries {needle}"
