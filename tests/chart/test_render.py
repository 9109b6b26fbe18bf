"""The chart as helm sees it: `helm lint` with every scenario, values.schema.json refusing bad values with a
message naming them, and what `helm template` renders checked by value: hardened pods, pinned images, the
operator's settings named as OperatorSettings names them, the sale pods selected by the labels the operator's
builders give them, and the `helm test` pod (k6 smoke, then the audit). Needs helm, not a cluster.
"""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import pytest
import yaml

from stampede_api.settings import ApiSettings
from stampede_dev import cli
from stampede_operator.settings import OperatorSettings
from stampede_worker.settings import WorkerSettings

if TYPE_CHECKING:
    from stampede_operator.builders import SaleSpec
    from tests.chart.conftest import Render, Rendered

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART = REPO_ROOT / "charts" / "stampede"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))


def _pod_spec(doc: dict[str, Any]) -> dict[str, Any]:
    kind = doc["kind"]
    spec: dict[str, Any]
    if kind == "Pod":
        spec = doc["spec"]
    elif kind == "CronJob":
        spec = doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    else:
        spec = doc["spec"]["template"]["spec"]
    return spec


def _workloads(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] in ("StatefulSet", "Deployment", "Pod", "CronJob", "Job")]


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


# --- helm lint and the schema -----------------------------------------------------------------------------------


@pytest.mark.parametrize("values", [None, *CI_VALUES], ids=lambda v: "default" if v is None else v.name)
def test_helm_lint(helm_bin: Path, values: Path | None) -> None:
    cmd = [str(helm_bin), "lint", "--strict", str(CHART)]
    if values is not None:
        cmd += ["-f", str(values)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("operator.replicas=0", "at '/operator/replicas': minimum: got 0, want 1"),
        ("operator.replica=2", "at '/operator': additional properties 'replica' not allowed"),
        ("secrets.jwtSecret=too-short", "at '/secrets/jwtSecret'"),
        ("image.pullPolicy=Sometimes", "at '/image/pullPolicy'"),
        ("redis.external.url=http://redis:6379", "at '/redis/external/url'"),
        ("loadTest.sale=Not_A_Name", "at '/loadTest/sale'"),
        ("postgresql.persistence.size=lots", "at '/postgresql/persistence/size'"),
        ("image.operator.digest=sha256:abc", "at '/image/operator/digest'"),
    ],
)
def test_schema_refuses_a_bad_value(render: Render, helm_bin: Path, setting: str, message: str) -> None:
    rendered = render(set=[setting], check=False)
    assert not rendered.ok
    assert message in rendered.result.stderr, rendered.result.stderr
    # helm lint says the same.
    lint = subprocess.run([str(helm_bin), "lint", str(CHART), "--set", setting], capture_output=True, text=True)
    assert lint.returncode != 0 and message in lint.stdout + lint.stderr


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (["secrets.existingSecret=mine"], "secrets.existingSecret names a Secret you manage"),
        (["redis.enabled=false"], "redis.enabled=false needs redis.external.url"),
        (["postgresql.enabled=false"], "postgresql.enabled=false needs postgresql.external.url"),
        (["operator.replicas=5", "operator.peering.priorityBase=3"], "priorityBase must be at least operator.replicas"),
        (["operator.clusterWide=true", "operator.watchNamespaces={a}"], "leave operator.watchNamespaces empty"),
    ],
)
def test_combinations_that_cannot_work_are_refused(render: Render, settings: list[str], message: str) -> None:
    rendered = render(set=settings, check=False)
    assert not rendered.ok
    assert message in rendered.result.stderr, rendered.result.stderr


# --- what every scenario renders ----------------------------------------------------------------------------------


