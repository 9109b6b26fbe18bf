"""spec.checkout.holdSeconds as the operator reads it, by value (no cluster): off by default, a non-negative
integer, carried on the parsed spec that ensure mirrors into the ledger."""

from __future__ import annotations

from typing import Any

import pytest

from stampede_operator import builders
from stampede_operator.builders import InvalidSpec


def spec(**extra: Any) -> dict[str, Any]:
    return {
        "product": {"sku": "SNKR-1"},
        "stock": 50,
        "window": {"start": "2026-11-27T10:00:00Z", "end": "2026-11-27T11:00:00Z"},
        **extra,
    }


def test_holds_are_off_unless_the_spec_asks() -> None:
    assert builders.parse_spec("drop", spec()).hold_seconds == 0
    assert builders.parse_spec("drop", spec(checkout={})).hold_seconds == 0
    assert builders.parse_spec("drop", spec(checkout={"holdSeconds": 600})).hold_seconds == 600


@pytest.mark.parametrize("bad", [-1, "600", 1.5, True, None])
def test_a_bad_hold_is_an_invalid_spec(bad: object) -> None:
    with pytest.raises(InvalidSpec, match=r"spec\.checkout\.holdSeconds"):
        builders.parse_spec("drop", spec(checkout={"holdSeconds": bad}))


def test_the_crd_documents_and_bounds_hold_seconds() -> None:
    from pathlib import Path

    import yaml

    root = Path(__file__).resolve().parents[2]
    crd = yaml.safe_load((root / "crds" / "flashsale.yaml").read_text())
    props = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]
    hold = props["spec"]["properties"]["checkout"]["properties"]["holdSeconds"]
    assert (hold["type"], hold["minimum"], hold["default"]) == ("integer", 0, 0) and hold["description"]
    assert {"held", "paid", "expired"} <= set(props["status"]["properties"])
