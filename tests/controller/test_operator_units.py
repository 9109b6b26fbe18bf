"""The operator's pure parts by value: spec parsing, manifests, phases, conditions, peering priorities.
No cluster, Redis or PostgreSQL."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import kopf
import pytest
from kubernetes_asyncio.client import ApiClient

from stampede import errors
from stampede.ledger import Ledger
from stampede.settings import SettingsError, load
from stampede.stock import StockEngine
from stampede.vocabulary import Dependency
from stampede_operator import builders, handlers, peering, status
from stampede_operator.builders import InvalidSpec
from stampede_operator.settings import OperatorSettings

SETTINGS = load(OperatorSettings, env={})
START = datetime(2026, 11, 27, 10, tzinfo=UTC)
END = START + timedelta(hours=1)


def spec(**extra: Any) -> dict[str, Any]:
    return {
        "product": {"sku": "SNKR-1"},
        "stock": 5000,
        "window": {"start": "2026-11-27T10:00:00Z", "end": "2026-11-27T11:00:00Z"},
        **extra,
    }


def test_parse_spec_applies_defaults() -> None:
    s = builders.parse_spec("sneaker-drop", spec())
    assert (s.stock, s.per_user_limit, s.window_start, s.window_end) == (5000, 1, START, END)
    assert (s.api_replicas, s.worker_replicas, s.worker_concurrency) == (2, 2, 8)
    assert (s.interval_s, s.grace_s) == (10, 30)
    assert s.sale_config.total == 5000
    assert (s.sale_config.buyer_rate, s.sale_config.buyer_burst, s.sale_config.ip_burst) == (5.0, 10, 100)
    assert s.sale_config.buckets == 1
    assert builders.parse_spec("hot", spec(stockBuckets=6)).sale_config.buckets == 6


@pytest.mark.parametrize(
    ("name", "body", "reason"),
    [
        ("x" * 57, spec(), "NameTooLong"),
        ("9lives", spec(), "InvalidName"),
        ("ok", spec(window={"start": "2026-11-27T11:00:00Z", "end": "2026-11-27T10:00:00Z"}), "InvalidWindow"),
        ("ok", spec(window={"start": "soon", "end": "2026-11-27T10:00:00Z"}), "InvalidWindow"),
        ("ok", spec(stock=-1), "InvalidSpec"),
        ("ok", spec(stock="many"), "InvalidSpec"),
        ("ok", spec(product={}), "InvalidSpec"),
        ("ok", spec(api={"replicas": -2}), "InvalidSpec"),
        ("ok", spec(stockBuckets=0), "InvalidSpec"),
    ],
)
def test_parse_spec_refuses_what_cannot_run(name: str, body: dict[str, Any], reason: str) -> None:
    with pytest.raises(InvalidSpec) as info:
        builders.parse_spec(name, body)
    assert info.value.reason == reason


OWNER = {"metadata": {"name": "drop", "uid": "u-1"}}


def secret_keys(container: dict[str, Any]) -> set[str]:
    """The Secret keys a container's env reads (each from SETTINGS.secret_name)."""
    refs = [e["valueFrom"]["secretKeyRef"] for e in container["env"] if "valueFrom" in e]
    assert {r["name"] for r in refs} == {SETTINGS.secret_name}
    return {r["key"] for r in refs}


