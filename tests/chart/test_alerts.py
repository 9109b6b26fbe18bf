"""The chart's alerts checked by Prometheus's own rule checker, the pinned promtool (hack/tools.sh, from Debian's
prometheus package): the rendered PrometheusRule's groups must pass `promtool check rules`, and every alert must
fire as fixtures/alerts-tests.yaml says, and only then (`promtool test rules`: series in, alerts with their labels
and text out, quiet under the threshold and during `for`)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from .conftest import FIXTURES, Render

# In make test; `make test-alerts` runs them alone.
pytestmark = pytest.mark.promtool

TESTS = FIXTURES / "alerts-tests.yaml"


def _rules(render: Render, *sets: str) -> dict[str, Any]:
    """The PrometheusRule's spec (Prometheus's rule file format) as the chart renders it."""
    (rule,) = render(set=["metrics.prometheusRule.enabled=true", *sets]).kinds("PrometheusRule")
    spec: dict[str, Any] = rule["spec"]
    return spec


def _promtool(promtool: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(promtool), *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_rendered_rules_pass_promtool_check(render: Render, promtool_bin: Path, tmp_path: Path) -> None:
    spec = _rules(render, "metrics.prometheusRule.runbookBaseUrl=https://x.test/runbooks")
    (tmp_path / "alerts.yaml").write_text(yaml.safe_dump(spec))
    out = _promtool(promtool_bin, "check", "rules", "alerts.yaml", cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    count = sum(len(g["rules"]) for g in spec["groups"])
    assert f"SUCCESS: {count} rules found" in out.stdout + out.stderr


def test_promtool_refuses_a_broken_rule(render: Render, promtool_bin: Path, tmp_path: Path) -> None:
    """The checker is not a formality: the same file with one expression cut short is refused."""
    spec = _rules(render)
    spec["groups"][0]["rules"][0]["expr"] = "max by (sale) (stampede_operator_drift_units"
    (tmp_path / "alerts.yaml").write_text(yaml.safe_dump(spec))
    out = _promtool(promtool_bin, "check", "rules", "alerts.yaml", cwd=tmp_path)
    assert out.returncode != 0
    assert "StampedeDrift" in out.stdout + out.stderr or "parse error" in out.stdout + out.stderr


def test_every_alert_fires_as_its_unit_test_says(render: Render, promtool_bin: Path, tmp_path: Path) -> None:
    spec = _rules(render)
    (tmp_path / "alerts.yaml").write_text(yaml.safe_dump(spec))
    shutil.copy(TESTS, tmp_path / "alerts-tests.yaml")
    out = _promtool(promtool_bin, "test", "rules", "alerts-tests.yaml", cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    # Each alert has a case that fires it and one that keeps it quiet: a new alert needs its own.
    alerts = {r["alert"] for g in spec["groups"] for r in g["rules"]}
    cases = [c for t in yaml.safe_load(TESTS.read_text())["tests"] for c in t["alert_rule_test"]]
    fired = {c["alertname"] for c in cases if c["exp_alerts"]}
    quiet = {c["alertname"] for c in cases if not c["exp_alerts"]}
    assert fired == alerts and quiet == alerts, (sorted(alerts - fired), sorted(alerts - quiet))
