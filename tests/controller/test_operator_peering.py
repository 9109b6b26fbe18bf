"""Leader election: two operator replicas with distinct priorities share a kopf peering object; only the
leader acts, and when it dies (SIGKILL, no goodbye) the standby takes over once the leader's keep-alive
expires."""

from __future__ import annotations

import json
import signal
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from stampede.settings import load
from stampede_operator.peering import build_peering_object
from stampede_operator.settings import OperatorSettings

from .test_operator import create_sale, eventually, status_where

if TYPE_CHECKING:
    from tests.conftest import ControlPlane
    from tests.controller.conftest import OperatorProcess, OperatorStarter

pytestmark = [pytest.mark.k8s, pytest.mark.redis, pytest.mark.postgres, pytest.mark.slow]

LIFETIME_S = 6


@pytest.fixture(scope="module")
def peering_namespace(control_plane: ControlPlane, kopf_peering_crds: None) -> Iterator[str]:
    name = f"peer-{uuid.uuid4().hex[:8]}"
    control_plane.kubectl("create", "namespace", name, check=True)
    peering = build_peering_object(load(OperatorSettings, env={}), name)
    control_plane.kubectl("apply", "-f", "-", input=json.dumps(peering), check=True)
    yield name
    control_plane.kubectl("delete", "flashsales.stampede.dev", "--all", "-n", name, "--wait=false")
    control_plane.kubectl("delete", "namespace", name, "--wait=false")


def acted_on(op: OperatorProcess, sale: str) -> bool:
    """Whether the operator's log shows it handled the sale."""
    for line in op.log().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if rec.get("sale") == sale or rec.get("k8s_ref", {}).get("name") == sale:
            return True
    return False


async def test_only_the_leader_acts_and_the_standby_takes_over(
    control_plane: ControlPlane, start_operator: OperatorStarter, peering_namespace: str
) -> None:
    cp, ns = control_plane, peering_namespace
    lifetime = str(LIFETIME_S)
    leader = start_operator(ns, "leader", peering_priority="200", peering_lifetime_s=lifetime)
    standby = start_operator(ns, "standby", peering_priority="100", peering_lifetime_s=lifetime)

    # Both keep their record alive in the peering object; only the leader resumes from the initial pause.
    def both_peered() -> None:
        status = cp.kubectl_json("get", "kopfpeering", "stampede", "-n", ns).get("status", {})
        assert sorted(peer["priority"] for peer in status.values()) == [100, 200]
        assert "Resuming operations" in leader.log()

    await eventually(both_peered, within=20)

    first = f"lead-{uuid.uuid4().hex[:6]}"
    create_sale(cp, ns, first, grace=600)
    await eventually(status_where(cp, ns, first, phase="Live"))
    assert acted_on(leader, first)
    assert not acted_on(standby, first)
    assert "Resuming operations" not in standby.log()

    leader.stop(signal.SIGKILL)
    second = f"next-{uuid.uuid4().hex[:6]}"
    create_sale(cp, ns, second, grace=600)
    # The dead leader is believed alive for its lifetime; then the standby resumes and handles both sales.
    await eventually(status_where(cp, ns, second, phase="Live"), within=LIFETIME_S + 30)
    assert acted_on(standby, second)
    assert "Resuming operations" in standby.log()