@pytest.mark.parametrize("values", [None, *CI_VALUES], ids=lambda v: "default" if v is None else v.name)
def test_every_pod_is_hardened_and_pinned(render: Render, values: Path | None) -> None:
    docs = render(*([values] if values else []), namespace="shop").docs
    cluster_scoped = {
        "ClusterRole", "ClusterRoleBinding", "ClusterKopfPeering", "CustomResourceDefinition",
        "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding",
    }  # fmt: skip
    for doc in docs:
        assert (doc["kind"] in cluster_scoped) != ("namespace" in doc["metadata"]), (
            f"{doc['kind']} {doc['metadata']['name']}: namespaced objects name their namespace, others do not"
        )
        labels = doc["metadata"].get("labels", {})
        for key in ("app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/managed-by"):
            assert key in labels, f"{doc['kind']} {doc['metadata']['name']} lacks label {key}"
    for doc in _workloads(docs):
        where = f"{doc['kind']} {doc['metadata']['name']}"
        spec = _pod_spec(doc)
        assert spec["securityContext"]["runAsNonRoot"] is True, where
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, where
        for c in spec.get("initContainers", []) + spec["containers"]:
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, f"{where}/{c['name']}"
            assert sc["allowPrivilegeEscalation"] is False, f"{where}/{c['name']}"
            assert sc["capabilities"]["drop"] == ["ALL"], f"{where}/{c['name']}"
            assert c["resources"]["requests"] and c["resources"]["limits"]["memory"], f"{where}/{c['name']}"
            image = c["image"]
            assert not image.endswith(":latest") and (":" in image.rsplit("/", 1)[-1] or "@sha256:" in image), image


def test_default_install_objects(render: Render) -> None:
    r = render(namespace="shop")
    kinds = sorted({d["kind"] for d in r.docs})
    assert kinds == sorted(
        [
            "ClusterRole", "ClusterRoleBinding", "ConfigMap", "CronJob", "CustomResourceDefinition", "KopfPeering",
            "Pod", "PodDisruptionBudget", "Role", "RoleBinding", "Secret", "Service", "ServiceAccount", "StatefulSet",
            "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding",
        ]
    )  # fmt: skip
    # The names the kind workflow waits for (release "stampede").
    r.get("StatefulSet", "stampede-operator")
    r.get("Pod", "stampede-test-smoke")
    assert r.get("KopfPeering", "stampede")["metadata"]["namespace"] == "shop"
    secret = r.get("Secret", "stampede-env")
    assert set(secret["stringData"]) == {"STAMPEDE_REDIS_URL", "STAMPEDE_DATABASE_URL", "STAMPEDE_JWT_SECRET"}
    assert secret["stringData"]["STAMPEDE_REDIS_URL"].startswith("redis://stampede:")  # the ACL user
    assert "@stampede-redis.shop.svc:6379/0" in secret["stringData"]["STAMPEDE_REDIS_URL"]
    assert "@stampede-postgresql.shop.svc:5432/stampede" in secret["stringData"]["STAMPEDE_DATABASE_URL"]
    assert len(secret["stringData"]["STAMPEDE_JWT_SECRET"]) >= 32


def test_an_external_redis_cluster_reaches_every_process_as_one_url(render: Render) -> None:
    """redis.external.url=redis+cluster://… goes into the Secret every pod reads, and the processes' own
    settings take it as a Redis Cluster (cluster client, a replica acknowledging each reserve)."""
    from stampede import settings

    url = "redis+cluster://stampede:pw@redis-cluster.shop.svc:6379"
    r = render(set=["redis.enabled=false", f"redis.external.url={url}"], namespace="shop")
    assert r.get("Secret", "stampede-env")["stringData"]["STAMPEDE_REDIS_URL"] == url
    assert all(d["metadata"]["name"] != "stampede-redis" for d in r.kinds("StatefulSet"))
    env = {"STAMPEDE_REDIS_URL": url, "STAMPEDE_JWT_SECRET": "x" * 32}
    for cls in (ApiSettings, WorkerSettings):
        loaded = settings.load(cls, env)
        assert loaded.redis_url == url and loaded.ack_replicas == 1
    with pytest.raises(settings.SettingsError, match="only database 0"):
        settings.load(WorkerSettings, {"STAMPEDE_REDIS_URL": "redis+cluster://h:6379/3"})


