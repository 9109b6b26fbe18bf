"""Every GitHub workflow: actions pinned to a commit, what it runs exists here, actionlint passes; the test
workflow runs `make lint` and `make test`; the kind workflow runs `make k8s-up`, `make test-k8s`, `make k8s-down`."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = sorted((REPO_ROOT / ".github" / "workflows").glob("*.yml"))
MAKEFILE = REPO_ROOT / "Makefile"


def _load(path: Path) -> dict[Any, Any]:
    data: dict[Any, Any] = yaml.safe_load(path.read_text())
    return data


def _steps(path: Path, job: str) -> list[dict[str, Any]]:
    steps: list[dict[str, Any]] = _load(path)["jobs"][job]["steps"]
    return steps


def _make_targets() -> set[str]:
    return set(re.findall(r"^([a-zA-Z0-9_.-]+):", MAKEFILE.read_text(), re.MULTILINE))


def test_there_is_a_test_workflow_besides_the_kind_one() -> None:
    assert {p.name for p in WORKFLOWS} >= {"kind.yml", "test.yml"}


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=lambda p: p.name)
def test_actions_are_pinned_to_a_commit_with_their_release_beside(workflow: Path) -> None:
    uses = re.findall(r"^\s*(?:-\s+)?uses:\s*(\S+)(.*)$", workflow.read_text(), re.MULTILINE)
    assert uses, f"{workflow.name} uses no action"
    for ref, rest in uses:
        assert re.fullmatch(r"[\w.-]+/[\w.-]+@[0-9a-f]{40}", ref), f"{workflow.name}: {ref} is not pinned to a commit"
        assert re.fullmatch(r"\s*# v\d+\.\d+\.\d+", rest), f"{workflow.name}: {ref} has no `# vX.Y.Z` comment"
    # One action, one commit, across every workflow.
    pins: dict[str, set[str]] = {}
    for wf in WORKFLOWS:
        for ref, _ in re.findall(r"^\s*(?:-\s+)?uses:\s*(\S+)(.*)$", wf.read_text(), re.MULTILINE):
            name, _, sha = ref.partition("@")
            pins.setdefault(name, set()).add(sha)
    assert {name: shas for name, shas in pins.items() if len(shas) > 1} == {}


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=lambda p: p.name)
def test_workflow_reads_the_repository_and_checks_out_without_credentials(workflow: Path) -> None:
    wf = _load(workflow)
    assert wf["permissions"] == {"contents": "read"}
    for job, spec in wf["jobs"].items():
        steps = spec["steps"]
        checkout = [s for s in steps if s.get("uses", "").startswith("actions/checkout@")]
        assert checkout and checkout[0]["with"]["persist-credentials"] is False, job
        scripts = "\n".join(s.get("run", "") for s in steps)
        for target in re.findall(r"\bmake (?:-s )?([a-z][a-z0-9-]*)", scripts):
            assert target in _make_targets(), f"{workflow.name} runs `make {target}`, which the Makefile lacks"
        for path in re.findall(r"(?<![\w$/])((?:hack|charts|\.ci)/[\w./-]+)", scripts):
            assert (REPO_ROOT / path).exists(), f"{workflow.name} uses {path}, which does not exist"


def test_the_test_workflow_runs_lint_and_the_suite() -> None:
    path = REPO_ROOT / ".github" / "workflows" / "test.yml"
    lint = "\n".join(s.get("run", "") for s in _steps(path, "lint"))
    assert re.search(r"^make lint$", lint, re.MULTILINE)
    steps = _steps(path, "test")
    runs = [s.get("run", "") for s in steps]
    # .ci/run is `make test` with "no tests collected" counted as a failure.
    assert ".ci/run" in runs and "make test" in (REPO_ROOT / ".ci" / "run").read_text()
    # Python: the oldest the project supports (pyproject's requires-python).
    (setup_python,) = [s for s in steps if s.get("uses", "").startswith("actions/setup-python@")]
    floor = re.search(r'^requires-python = ">=(\S+)"$', (REPO_ROOT / "pyproject.toml").read_text(), re.MULTILINE)
    assert floor and setup_python["with"]["python-version"] == floor.group(1)
    assert setup_python["with"]["cache-dependency-path"] == "requirements/dev.txt"
    # Go: the newest `go` directive of the tools modules, so every pinned tool builds.
    (setup_go,) = [s for s in steps if s.get("uses", "").startswith("actions/setup-go@")]
    directives = {}
    for gomod in (REPO_ROOT / "hack" / "tools").glob("*/go.mod"):
        found = re.search(r"^go (\d+)\.(\d+)", gomod.read_text(), re.MULTILINE)
        assert found, gomod
        directives[gomod.relative_to(REPO_ROOT).as_posix()] = (int(found.group(1)), int(found.group(2)))
    assert directives[setup_go["with"]["go-version-file"]] == max(directives.values())
    # The tools cache does not share the kind workflow's key (that one holds only helm and kubectl).
    kind_keys = {
        s["with"]["key"]
        for s in _steps(REPO_ROOT / ".github/workflows/kind.yml", "helm-test")
        if s.get("uses", "").startswith("actions/cache@")
    }
    test_keys = {s["with"]["key"] for s in steps if s.get("uses", "").startswith("actions/cache@")}
    assert test_keys and not kind_keys & test_keys


def test_the_kind_workflow_runs_the_targets_a_developer_runs() -> None:
    steps = _steps(REPO_ROOT / ".github" / "workflows" / "kind.yml", "helm-test")
    runs = [s.get("run", "") for s in steps]
    up, test, down = (
        next(i for i, r in enumerate(runs) if f"make {t}" in r) for t in ("k8s-up", "test-k8s", "k8s-down")
    )
    assert up < test < down
    assert steps[down].get("if") == "always()", "the cluster is torn down whatever happened"
    # The cache holds the binaries and the debootstrap base, never Docker's data root (device files).
    (cache,) = [s for s in steps if s.get("uses", "").startswith("actions/cache@")]
    assert cache["with"]["path"].split() == [".tools/bin", ".tools/images/*.tar"]


def _actionlint() -> str | None:
    out = subprocess.run(
        [str(REPO_ROOT / "hack" / "tools.sh"), "path", "actionlint"], stdout=subprocess.PIPE, text=True, check=False
    )
    return out.stdout.strip() if out.returncode == 0 else shutil.which("actionlint")


def test_every_workflow_passes_actionlint() -> None:
    actionlint = _actionlint()
    if actionlint is None:
        pytest.skip("actionlint could not be built (hack/tools.sh) and is not on PATH")
    result = subprocess.run(
        [actionlint, *map(str, WORKFLOWS)], capture_output=True, text=True, cwd=REPO_ROOT, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
