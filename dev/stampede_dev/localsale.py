"""A FlashSale on the local control plane (``hack/cluster.sh``), as ``make demo`` and ``make bench-soak`` set
one up: the pinned tools' paths, the sale's manifest, the CRD and the sale applied, and a wait for the phase
the operator publishes. One place, so the demo and the benchmark run the same sale the same way.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from stampede.names import CRD_PLURAL

CRD_NAME = "flashsales.stampede.dev"


def tool(root: Path, name: str) -> str:
    """The path of a pinned Go tool (kubectl, k6, …), built by ``hack/tools.sh`` when it is missing."""
    return subprocess.run(
        [str(root / "hack" / "tools.sh"), "path", name], capture_output=True, text=True, check=True
    ).stdout.strip()


def flashsale(
    name: str, stock: int, limit: int, minutes: int, *, workers: int = 2, reconcile_s: int | None = 5
) -> dict[str, object]:
    """A FlashSale open from five seconds ago for ``minutes``, served by one API replica and ``workers``
    settle workers; ``reconcile_s`` None keeps the FlashSale's default reconcile interval."""
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    spec: dict[str, object] = {
        "product": {"sku": "DEMO-1", "name": "Demo Sneaker", "price": "99.00", "currency": "USD"},
        "stock": stock,
        "perUserLimit": limit,
        "window": {
            "start": (now - dt.timedelta(seconds=5)).isoformat().replace("+00:00", "Z"),
            "end": (now + dt.timedelta(minutes=minutes)).isoformat().replace("+00:00", "Z"),
        },
        "api": {"replicas": 1},
        "workers": {"replicas": workers, "concurrency": 16},
        # k6 runs on this machine: every buyer shares 127.0.0.1, so the per-IP bucket is opened wide.
        "rateLimit": {"perIp": {"rate": 1_000_000, "burst": 1_000_000}},
    }
    if reconcile_s is not None:
        spec["reconcile"] = {"intervalSeconds": reconcile_s}
    return {"apiVersion": "stampede.dev/v1alpha1", "kind": "FlashSale", "metadata": {"name": name}, "spec": spec}


@dataclass(frozen=True)
class LocalCluster:
    """The control plane of ``hack/cluster.sh`` (its admin kubeconfig under ``.run/cluster``) and the pinned
    kubectl."""

    root: Path
    kubeconfig: Path
    kubectl: str

    @classmethod
    def of(cls, root: Path) -> LocalCluster:
        return cls(root, root / ".run" / "cluster" / "kubeconfig", tool(root, "kubectl"))

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig)}

    def run(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.kubectl, *args], input=input, text=True, env=self.env, check=check, capture_output=True
        )

    def install_sale(self, manifest: Mapping[str, object]) -> None:
        """Applies the FlashSale CRD of ``crds/flashsale.yaml``, waits until it is Established, then applies
        the sale."""
        self.run("apply", "--server-side", "-f", str(self.root / "crds" / "flashsale.yaml"))
        self.run("wait", "--for=condition=Established", f"crd/{CRD_NAME}")
        self.run("apply", "-f", "-", input=json.dumps(manifest))

    def phase(self, sale: str) -> str:
        return self.run("get", CRD_PLURAL, sale, "-o", "jsonpath={.status.phase}", check=False).stdout.strip()

    def wait_phase(self, sale: str, phase: str, timeout: float = 60) -> str:
        """Polls the sale's phase until it is ``phase`` or ``timeout`` passes; returns the last phase seen."""
        deadline = time.monotonic() + timeout
        seen = self.phase(sale)
        while seen != phase and time.monotonic() < deadline:
            time.sleep(0.5)
            seen = self.phase(sale)
        return seen