def test_secret_keys_are_settings_variables() -> None:
    from stampede import settings

    variables = {v for cls in (ApiSettings, WorkerSettings) for v, _, _ in settings.describe(cls)}
    assert {"STAMPEDE_REDIS_URL", "STAMPEDE_DATABASE_URL", "STAMPEDE_JWT_SECRET"} <= variables


# --- the operator -------------------------------------------------------------------------------------------------


def _operator_container(r: Rendered) -> dict[str, Any]:
    sts = r.get("StatefulSet", "stampede-operator")
    containers: list[dict[str, Any]] = sts["spec"]["template"]["spec"]["containers"]
    (container,) = [c for c in containers if c["name"] == "operator"]
    return container


def test_operator_env_is_what_operator_settings_reads(render: Render) -> None:
    from stampede import settings

    known = {var for var, _, _ in settings.describe(OperatorSettings)}
    env = _env(_operator_container(render()))
    stampede_vars = {k for k in env if k.startswith("STAMPEDE_")}
    assert stampede_vars - known == set(), f"env the operator's settings do not read: {stampede_vars - known}"
    for var in (
        "STAMPEDE_SECRET_NAME", "STAMPEDE_API_IMAGE", "STAMPEDE_WORKER_IMAGE", "STAMPEDE_IMAGE_PULL_POLICY",
        "STAMPEDE_API_PORT", "STAMPEDE_WORKER_METRICS_PORT", "STAMPEDE_PEERING_NAME", "STAMPEDE_PEERING_LIFETIME_S",
        "STAMPEDE_OPERATOR_METRICS_PORT",
        "STAMPEDE_REDIS_URL", "STAMPEDE_DATABASE_URL",
    ):  # fmt: skip
        assert var in env, var
    assert env["STAMPEDE_SECRET_NAME"] == "stampede-env"
    assert env["STAMPEDE_API_IMAGE"] == "stampede-api:0.1.0"
    assert env["STAMPEDE_WORKER_IMAGE"] == "stampede-worker:0.1.0"
    # The operator loads and validates exactly this environment.
    plain = {k: v for k, v in env.items() if isinstance(v, str)}
    plain |= {"STAMPEDE_PEERING_PRIORITY": "100"}
    loaded = settings.load(OperatorSettings, env=plain)
    assert loaded.secret_name == "stampede-env"
    assert loaded.peering_name == "stampede"
    assert loaded.standalone is False


def test_chart_defaults_match_operator_settings_defaults(render: Render) -> None:

    defaults = OperatorSettings()
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["api"]["port"] == defaults.api_port
    assert values["worker"]["metricsPort"] == defaults.worker_metrics_port
    assert values["worker"]["metricsPort"] == WorkerSettings().worker_metrics_port
    assert values["operator"]["metricsPort"] == defaults.operator_metrics_port
    assert values["api"]["metricsPort"] == defaults.api_metrics_port == ApiSettings.metrics_port
    assert values["api"]["trustedProxyHops"] == defaults.api_trusted_proxy_hops
    assert values["api"]["clientIpHeader"] == defaults.api_client_ip_header
    assert str(values["api"]["pdb"]["maxUnavailable"]) == defaults.api_pdb_max_unavailable


def test_the_proxy_in_front_of_the_sales_reaches_the_operator(render: Render) -> None:
    env = _env(_operator_container(render(set=["api.trustedProxyHops=1", "api.clientIpHeader=Forwarded"])))
    assert env["STAMPEDE_API_TRUSTED_PROXY_HOPS"] == "1"
    assert env["STAMPEDE_API_CLIENT_IP_HEADER"] == "Forwarded"


