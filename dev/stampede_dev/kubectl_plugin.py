"""``kubectl stampede``: a kubectl plugin (the console script ``kubectl-stampede``) for a FlashSale at a glance.

- ``kubectl stampede status SALE``: phase, counts, settle lag, drift, replicas, conditions and the last Events,
  read from the FlashSale's status and Events through kubectl (the same credentials and context).
- ``kubectl stampede audit SALE``: the integrity audit of the sale (``stampede audit``), against the Redis and
  PostgreSQL of ``STAMPEDE_REDIS_URL`` / ``STAMPEDE_DATABASE_URL``.

kubectl runs a plugin with its own flags stripped: ``-n/--namespace`` and ``--context`` are the plugin's, and
``KUBECTL`` names the kubectl binary to call (default: ``kubectl`` on PATH).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from stampede.names import CRD_GROUP, CRD_KIND, CRD_PLURAL, DEFAULT_NAMESPACE, sale_id
from stampede.vocabulary import SalePhase

EVENTS_SHOWN = 8


class PluginError(Exception):
    """What kubectl answered when it failed, for the user."""


def _kubectl(args: Sequence[str], context: str | None) -> str:
    cmd = [os.environ.get("KUBECTL", "kubectl"), *(["--context", context] if context else []), *args]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    except FileNotFoundError:
        raise PluginError(f"{cmd[0]} not found (set KUBECTL to the kubectl binary)") from None
    if done.returncode != 0:
        raise PluginError(done.stderr.strip() or f"{' '.join(cmd)} failed")
    return done.stdout


def current_namespace(context: str | None) -> str:
    """The namespace of kubectl's current context, as ``kubectl`` itself would use it."""
    out = _kubectl(["config", "view", "--minify", "-o", "jsonpath={..namespace}"], context).strip()
    return out or DEFAULT_NAMESPACE


def _age(stamp: str | None, now: datetime) -> str:
    if not stamp:
        return "-"
    seconds = int((now - datetime.fromisoformat(stamp.replace("Z", "+00:00"))).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{max(seconds, 0)}s"


def _replicas(node: Mapping[str, Any] | None) -> str:
    if not node:
        return "-"
    return f"{node.get('available', 0)}/{node.get('desired', 0)} available, {node.get('ready', 0)} ready"


def render_status(fs: Mapping[str, Any], events: Sequence[Mapping[str, Any]], now: datetime | None = None) -> str:
    """The FlashSale ``fs`` and its ``events`` as ``kubectl stampede status`` prints them."""
    now = now or datetime.now(UTC)
    meta, spec, st = fs["metadata"], fs.get("spec") or {}, fs.get("status") or {}
    conds = {c["type"]: c for c in st.get("conditions") or []}
    ready = conds.get("Ready", {})
    product = spec.get("product") or {}
    price = f" at {product['price']} {product.get('currency', '')}".rstrip() if product.get("price") else ""
    window = spec.get("window") or {}
    lines = [
        f"FlashSale {meta['namespace']}/{meta['name']}: {product.get('sku', '?')}{price}",
        f"  Phase:      {st.get('phase', SalePhase.PENDING)} - {st.get('phaseReason', 'not reconciled yet')}",
        f"  Ready:      {ready.get('status', 'Unknown')} ({ready.get('reason', '-')}: {ready.get('message', '')})",
        f"  Window:     {window.get('start', '?')} .. {window.get('end', '?')}",
        f"  Stock:      {st.get('stock', spec.get('stock', '?'))}  remaining {st.get('remaining', '-')}  "
        f"reserved {st.get('reserved', '-')}  confirmed {st.get('confirmed', '-')}  "
        f"compensated {st.get('compensated', '-')}",
        f"  Settle lag: {st.get('settleLagMs', 0)} ms (oldest pending reservation)",
        f"  Drift:      {st.get('drift', '-')}",
        f"  API:        {_replicas(st.get('api'))}",
        f"  Workers:    {_replicas(st.get('workers'))}"
        + (f" ({st['workers']['reason']})" if (st.get("workers") or {}).get("reason") else ""),
        f"  Reconciled: {_age(st.get('lastReconcileTime'), now)} ago",
        "",
        "Conditions:",
        f"  {'TYPE':<12}{'STATUS':<9}{'REASON':<24}{'AGE':<6}MESSAGE",
    ]
    for type_, c in sorted(conds.items()):
        age = _age(c.get("lastTransitionTime"), now)
        lines.append(f"  {type_:<12}{c.get('status', ''):<9}{c.get('reason', ''):<24}{age:<6}{c.get('message', '')}")
    lines += ["", "Last events:"]

    def when(e: Mapping[str, Any]) -> str:
        return str(e.get("lastTimestamp") or e.get("eventTime") or e["metadata"].get("creationTimestamp") or "")

    shown = sorted(events, key=when)[-EVENTS_SHOWN:]
    if not shown:
        lines.append("  (none)")
    for e in shown:
        lines.append(f"  {_age(when(e), now):<6}{e.get('type', ''):<9}{e.get('reason', ''):<18}{e.get('message', '')}")
    return "\n".join(lines)


def status(name: str, namespace: str, context: str | None) -> str:
    fs = json.loads(_kubectl(["get", f"{CRD_PLURAL}.{CRD_GROUP}", name, "-n", namespace, "-o", "json"], context))
    selector = f"involvedObject.name={name},involvedObject.kind={CRD_KIND}"
    events = json.loads(
        _kubectl(["get", "events", "-n", namespace, "--field-selector", selector, "-o", "json"], context)
    )
    return render_status(fs, events.get("items") or [])


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="kubectl stampede", description="A Stampede FlashSale at a glance.")
    top.add_argument("-n", "--namespace", default=None, help="the sale's namespace (default: the context's)")
    top.add_argument("--context", default=None, help="the kubeconfig context to use")
    sub = top.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    st = sub.add_parser("status", help="phase, counts, lag, drift, replicas, conditions and last events")
    st.add_argument("sale", help="the FlashSale's name")
    au = sub.add_parser("audit", help="audit the sale's Redis against its ledger (stampede audit)")
    au.add_argument("sale", help="the FlashSale's name")
    au.add_argument("--wait", type=float, default=60.0, help="seconds to wait for pending reservations to settle")
    au.add_argument("--json", action="store_true", help="print the audit as JSON")
    return top


def main(argv: Sequence[str] | None = None) -> int:
    ns = parser().parse_args(argv)
    try:
        namespace = ns.namespace or current_namespace(ns.context)
        sale = sale_id(namespace, ns.sale)  # refuses what is not a Kubernetes name before asking anyone
        if ns.cmd == "status":
            print(status(ns.sale, namespace, ns.context))
            return 0
        from .cli import main as stampede

        return stampede(["audit", "--sale", sale, "--wait", str(ns.wait), *(["--json"] if ns.json else [])])
    except (PluginError, ValueError) as exc:
        print(f"kubectl stampede: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