def test_api_deployment_by_value() -> None:
    s = builders.parse_spec("drop", spec(api={"replicas": 4}))
    d = builders.build_api_deployment(s, "shop", SETTINGS, OWNER)
    assert d["metadata"]["name"] == "drop-api"
    assert d["metadata"]["namespace"] == "shop"
    assert d["metadata"]["ownerReferences"] == [
        {"apiVersion": "stampede.dev/v1alpha1", "kind": "FlashSale", "name": "drop", "uid": "u-1",
         "controller": True, "blockOwnerDeletion": True},
    ]  # fmt: skip
    assert d["spec"]["replicas"] == 4
    assert d["spec"]["selector"]["matchLabels"] == {"stampede.dev/sale": "drop", "app.kubernetes.io/component": "api"}
    labels = d["spec"]["template"]["metadata"]["labels"]
    assert labels.items() >= d["spec"]["selector"]["matchLabels"].items()
    pod = d["spec"]["template"]["spec"]
    assert (pod["serviceAccountName"], pod["automountServiceAccountToken"]) == ("stampede-sale", False)
    (c,) = pod["containers"]
    assert c["envFrom"] is None  # removes an older envFrom on patch
    assert secret_keys(c) == {"STAMPEDE_REDIS_URL", "STAMPEDE_DATABASE_URL", "STAMPEDE_JWT_SECRET"}
    assert {"name": "STAMPEDE_SALE_NAMESPACE", "value": "shop"} in c["env"]
    assert c["ports"] == [
        {"name": "http", "containerPort": SETTINGS.api_port},
        {"name": "metrics", "containerPort": SETTINGS.api_metrics_port},
    ]
    assert {p: c[p]["httpGet"]["path"] for p in ("readinessProbe", "livenessProbe", "startupProbe")} == {
        "readinessProbe": "/readyz", "livenessProbe": "/healthz", "startupProbe": "/healthz",
    }  # fmt: skip
    # Serves on while the deleted pod leaves the Service's endpoints, inside the grace period.
    assert c["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", "5"]
    assert pod["terminationGracePeriodSeconds"] >= 5 + 15  # the pause, then the API's default graceful stop
    assert c["resources"]["requests"] == {"cpu": "500m", "memory": "256Mi"}