def test_each_sale_gets_its_own_disruption_budget_from_the_operator(render: Render) -> None:
    """The chart renders no budget over every sale's API pods: the operator creates one per sale."""
    r = render(namespace="shop")
    assert [d["metadata"]["name"] for d in r.docs if d["kind"] == "PodDisruptionBudget"] == ["stampede-operator"]
    assert _env(_operator_container(r))["STAMPEDE_API_PDB_MAX_UNAVAILABLE"] == "1"
    assert _env(_operator_container(render(set=["api.pdb.maxUnavailable=25%"])))[
        "STAMPEDE_API_PDB_MAX_UNAVAILABLE"
    ] == "25%"  # fmt: skip
    assert _env(_operator_container(render(set=["api.pdb.enabled=false"])))["STAMPEDE_API_PDB_MAX_UNAVAILABLE"] == ""


def test_sale_pods_get_the_charts_templates_and_pull_secrets(render: Render) -> None:
    import json

    from stampede import settings
    from stampede_operator import builders

    values = yaml.safe_load((CHART / "values.yaml").read_text())
    env = _env(_operator_container(render(namespace="shop")))
    for component, key in (("api", "STAMPEDE_API_POD_TEMPLATE"), ("worker", "STAMPEDE_WORKER_POD_TEMPLATE")):
        assert json.loads(env[key]) == values[component]["template"]
        # The chart's defaults are the operator's own (a local run without the chart sizes pods the same).
        assert values[component]["template"]["resources"] == builders.DEFAULT_RESOURCES[component]
    assert env["STAMPEDE_IMAGE_PULL_SECRETS"] == ""
    env = _env(
        _operator_container(render(set=["image.pullSecrets={regcred,mirror}", "api.template.priorityClassName=sales"]))
    )
    assert env["STAMPEDE_IMAGE_PULL_SECRETS"] == "regcred,mirror"
    keys = ("STAMPEDE_IMAGE_PULL_SECRETS", "STAMPEDE_API_POD_TEMPLATE", "STAMPEDE_WORKER_POD_TEMPLATE")
    ours = settings.load(OperatorSettings, env={k: env[k] for k in keys})  # the operator accepts them
    assert ours.pull_secrets == ("regcred", "mirror")
    assert json.loads(env["STAMPEDE_API_POD_TEMPLATE"])["priorityClassName"] == "sales"


