"""The ``stampede`` command: operator-free chores around a sale (burst, audit, migrate, tokens).

Each subcommand is a small function registered with ``@command``; they read the same settings as the
processes, so ``STAMPEDE_REDIS_URL`` / ``STAMPEDE_DATABASE_URL`` point every one of them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable, Sequence

from .settings import Common, SettingsError, load

Handler = Callable[[argparse.Namespace], int]
_COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Handler]] = {}


def command(name: str, help: str, args: Callable[[argparse.ArgumentParser], None]) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        _COMMANDS[name] = (help, args, fn)
        return fn

    return register


def _burst_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sale", default="demo", help="sale name (default: demo)")
    p.add_argument("--stock", type=int, default=100)
    p.add_argument("--buyers", type=int, default=300, help="distinct buyers")
    p.add_argument("--attempts", type=int, default=1000, help="reserve attempts in all")
    p.add_argument("--limit", type=int, default=1, help="per-user limit")
    p.add_argument("--processes", type=int, default=4)
    p.add_argument("--concurrency", type=int, default=64, help="requests in flight per process")
    p.add_argument("--json", action="store_true", help="print the audit as JSON")


@command("burst", "race buyers against the stock engine and print the audit", _burst_args)
def _burst(ns: argparse.Namespace) -> int:
    from .burst import run_burst

    settings = load(Common)
    print(
        f"==> burst: {ns.attempts} reserves by {ns.buyers} buyers on stock {ns.stock} "
        f"(limit {ns.limit}, {ns.processes} processes x {ns.concurrency} in flight)",
        flush=True,
    )
    result = asyncio.run(
        run_burst(
            settings.redis_url,
            ns.sale,
            stock=ns.stock,
            buyers=ns.buyers,
            attempts=ns.attempts,
            per_user_limit=ns.limit,
            processes=ns.processes,
            concurrency=ns.concurrency,
        )
    )
    if ns.json:
        print(json.dumps(result.report.as_dict(), indent=2))
    else:
        refused = ", ".join(f"{k} {v}" for k, v in sorted(result.refusals.items())) or "none"
        print(
            f"==> {result.attempts} attempts in {result.seconds:.2f}s: accepted {len(result.accepted)}, "
            f"refused: {refused}"
        )
        print(result.report.render())
    return 0 if result.report.ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="stampede", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    for name, (help_text, add_args, fn) in sorted(_COMMANDS.items()):
        p = sub.add_parser(name, help=help_text)
        add_args(p)
        p.set_defaults(fn=fn)
    ns = parser.parse_args(argv)
    try:
        return int(ns.fn(ns))
    except SettingsError as exc:
        print(f"stampede: configuration error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
