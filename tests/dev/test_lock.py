"""The lock files: every dependency pyproject.toml declares is pinned, with hashes, at a version its range
allows, the same version in every file; the venv, the images and CI install from them; the licence is there."""

from __future__ import annotations

import importlib.metadata
import re
import tomllib
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
LOCKS = {
    "dev": ("api", "operator", "dev"),
    "api": ("api",),
    "worker": ("worker",),
    "operator": ("operator",),
}
PIN = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>\S+?)(?: ; (?P<marker>[^\\]+?))? \\$", re.M)


def pins(lock: str) -> dict[str, tuple[str, str | None]]:
    text = (ROOT / "requirements" / f"{lock}.txt").read_text()
    found: dict[str, tuple[str, str | None]] = {
        canonicalize_name(m["name"]): (m["version"], m["marker"]) for m in PIN.finditer(text)
    }
    assert found, f"no pins in requirements/{lock}.txt"
    return found


def declared(extras: tuple[str, ...]) -> list[Requirement]:
    reqs = [Requirement(r) for r in PYPROJECT["project"]["dependencies"]]
    for extra in extras:
        reqs += [Requirement(r) for r in PYPROJECT["project"]["optional-dependencies"][extra]]
    reqs += [Requirement(r) for r in PYPROJECT["build-system"]["requires"]]
    return reqs


@pytest.mark.parametrize("lock", sorted(LOCKS))
def test_every_declared_dependency_is_pinned_within_its_range(lock: str) -> None:
    locked = pins(lock)
    for req in declared(LOCKS[lock]):
        name = canonicalize_name(req.name)
        assert name in locked, f"{req} is declared but not in requirements/{lock}.txt: run `make lock`"
        version, _ = locked[name]
        assert req.specifier.contains(version, prereleases=True), (
            f"requirements/{lock}.txt pins {name}=={version}, outside {req}: run `make lock`"
        )


@pytest.mark.parametrize("lock", sorted(LOCKS))
def test_every_pin_carries_hashes(lock: str) -> None:
    text = (ROOT / "requirements" / f"{lock}.txt").read_text()
    blocks = re.split(r"\n(?=[A-Za-z0-9])", text.split("\n", 2)[2])
    for block in blocks:
        if block.strip() and not block.startswith("#"):
            assert re.search(r"--hash=sha256:[0-9a-f]{64}", block), f"no hash in requirements/{lock}.txt: {block}"


def test_a_package_has_one_version_in_every_lock() -> None:
    dev = pins("dev")
    for lock in ("api", "worker", "operator"):
        for name, (version, _) in pins(lock).items():
            assert dev[name][0] == version, f"{name}: {version} in {lock}.txt, {dev[name][0]} in dev.txt"


def test_the_venv_holds_the_locked_versions() -> None:
    for name, (version, marker) in pins("dev").items():
        if marker and not Marker(marker).evaluate():  # evaluated against this interpreter's environment
            continue
        assert importlib.metadata.version(name) == version, f"{name} in the venv is not the locked {version}"


def test_setup_the_images_and_ci_install_from_the_locks() -> None:
    venv = (ROOT / "hack" / "venv.sh").read_text()
    assert "LOCK=requirements/dev.txt" in venv and '--require-hashes -r "$LOCK"' in venv
    assert "--no-deps --no-build-isolation -e ." in venv
    docker = (ROOT / "Dockerfile").read_text()
    for component in ("api", "worker", "operator"):
        assert f"pip install --require-hashes -r requirements/{component}.txt" in docker
    assert docker.count("pip install --no-deps --no-build-isolation .") == 3
    ci = (ROOT / ".github" / "workflows" / "test.yml").read_text()
    assert "make lint" in ci and "make test" in ci


def test_the_licence_is_the_one_pyproject_names() -> None:
    assert PYPROJECT["project"]["license"] == "Apache-2.0"
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text