def test_sale_metrics_are_scraped_apart_from_the_buyers(render: Render) -> None:
    r = render("charts/stampede/ci/production-values.yaml", namespace="shop")
    assert r.get("PodMonitor", "stampede-api")["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"
    policy = r.get("NetworkPolicy", "stampede-api")
    buyers, *others = policy["spec"]["ingress"]
    assert [p["port"] for p in buyers["ports"]] == [8000]
    metrics_rules = [rule for rule in others if [p["port"] for p in rule["ports"]] == [9101]]
    assert len(metrics_rules) == 1


def test_every_sale_series_carries_the_sale_and_every_panel_filters_by_it(render: Render) -> None:
    import json

    from stampede import names

    r = render("charts/stampede/ci/production-values.yaml", namespace="shop")
    sale_label = "__meta_kubernetes_pod_label_" + names.LABEL_SALE.replace(".", "_").replace("/", "_")
    for component in ("api", "worker"):
        (endpoint,) = r.get("PodMonitor", f"stampede-{component}")["spec"]["podMetricsEndpoints"]
        assert endpoint["honorLabels"] is True  # a series naming its own sale keeps it
        assert {"sourceLabels": ["__meta_kubernetes_namespace", sale_label], "separator": names.SALE_ID_SEPARATOR,
                "targetLabel": "sale"} in endpoint["relabelings"]  # fmt: skip
    dashboard = json.loads((CHART / "dashboards" / "stampede.json").read_text())

    def panels(node: dict[str, Any]) -> list[dict[str, Any]]:
        return [q for p in node.get("panels", []) for q in (p, *panels(p))]

    exprs = [t["expr"] for p in panels(dashboard) for t in p.get("targets", [])]
    assert len(exprs) == json.dumps(dashboard).count('"expr"')
    assert [e for e in exprs if 'sale=~"$sale"' not in e] == []


@pytest.mark.parametrize(
    ("settings", "flags"),
    [
        ([], ["--namespace=shop"]),
        (["operator.watchNamespaces={a,b}"], ["--namespace=a", "--namespace=b"]),
        (["operator.clusterWide=true"], ["--all-namespaces"]),
    ],
)
def test_operator_runs_kopf_with_peering_and_distinct_priorities(
    render: Render, settings: list[str], flags: list[str]
) -> None:
    r = render(set=settings, namespace="shop")
    container = _operator_container(r)
    assert container["command"] == ["/bin/sh", "-ec"]
    script = container["args"][0]
    assert "exec kopf run --module=stampede_operator.main" in script
    assert '--peering="$STAMPEDE_PEERING_NAME" --priority="$STAMPEDE_PEERING_PRIORITY"' in script
    assert [f for f in script.split() if f.startswith(("--namespace", "--all-namespaces"))] == flags
    # The priority is derived from the StatefulSet ordinal: run the same shell line for three pods.
    env = _env(container)
    priorities = []
    for ordinal in range(3):
        prefix = script.split("exec kopf")[0]
        out = subprocess.run(
            ["/bin/sh", "-ec", prefix + 'echo "$STAMPEDE_PEERING_PRIORITY"'],
            env={"POD_NAME": f"stampede-operator-{ordinal}", "PEERING_PRIORITY_BASE": env["PEERING_PRIORITY_BASE"]},
            capture_output=True,
            text=True,
            check=True,
        )
        priorities.append(int(out.stdout))
    assert priorities == [100, 99, 98]
    peering_kind = "ClusterKopfPeering" if "--all-namespaces" in flags else "KopfPeering"
    assert r.kinds(peering_kind), f"no {peering_kind} rendered"
    assert [d["metadata"]["name"] for d in r.kinds(peering_kind)] == [env["STAMPEDE_PEERING_NAME"]] * len(
        r.kinds(peering_kind)
    )


def test_operator_migrates_before_it_starts(render: Render) -> None:
    sts = render().get("StatefulSet", "stampede-operator")
    (init,) = sts["spec"]["template"]["spec"]["initContainers"]
    assert init["command"] == ["/bin/sh", "-c"]
    assert "stampede migrate && exit 0" in init["args"][0]
    assert "migrate" in cli._COMMANDS
    assert {"STAMPEDE_DATABASE_URL", "STAMPEDE_REDIS_URL"} <= set(_env(init))
    assert (
        not render(set=["operator.migrate=false"])
        .get("StatefulSet", "stampede-operator")["spec"]["template"]["spec"]
        .get("initContainers")
    )


# --- the sale pods the operator creates ---------------------------------------------------------------------------


def test_chart_selects_sale_pods_by_the_labels_the_operator_gives_them(render: Render) -> None:
    from datetime import UTC, datetime

    from stampede_operator import builders

    spec = builders.SaleSpec(
        name="drop", sku="S-1", stock=10, per_user_limit=1,
        window_start=datetime(2026, 1, 1, tzinfo=UTC), window_end=datetime(2026, 1, 2, tzinfo=UTC),
    )  # fmt: skip
    s = OperatorSettings()
    pod_labels = {
        "api": builders.build_api_deployment(spec, "shop", s)["spec"]["template"]["metadata"]["labels"],
        "worker": builders.build_worker_deployment(spec, "shop", s)["spec"]["template"]["metadata"]["labels"],
    }
    r = render("charts/stampede/ci/production-values.yaml", namespace="shop")

    def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
        return all(labels.get(k) == v for k, v in selector.items())

    pdb = builders.build_api_pdb(spec, "shop", s)  # one per sale, created by the operator
    assert selects(pdb["spec"]["selector"]["matchLabels"], pod_labels["api"])
    assert not selects(pdb["spec"]["selector"]["matchLabels"], pod_labels["worker"])
    other = builders.build_api_deployment(dataclasses.replace(spec, name="other"), "shop", s)
    assert not selects(pdb["spec"]["selector"]["matchLabels"], other["spec"]["template"]["metadata"]["labels"])
    for component in ("api", "worker"):
        monitor = r.get("PodMonitor", f"stampede-{component}")
        assert selects(monitor["spec"]["selector"]["matchLabels"], pod_labels[component])
        ports = {p["name"] for c in _sale_containers(builders, spec, s, component) for p in c.get("ports", [])}
        assert monitor["spec"]["podMetricsEndpoints"][0]["port"] in ports
        policy = r.get("NetworkPolicy", f"stampede-{component}")
        assert selects(policy["spec"]["podSelector"]["matchLabels"], pod_labels[component])
        container_ports = {
            p["containerPort"] for c in _sale_containers(builders, spec, s, component) for p in c["ports"]
        }
        assert {p["port"] for p in policy["spec"]["ingress"][0]["ports"]} <= container_ports


def _sale_containers(builders: ModuleType, spec: SaleSpec, s: OperatorSettings, component: str) -> list[dict[str, Any]]:
    build = builders.build_api_deployment if component == "api" else builders.build_worker_deployment
    containers: list[dict[str, Any]] = build(spec, "shop", s)["spec"]["template"]["spec"]["containers"]
    return containers


def test_data_stores_admit_the_sale_pods(render: Render) -> None:
    from stampede_operator import builders

    r = render("charts/stampede/ci/kind-values.yaml", namespace="shop")
    for store in ("redis", "postgresql"):
        policy = r.get("NetworkPolicy", f"stampede-{store}")
        peers = policy["spec"]["ingress"][0]["from"]
        for component in ("api", "worker"):
            labels = builders.build_labels("drop", component)
            assert any(
                all(labels.get(k) == v for k, v in p.get("podSelector", {}).get("matchLabels", {}).items())
                and "namespaceSelector" in p
                for p in peers
            ), f"{store} does not admit the sale's {component} pods"
        # and the chart's own pods (operator, helm test) through the release's selector labels
        assert {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "stampede",
                                                "app.kubernetes.io/instance": "stampede"}}} in peers  # fmt: skip