def _api_env(api: dict[str, Any], settings: Any = SETTINGS) -> dict[str, str]:
    d = builders.build_api_deployment(builders.parse_spec("drop", spec(api=api)), "shop", settings)
    (c,) = d["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e["value"] for e in c["env"] if "value" in e}  # secrets come by valueFrom


def test_api_pods_learn_the_proxy_header_and_hops_from_the_operator_or_the_sale() -> None:
    env = _api_env({})
    assert (env["STAMPEDE_TRUSTED_PROXY_HOPS"], env["STAMPEDE_CLIENT_IP_HEADER"]) == ("0", "X-Forwarded-For")
    assert env["STAMPEDE_METRICS_PORT"] == str(SETTINGS.api_metrics_port)
    behind = load(OperatorSettings, env={}, api_trusted_proxy_hops=1, api_client_ip_header="Forwarded")
    env = _api_env({}, behind)
    assert (env["STAMPEDE_TRUSTED_PROXY_HOPS"], env["STAMPEDE_CLIENT_IP_HEADER"]) == ("1", "Forwarded")
    env = _api_env({"trustedProxyHops": 2, "clientIpHeader": "X-Real-Chain"}, behind)
    assert (env["STAMPEDE_TRUSTED_PROXY_HOPS"], env["STAMPEDE_CLIENT_IP_HEADER"]) == ("2", "X-Real-Chain")
    env = _api_env({"trustedProxyHops": 0}, behind)
    assert env["STAMPEDE_TRUSTED_PROXY_HOPS"] == "0"
    with pytest.raises(builders.InvalidSpec):
        builders.parse_spec("drop", spec(api={"clientIpHeader": "X-Bad: header"}))


def test_worker_deployment_carries_the_concurrency() -> None:
    s = builders.parse_spec("drop", spec(workers={"replicas": 3, "concurrency": 16}))
    d = builders.build_worker_deployment(s, "shop", SETTINGS)
    assert d["metadata"]["name"] == "drop-worker"
    assert "ownerReferences" not in d["metadata"]
    assert d["spec"]["replicas"] == 3
    pod = d["spec"]["template"]["spec"]
    assert (pod["serviceAccountName"], pod["automountServiceAccountToken"]) == ("stampede-sale", False)
    (c,) = pod["containers"]
    assert {"name": "STAMPEDE_WORKER_CONCURRENCY", "value": "16"} in c["env"]
    # A worker never checks a buyer's token: it gets the data stores' URLs and not the token secret.
    assert c["envFrom"] is None
    assert secret_keys(c) == {"STAMPEDE_REDIS_URL", "STAMPEDE_DATABASE_URL"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}


def test_service_selects_the_api_pods() -> None:
    s = builders.parse_spec("drop", spec())
    svc = builders.build_api_service(s, "shop", SETTINGS, OWNER)
    assert svc["spec"]["selector"] == {"stampede.dev/sale": "drop", "app.kubernetes.io/component": "api"}
    assert svc["spec"]["ports"] == [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]


@pytest.mark.parametrize(
    ("now", "remaining", "reserved", "phase", "open_"),
    [
        (START - timedelta(seconds=1), None, None, "Scheduled", False),
        (START, 10, 0, "Live", True),
        (START, 0, 3, "Live", True),  # units only reserved may come back
        (START, 0, 0, "SoldOut", False),
        (END, 10, 0, "Ended", False),
        (END + timedelta(days=1), 0, 0, "Ended", False),
    ],
)
def test_phase_follows_window_and_stock(
    now: datetime, remaining: int | None, reserved: int | None, phase: str, open_: bool
) -> None:
    p = status.phase_for(now, START, END, remaining=remaining, reserved=reserved)
    assert (p.phase, p.open) == (phase, open_)


def test_phase_says_when_it_changes_next() -> None:
    assert status.phase_for(START - timedelta(1), START, END, remaining=None, reserved=None).next_change == START
    assert status.phase_for(START, START, END, remaining=1, reserved=0).next_change == END
    assert status.phase_for(END, START, END, remaining=1, reserved=0).next_change is None


def test_condition_transition_time_moves_only_with_its_status() -> None:
    t0, t1, t2 = START, START + timedelta(minutes=1), START + timedelta(minutes=2)
    conds = status.set_condition([], "Ready", "True", "Deployed", "ok", generation=1, now=t0)
    conds = status.set_condition(conds, "Ready", "True", "Deployed", "still ok", generation=2, now=t1)
    (ready,) = conds
    assert ready["lastTransitionTime"] == "2026-11-27T10:00:00Z"
    assert (ready["message"], ready["observedGeneration"]) == ("still ok", 2)
    conds = status.set_condition(conds, "Ready", "False", "InvalidWindow", "bad", generation=3, now=t2)
    conds = status.set_condition(conds, "Drifted", "False", "NoDrift", "", generation=3, now=t2)
    assert [c["type"] for c in conds] == ["Drifted", "Ready"]
    assert conds[1]["lastTransitionTime"] == "2026-11-27T10:02:00Z"


def test_replicas_get_distinct_priorities_from_their_pod_names() -> None:
    pods = [f"stampede-operator-7d9f8c-{suffix}" for suffix in ("abcde", "fghij", "klmno")]
    priorities = {peering.priority_for(SETTINGS, pod) for pod in pods}
    assert len(priorities) == 3
    assert all(1 <= p <= peering.PRIORITY_SPAN for p in priorities)
    assert peering.priority_for(load(OperatorSettings, env={}, peering_priority=7), pods[0]) == 7


def test_peering_manifests() -> None:
    crds = peering.build_peering_crds()
    assert [c["metadata"]["name"] for c in crds] == ["clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev"]
    assert peering.build_peering_object(SETTINGS, "shop") == {
        "apiVersion": "kopf.dev/v1", "kind": "KopfPeering", "metadata": {"name": "stampede", "namespace": "shop"},
    }  # fmt: skip


def test_operator_settings_are_validated() -> None:
    with pytest.raises(SettingsError, match="STAMPEDE_PEERING_LIFETIME_S"):
        load(OperatorSettings, env={"STAMPEDE_PEERING_LIFETIME_S": "0"})
    with pytest.raises(SettingsError, match="STAMPEDE_SECRET_NAME"):
        load(OperatorSettings, env={"STAMPEDE_SECRET_NAME": ""})


async def test_a_dependency_down_is_a_temporary_error_an_invalid_spec_is_not() -> None:
    class RedisDown:
        async def snapshot(self, sale: str) -> None:
            raise errors.DependencyUnavailable(Dependency.REDIS, "connection refused")

    # Only the stock engine is reached before the error; the other collaborators are never used.
    deps = handlers.Deps(SETTINGS, cast(StockEngine, RedisDown()), cast(Ledger, None), cast(ApiClient, None))
    events: list[tuple[str, str, str]] = []
    with pytest.raises(kopf.TemporaryError) as info:
        await handlers.ensure(
            deps, handlers.SaleMemo(), body={"metadata": {}}, name="drop", namespace="shop", spec=spec(),
            emit=lambda *e: events.append(e),
        )  # fmt: skip
    assert info.value.delay == handlers.RETRY_DELAY_S
    assert events == []


# --- children: replicas by phase, readiness, what a hand edit changed, autoscaling ------------------------

from stampede.ledger import Backlog  # noqa: E402
from stampede_operator import autoscale, children  # noqa: E402


def test_replicas_go_to_zero_only_when_ended_and_settled() -> None:
    assert children.replicas_for("Live", api=3, workers=2, reserved=0) == children.Replicas(
        3, 2, "spec.workers.replicas is 2"
    )

    def counts(r: children.Replicas) -> tuple[int, int]:
        return r.api, r.workers

    assert counts(children.replicas_for("Ended", api=3, workers=2, reserved=4)) == (3, 2)
    assert counts(children.replicas_for("Ended", api=3, workers=2, reserved=0)) == (0, 0)
    assert counts(children.replicas_for("SoldOut", api=3, workers=2, reserved=0)) == (3, 2)


def test_ready_means_seeded_and_every_pod_available() -> None:
    up = children.Workload(desired=2, ready=2, available=2, current=True)
    half = children.Workload(desired=2, ready=2, available=1, current=True)
    stale = children.Workload(desired=3, ready=2, available=2, current=False)
    assert children.readiness("Live", up, up, seeded=True)[:2] == ("True", "Serving")
    assert children.readiness("Live", up, up, seeded=False)[:2] == ("False", "NotSeeded")
    assert children.readiness("Live", up, half, seeded=True) == (
        "False",
        "WorkloadsUnavailable",
        "workers: 1/2 available",
    )
    assert children.readiness("Live", stale, up, seeded=True)[1] == "WorkloadsUnavailable"
    assert children.readiness("Live", None, up, seeded=True)[2] == "API: no Deployment"
    assert children.readiness("Ended", up, up, seeded=True)[:2] == ("False", "Ended")
    zero = children.Workload(desired=0, ready=0, available=0, current=True)
    assert children.readiness("Live", zero, up, seeded=True)[0] == "False"


def test_changes_name_what_a_hand_edit_changed_and_nothing_else() -> None:
    s = builders.parse_spec("drop", spec())
    want = builders.build_api_deployment(s, "shop", SETTINGS, OWNER, 2)
    got: dict[str, Any] = json.loads(json.dumps(want))
    got["status"] = {"availableReplicas": 2}  # what Kubernetes adds is not a change
    got["metadata"]["labels"]["team"] = "checkout"
    got["spec"]["template"]["spec"]["containers"][0]["terminationMessagePath"] = "/dev/termination-log"
    assert children.changes(want, got) == []
    got["spec"]["replicas"] = 7
    c = got["spec"]["template"]["spec"]["containers"][0]
    c["image"] = "evil:1"
    c["env"] = [e for e in c["env"] if e["name"] != "STAMPEDE_BIND"] + [{"name": "EXTRA", "value": "1"}]
    got["metadata"]["labels"]["stampede.dev/sale"] = "other"
    assert children.changes(want, got) == [
        "replicas 7 -> 2",
        "label stampede.dev/sale='other' -> 'drop'",
        "api image 'evil:1' -> 'stampede-api:latest'",
        "api env STAMPEDE_BIND (removed)",
        "api env EXTRA (added by hand)",
    ]
    patch = children.restore_patch(want)
    assert "selector" not in patch["spec"]  # immutable
    assert patch["spec"]["template"]["spec"]["containers"] == want["spec"]["template"]["spec"]["containers"]


def test_pdb_and_service_changes() -> None:
    s = builders.parse_spec("drop", spec())
    pdb = builders.build_api_pdb(s, "shop", SETTINGS, OWNER)
    assert pdb["spec"] == {
        "maxUnavailable": 1,
        "selector": {"matchLabels": {"stampede.dev/sale": "drop", "app.kubernetes.io/component": "api"}},
    }
    edited = json.loads(json.dumps(pdb))
    edited["spec"]["maxUnavailable"] = 5
    assert children.changes(pdb, edited) == ["maxUnavailable 5 -> 1"]
    svc = builders.build_api_service(s, "shop", SETTINGS, OWNER)
    edited = json.loads(json.dumps(svc))
    edited["spec"]["type"] = "NodePort"
    assert children.changes(svc, edited) == ["type NodePort -> ClusterIP"]


def test_sale_of_a_child_follows_its_owner_and_name() -> None:
    s = builders.parse_spec("drop", spec())
    d = builders.build_worker_deployment(s, "shop", SETTINGS, {"metadata": {"name": "drop", "uid": "u"}})
    d["metadata"]["labels"]["stampede.dev/sale"] = "other"
    assert children.sale_of(d) == ("drop", "worker")
    assert children.sale_of({"metadata": {"name": "drop-worker", "labels": {"stampede.dev/sale": "drop"}}}) == (
        "drop", "worker",
    )  # fmt: skip
    assert children.sale_of({"metadata": {"name": "unrelated", "labels": {"stampede.dev/sale": "drop"}}}) is None


def test_parse_autoscale() -> None:
    s = builders.parse_spec("drop", spec(workers={"autoscale": {"min": 1, "max": 5, "targetLagMs": 250}}))
    assert s.autoscale == builders.Autoscale(1, 5, 250)
    with pytest.raises(InvalidSpec):
        builders.parse_spec("drop", spec(workers={"autoscale": {"min": 4, "max": 2}}))


AUTO = builders.Autoscale(min=1, max=6, target_lag_ms=500)


@pytest.mark.parametrize(
    ("current", "backlog", "since", "want", "why"),
    [
        (1, Backlog(100, 100, 2000), 0.0, 4, "scaled up: settle lag 2000 ms"),  # 4x over target: 4 workers
        (1, Backlog(1, 1, 600), 0.0, 2, "scaled up"),  # just over: one more
        (5, Backlog(100, 100, 9000), 0.0, 6, "scaled up"),  # capped at max
        (6, Backlog(100, 100, 9000), 0.0, 6, "at max 6"),
        (4, Backlog(3, 3, 100), 100.0, 4, ""),  # under target, not drained: hold
        (4, Backlog(0, 0, 0), 1.0, 4, "backlog drained; cooling down"),
        (4, Backlog(0, 0, 0), 60.0, 1, "scaled down: backlog drained"),
        (1, Backlog(0, 0, 0), 60.0, 1, ""),
    ],
)
def test_autoscale_decision(current: int, backlog: Backlog, since: float, want: int, why: str) -> None:
    got, reason = autoscale.decide(current, backlog, AUTO, since_change_s=since, cooldown_s=30)
    assert got == want
    assert reason.startswith(why)


def test_pods_are_placed_by_the_sale_over_the_operator_defaults() -> None:
    from stampede.settings import SettingsError

    settings = load(
        OperatorSettings,
        env={
            "STAMPEDE_API_POD_TEMPLATE": json.dumps(
                {"nodeSelector": {"pool": "buy"}, "priorityClassName": "sales", "tolerations": [], "affinity": {}}
            ),
            "STAMPEDE_IMAGE_PULL_SECRETS": "regcred, other",
        },
    )
    own = {"resources": {"requests": {"cpu": "2"}}, "tolerations": [{"key": "spot", "operator": "Exists"}]}
    s = builders.parse_spec("drop", spec(api={"template": own}))
    pod = builders.build_api_deployment(s, "shop", settings, OWNER)["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"pool": "buy"}  # the chart's default
    assert pod["priorityClassName"] == "sales"
    assert pod["tolerations"] == own["tolerations"]  # the sale's own
    assert pod["containers"][0]["resources"] == {"requests": {"cpu": "2"}}
    assert pod["affinity"] is None and pod["topologySpreadConstraints"] is None  # null: removed by a patch
    assert pod["imagePullSecrets"] == [{"name": "regcred"}, {"name": "other"}]
    worker = builders.build_worker_deployment(s, "shop", settings, OWNER)["spec"]["template"]["spec"]
    assert worker["nodeSelector"] is None  # the API's template is not the workers'
    assert worker["containers"][0]["resources"] == builders.DEFAULT_RESOURCES["worker"]
    assert worker["imagePullSecrets"] == [{"name": "regcred"}, {"name": "other"}]
    bare = builders.build_worker_deployment(s, "shop", SETTINGS, OWNER)["spec"]["template"]["spec"]
    assert bare["imagePullSecrets"] is None
    with pytest.raises(InvalidSpec):
        builders.parse_spec("drop", spec(api={"template": {"hostNetwork": True}}))
    with pytest.raises(InvalidSpec):
        builders.parse_spec("drop", spec(workers={"template": {"tolerations": "all"}}))
    for env in (
        {"STAMPEDE_WORKER_POD_TEMPLATE": "{not json"},
        {"STAMPEDE_WORKER_POD_TEMPLATE": '{"volumes": []}'},
        {"STAMPEDE_IMAGE_PULL_SECRETS": "Bad_Name"},
    ):
        with pytest.raises(SettingsError, match=next(iter(env))):
            load(OperatorSettings, env=env)


# --- the API's HPA ------------------------------------------------------------------------------------------


def test_api_autoscale_from_the_sale_else_the_operator_default() -> None:
    own = builders.parse_spec("drop", spec(api={"autoscale": {"min": 3, "max": 9, "targetCPUPercent": 50}}))
    assert builders.api_autoscale(own, SETTINGS) == builders.ApiAutoscale(3, 9, 50)
    plain = builders.parse_spec("drop", spec())
    assert builders.api_autoscale(plain, SETTINGS) is None
    default = load(OperatorSettings, env={"STAMPEDE_API_AUTOSCALE": '{"max": 8}'})
    assert builders.api_autoscale(plain, default) == builders.ApiAutoscale(2, 8, 70)
    assert builders.api_autoscale(own, default) == builders.ApiAutoscale(3, 9, 50)  # the sale's own wins
    with pytest.raises(InvalidSpec, match="max"):
        builders.parse_spec("drop", spec(api={"autoscale": {"min": 5, "max": 2}}))
    for bad in ('{"max": 0}', '{"min": 4, "max": 2}', '{"min": 1}', "[]", '{"max": 3, "cpu": 1}', "{"):
        with pytest.raises(SettingsError, match="STAMPEDE_API_AUTOSCALE"):
            load(OperatorSettings, env={"STAMPEDE_API_AUTOSCALE": bad})


def test_api_hpa_by_value_and_its_hand_edits() -> None:
    sale = builders.parse_spec("drop", spec(), "shop")
    hpa = builders.build_api_hpa(sale, "shop", SETTINGS, builders.ApiAutoscale(2, 6, 60))
    assert hpa["metadata"]["name"] == "drop-api" and hpa["metadata"]["namespace"] == "shop"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "drop-api"}
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 6)
    assert hpa["spec"]["metrics"][0]["resource"]["target"] == {"type": "Utilization", "averageUtilization": 60}
    edited = json.loads(json.dumps(hpa))
    edited["spec"]["maxReplicas"] = 50
    assert children.changes(hpa, edited) == ["maxReplicas 50 -> 6"]
    assert children.changes(hpa, hpa) == []
    assert children.sale_of({**hpa, "metadata": {**hpa["metadata"], "ownerReferences": []}}) == ("drop", "api")


def test_a_deployment_scaled_by_its_hpa_is_kept_without_its_replicas() -> None:
    sale = builders.parse_spec("drop", spec(), "shop")
    want = builders.build_api_deployment(sale, "shop", SETTINGS, replicas=2)
    scaled = json.loads(json.dumps(want))
    scaled["spec"]["replicas"] = 7
    assert children.changes(want, scaled) == ["replicas 7 -> 2"]
    assert children.changes(children.unscaled(want), scaled) == []  # the HPA's choice stands
    assert "replicas" not in children.restore_patch(children.unscaled(want))["spec"]
    scaled["spec"]["template"]["spec"]["containers"][0]["image"] = "evil:1"
    assert children.changes(children.unscaled(want), scaled) == ["api image 'evil:1' -> 'stampede-api:latest'"]
    running = children.replicas_for("Live", api=3, workers=2, reserved=5, api_autoscaled=True)
    assert running.api_autoscaled and running.api == 3
    ended = children.replicas_for("Ended", api=3, workers=2, reserved=0, api_autoscaled=True)
    assert (ended.api, ended.workers, ended.api_autoscaled) == (0, 0, False)  # an HPA does not scale from zero
