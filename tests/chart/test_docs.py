"""The chart's README is what helm-docs makes of values.yaml's comments and README.md.gotmpl: regenerated in a
copy of the chart and compared with the committed file, so a value added or reworded without `make chart-docs`
fails here."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART = REPO_ROOT / "charts" / "stampede"


def _make_chart_docs_args() -> list[str]:
    """The flags `make chart-docs` passes, read from the Makefile so the test checks what the target runs."""
    recipe = re.search(r"^chart-docs:.*\n\t(.*\\\n)*.*$", (REPO_ROOT / "Makefile").read_text(), re.MULTILINE)
    assert recipe, "no chart-docs target"
    text = recipe.group(0).replace("\\\n", " ")
    args = re.search(r'"\$\$\(hack/tools.sh path helm-docs\)"(.*)$', text, re.MULTILINE)
    assert args
    return args.group(1).replace("$(CHART)", "{chart}").split()


@pytest.fixture(scope="module")
def helm_docs() -> str:
    if shutil.which("go") is None and not Path("/usr/local/go/bin/go").exists():
        pytest.skip("no Go toolchain to build helm-docs with")
    out = subprocess.run(
        [str(REPO_ROOT / "hack" / "tools.sh"), "path", "helm-docs"], capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_chart_readme_is_generated_from_values(helm_docs: str, tmp_path: Path) -> None:
    chart = tmp_path / "stampede"
    shutil.copytree(CHART, chart, symlinks=True)
    (chart / "README.md").unlink()
    args = [a.format(chart=chart) for a in _make_chart_docs_args()]
    res = subprocess.run([helm_docs, *args], capture_output=True, text=True, cwd=tmp_path, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    generated = (chart / "README.md").read_text()
    assert generated == (CHART / "README.md").read_text(), "charts/stampede/README.md is stale: run `make chart-docs`"


def test_chart_readme_documents_every_value() -> None:
    """Every leaf the README's table lists carries a description (helm-docs leaves it empty when the `# --`
    comment is missing), and the table names the values an operator of the chart sets most."""
    text = (CHART / "README.md").read_text()
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| Key")]
    assert len(rows) > 50
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[-1], f"value {cells[0]} has no description in values.yaml"
    for key in ("secrets.existingSecret", "image.registry", "operator.replicas", "loadTest.sale"):
        assert f"| {key} |" in text, key