# --- in-cluster k6 ------------------------------------------------------------------------------------------------


def test_helm_test_pod_runs_k6_smoke_then_the_audit(render: Render) -> None:
    from stampede import names

    r = render("charts/stampede/ci/kind-values.yaml", namespace="shop")
    pod = r.get("Pod", "stampede-test-smoke")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    spec = pod["spec"]
    assert spec["restartPolicy"] == "Never"
    assert spec["automountServiceAccountToken"] is False
    tokens, k6 = spec["initContainers"]
    (audit,) = spec["containers"]
    assert k6["args"] == ["run", "--no-color", "/scripts/smoke.js"]
    env = _env(k6)
    # Only the token minter (the project's image) holds the signing secret; k6 and the audit read no Secret key
    # but the data stores' URLs (the audit).
    assert tokens["image"] == "stampede-worker:ci" and tokens["command"][:2] == ["stampede", "mint-token"]
    assert _env(tokens)["STAMPEDE_JWT_SECRET"] == {
        "secretKeyRef": {"name": "stampede-env", "key": "STAMPEDE_JWT_SECRET"}
    }
    assert "JWT_SECRET" not in env and env["TOKENS_PATH"] == "/tokens/tokens.tsv"
    assert "STAMPEDE_JWT_SECRET" not in _env(audit)
    assert tokens["command"][tokens["command"].index("--count") + 1] == env["BUYERS"]
    sale = "ci-sale"
    assert env["SALE"] == sale
    # The Service the operator creates for the sale, on the port it exposes.
    assert env["BASE_URL"] == f"http://{names.component_name(sale, names.COMPONENT_API)}.shop.svc"
    assert env["SUMMARY_PATH"] == "/results/smoke-summary.json"
    assert audit["command"][:2] == ["stampede", "audit"]
    assert "/results/smoke-summary.json" in audit["command"] and f"shop/{sale}" in audit["command"]  # the sale id
    assert audit["image"] == "stampede-worker:ci"
    # Every k6 file is mounted where the scripts import it from.
    cm = r.get("ConfigMap", "stampede-k6")
    items = {i["key"]: i["path"] for v in spec["volumes"] if v["name"] == "scripts" for i in v["configMap"]["items"]}
    assert set(items) == set(cm["data"])
    assert items["lib.buy.js"] == "lib/buy.js" and items["smoke.js"] == "smoke.js"
    for key, path in items.items():
        assert cm["data"][key] == (CHART / "files" / "k6" / path).read_text().rstrip("\n")


