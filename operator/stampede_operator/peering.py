"""Leader election among the operator's replicas, through kopf's peering.

kopf's peering is priority-based: every replica writes a keep-alive into a peering object, and a replica that
sees a live peer with a higher priority pauses; equal priorities pause every replica (nobody acts). So each
replica needs its own priority: the settings may give one, else it is derived from the pod name, which a
Deployment makes unique per replica. A leader that stops cleanly removes its record at once; one that dies
is believed alive for ``peering_lifetime_s``, after which the standby with the next priority takes over.

The peering CRDs and the peering object are built here (the chart ships the same manifests; tests apply
them), because kopf only patches a peering object, it never creates one.
"""

from __future__ import annotations

import os
import socket
import zlib
from typing import Any

from stampede import names
from stampede_operator.settings import OperatorSettings

PRIORITY_SPAN = 1_000_000


def priority_for(settings: OperatorSettings, pod_name: str | None = None) -> int:
    """This replica's priority: the configured one, else a stable number in 1..PRIORITY_SPAN from the pod
    name (POD_NAME, else the host name, which is the pod name in Kubernetes)."""
    if settings.peering_priority > 0:
        return int(settings.peering_priority)
    name = pod_name or os.environ.get("POD_NAME") or socket.gethostname()
    return 1 + zlib.crc32(name.encode()) % PRIORITY_SPAN


def _crd(kind: str, plural: str, scope: str) -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{names.PEERING_GROUP}"},
        "spec": {
            "scope": scope,
            "group": names.PEERING_GROUP,
            "names": {"kind": kind, "plural": plural, "singular": kind.lower()},
            "versions": [
                {
                    "name": names.PEERING_VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {"status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}},
                        }
                    },
                }
            ],
        },
    }


def build_peering_crds() -> list[dict[str, Any]]:
    """kopf's two peering CRDs (cluster-wide and namespaced), as kopf documents them."""
    return [
        _crd("ClusterKopfPeering", "clusterkopfpeerings", "Cluster"),
        _crd("KopfPeering", "kopfpeerings", "Namespaced"),
    ]


def build_peering_object(settings: OperatorSettings, namespace: str | None = None) -> dict[str, Any]:
    """The peering object the replicas meet in: cluster-wide (``namespace`` None: an operator run with
    ``--all-namespaces``, as kopf decides), or in ``namespace`` (an operator run with ``--namespace``)."""
    if namespace is None:
        return {
            "apiVersion": f"{names.PEERING_GROUP}/{names.PEERING_VERSION}",
            "kind": "ClusterKopfPeering",
            "metadata": {"name": settings.peering_name},
        }
    return {
        "apiVersion": f"{names.PEERING_GROUP}/{names.PEERING_VERSION}",
        "kind": "KopfPeering",
        "metadata": {"name": settings.peering_name, "namespace": namespace},
    }


def main(argv: list[str] | None = None) -> None:
    """Prints the peering CRDs (``crds``) or the cluster-wide peering object (``object``) as a JSON List for
    ``kubectl apply -f -`` (``make operator``); the CRDs must be Established before the object is applied."""
    import json
    import sys

    from stampede.settings import load

    what = (argv if argv is not None else sys.argv[1:]) or ["crds"]
    items = build_peering_crds() if what[0] == "crds" else [build_peering_object(load(OperatorSettings))]
    print(json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))


if __name__ == "__main__":
    main()