def test_api_service_port_is_what_the_load_test_calls() -> None:
    from datetime import UTC, datetime

    from stampede_operator import builders

    spec = builders.SaleSpec(
        name="drop", sku="S-1", stock=10, per_user_limit=1,
        window_start=datetime(2026, 1, 1, tzinfo=UTC), window_end=datetime(2026, 1, 2, tzinfo=UTC),
    )  # fmt: skip
    service = builders.build_api_service(spec, "shop", OperatorSettings())
    assert service["metadata"]["name"] == "drop-api"
    assert [p["port"] for p in service["spec"]["ports"]] == [80], "the load test calls http://<sale>-api.<ns>.svc"


def test_spike_runs_on_demand_from_a_suspended_cronjob(render: Render) -> None:
    cron = render().get("CronJob", "stampede-k6-spike")
    assert cron["spec"]["suspend"] is True
    spec = _pod_spec(cron)
    _tokens, k6 = spec["initContainers"]
    assert k6["args"][-1] == "/scripts/spike.js"
    assert _env(k6)["PEAK_RATE"] == "1000"


def test_audit_command_matches_the_cli() -> None:
    """The audit flags the chart passes are ones `stampede audit` accepts."""
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    command = values["loadTest"]["audit"]["command"]
    import argparse

    parser = argparse.ArgumentParser()
    _help, add_args, _ = cli._COMMANDS["audit"]
    add_args(parser)
    args = [a.replace("{sale}", "s").replace("{summary}", "/r/s.json").replace("{timeout}", "60") for a in command[2:]]
    parser.parse_args(args)


def test_dashboard_configmap_carries_the_repository_json(render: Render) -> None:
    cm = render().get("ConfigMap", "stampede-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["data"]["stampede.json"] == (CHART / "dashboards" / "stampede.json").read_text().rstrip("\n")


@pytest.mark.parametrize("values", ["kind-values.yaml", "production-values.yaml"])
def test_network_policies_let_the_test_pod_reach_the_api_and_the_data_stores(render: Render, values: str) -> None:
    r = render(CHART / "ci" / values, namespace="shop")
    pod_labels = r.get("Pod", "stampede-test-smoke")["metadata"]["labels"]
    api_port = yaml.safe_load((CHART / "values.yaml").read_text())["api"]["port"]

    def admits(policy: dict[str, Any], port: int) -> bool:
        for rule in policy["spec"]["ingress"]:
            if port not in [p["port"] for p in rule["ports"]]:
                continue
            if "from" not in rule:
                return True
            for peer in rule["from"]:
                ns_sel = peer.get("namespaceSelector")
                ns_ok = ns_sel is None or ns_sel.get("matchLabels", {}) in (
                    {},
                    {"kubernetes.io/metadata.name": "shop"},
                )
                pod_sel = peer.get("podSelector", {}).get("matchLabels")
                pod_ok = pod_sel is not None and all(pod_labels.get(k) == v for k, v in pod_sel.items())
                if ns_ok and pod_ok:
                    return True
        return False

    assert admits(r.get("NetworkPolicy", "stampede-api"), api_port)
    for store, port in (("redis", 6379), ("postgresql", 5432)):
        if r.kinds("StatefulSet") and any(d["metadata"]["name"] == f"stampede-{store}" for d in r.kinds("StatefulSet")):
            assert admits(r.get("NetworkPolicy", f"stampede-{store}"), port), store


def test_alerts_are_opt_in_and_each_has_a_runbook(render: Render) -> None:
    assert not [d for d in render().docs if d["kind"] == "PrometheusRule"]
    r = render(set=["metrics.prometheusRule.enabled=true", "metrics.prometheusRule.runbookBaseUrl=https://x.test/r"])
    (rule,) = [d for d in r.docs if d["kind"] == "PrometheusRule"]
    alerts = {a["alert"]: a for g in rule["spec"]["groups"] for a in g["rules"]}
    assert sorted(alerts) == sorted([
        "StampedeDrift", "StampedeSettleLagHigh", "StampedeApiErrors", "StampedeApiUnavailable",
        "StampedeReconcileErrors", "StampedeSettleBacklogGrowing", "StampedeOperatorAbsent",
    ])  # fmt: skip
    readme = (CHART / "README.md").read_text()
    for name, alert in alerts.items():
        assert f"\n### {name}\n" in readme, f"no runbook paragraph for {name}"
        assert alert["annotations"]["runbook_url"] == f"https://x.test/r#{name.lower()}"
        assert alert["labels"]["severity"] in ("warning", "critical")
    # The operator's job as its ServiceMonitor names it (the Service), in the release namespace.
    assert 'job="stampede-operator"' in alerts["StampedeOperatorAbsent"]["expr"]
    # Without a base URL no runbook_url is invented.
    bare = [d for d in render(set=["metrics.prometheusRule.enabled=true"]).docs if d["kind"] == "PrometheusRule"]
    assert all("runbook_url" not in a["annotations"] for g in bare[0]["spec"]["groups"] for a in g["rules"])


@pytest.mark.parametrize("values", [None, *CI_VALUES], ids=lambda v: v.name if v else "default")
def test_no_object_of_the_release_is_of_a_kind_the_release_defines(render: Render, values: Path | None) -> None:
    """Helm maps every object of a release to its kind before it applies any, so an object whose CRD is only a
    template of the same release fails a first install on an empty cluster ("no matches for kind"). The peering
    object's CRD is in crds/, which Helm installs first; the release creates no FlashSale."""
    rendered = render(*([values] if values else []))
    defined = {(d["spec"]["group"], d["spec"]["names"]["kind"]) for d in rendered.kinds("CustomResourceDefinition")}
    assert defined, "the FlashSale CRD is a template of the release"
    used = {(d["apiVersion"].split("/")[0], d["kind"]) for d in rendered.docs}
    assert not used & defined


def test_crds_are_the_sources_kept_on_uninstall(render: Render) -> None:
    """The release's templated CRD is crds/flashsale.yaml, unchanged but for the release's labels and
    `helm.sh/resource-policy: keep`; crds.install=false renders none. kopf's peering CRDs are not templates (they are
    in the chart's crds/ folder, which Helm installs before it builds the release)."""
    sources = list(yaml.safe_load_all((REPO_ROOT / "crds" / "flashsale.yaml").read_text()))
    rendered = {d["metadata"]["name"]: d for d in render().kinds("CustomResourceDefinition")}
    assert sorted(rendered) == sorted(d["metadata"]["name"] for d in sources if d)
    for source in (d for d in sources if d):
        got = rendered[source["metadata"]["name"]]
        assert got["spec"] == source["spec"]
        assert got["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
        assert got["metadata"]["labels"]["app.kubernetes.io/instance"] == "stampede"
        assert source["metadata"].get("labels", {}).items() <= got["metadata"]["labels"].items()
    assert not render(set=["crds.install=false"]).kinds("CustomResourceDefinition")
