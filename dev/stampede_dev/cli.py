"""The ``stampede`` command: chores around a sale that need no running process (migrate, audit, tokens, burst).

Each subcommand is a small function registered with ``@command``; they read the same settings as the
processes, so ``STAMPEDE_REDIS_URL`` / ``STAMPEDE_DATABASE_URL`` point every one of them. The images run two of
them (``migrate`` in the operator's init container, ``audit`` in ``helm test``), so this module imports only the
standard library and the core at load time, and each subcommand imports what it needs when it runs.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import json
import sys
import traceback
from collections.abc import Callable, Sequence

from stampede.errors import StampedeError
from stampede.names import DEFAULT_NAMESPACE, SALE_ID_SEPARATOR, check_sale, sale_id
from stampede.redact import scrub
from stampede.settings import Common, SettingsError, load

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


def _mint_token_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("subject", nargs="?", default="buyer-1", help="buyer id (the token's sub; default buyer-1)")
    p.add_argument("--ttl", type=int, default=900, help="seconds the token lives (default 900)")
    p.add_argument(
        "--count", type=int, default=0, help="mint N tokens for <subject>-0..N-1, one 'sub<TAB>token' a line"
    )
    p.add_argument("--out", default="-", help="file to write (default: stdout)")


@command("mint-token", "mint HS256 buyer tokens with STAMPEDE_JWT_SECRET (dev, tests, k6)", _mint_token_args)
def _mint_token(ns: argparse.Namespace) -> int:
    from stampede.tokens import mint, mint_many
    from stampede_api.settings import ApiSettings

    s = load(ApiSettings)
    out = sys.stdout if ns.out == "-" else open(ns.out, "w", encoding="utf-8")  # noqa: SIM115
    try:
        if ns.count > 0:
            subjects = (f"{ns.subject}-{i}" for i in range(ns.count))
            for sub, token in mint_many(
                s.jwt_secret, subjects, ttl_s=ns.ttl, issuer=s.jwt_issuer, audience=s.jwt_audience
            ):
                out.write(f"{sub}\t{token}\n")
        else:
            token = mint(s.jwt_secret, ns.subject, ttl_s=ns.ttl, issuer=s.jwt_issuer, audience=s.jwt_audience)
            out.write(token + "\n")
    finally:
        if out is not sys.stdout:
            out.close()
    return 0


def _migrate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--database-url", default=None, help="PostgreSQL URL (default: STAMPEDE_DATABASE_URL)")
    p.add_argument(
        "--with-strategies",
        action="store_true",
        help="also create the tables of the demonstration strategies (/api/v1..v4/buy); never in production",
    )


@command("migrate", "apply the ledger and queue schema (idempotent, safe from several pods at once)", _migrate_args)
def _migrate(ns: argparse.Namespace) -> int:
    from stampede.migrate import migrate

    # Validated (and so reported without its password) like the variable, whichever way it came.
    url = load(Common, **({"database_url": ns.database_url} if ns.database_url else {})).database_url
    extra: list[tuple[str, str]] = []
    if ns.with_strategies:
        # Only here: the API's strategies are a demonstration, so their tables exist only where asked for.
        try:
            from stampede_api.strategies.schema import migration_files
        except ImportError as exc:
            print(
                f"stampede migrate: --with-strategies needs the API's dependencies (the api extra): {exc}",
                file=sys.stderr,
            )
            return 2
        extra = migration_files()
    try:
        result = asyncio.run(migrate(url, extra=extra))
    except StampedeError as exc:
        print(f"stampede migrate: {exc}", file=sys.stderr)
        return 1
    for name in result.applied:
        print(f"==> applied {name}")
    print(f"==> schema up to date ({len(result.applied)} applied, {len(result.already)} already there)")
    return 0


def _audit_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sale", required=True, help="sale: <namespace>/<name>, or a name in --namespace")
    p.add_argument(
        "--namespace", default=DEFAULT_NAMESPACE, help=f"namespace of a bare --sale (default {DEFAULT_NAMESPACE})"
    )
    p.add_argument("--k6-summary", default=None, help="k6 summary JSON: its 202 count must all be in the ledger")
    p.add_argument("--wait", type=float, default=60.0, help="seconds to wait for pending reservations to settle")
    p.add_argument("--json", action="store_true", help="print the audit as JSON")


@command(
    "audit", "wait for a sale to settle, then audit Redis and the ledger (non-zero exit on a violation)", _audit_args
)
def _audit(ns: argparse.Namespace) -> int:
    from pathlib import Path

    from stampede.ledger import Ledger
    from stampede.stock import StockEngine

    from .sale_audit import audit_sale, k6_accepted

    settings = load(Common)
    try:
        sale = check_sale(ns.sale) if SALE_ID_SEPARATOR in ns.sale else sale_id(ns.namespace, ns.sale)
    except ValueError as exc:
        print(f"stampede audit: {exc}", file=sys.stderr)
        return 2
    acknowledged = k6_accepted(Path(ns.k6_summary)) if ns.k6_summary else None

    async def run() -> int:
        ledger = await Ledger.open(settings)
        stock = StockEngine.from_url(settings.redis_url)
        try:
            report, lag, waited = await audit_sale(
                ledger, stock, sale, acknowledged=acknowledged, settle_timeout=ns.wait
            )
        finally:
            await stock.close()
            await ledger.close()
        if ns.json:
            print(json.dumps({**report.as_dict(), "lag": lag.__dict__, "settle_wait_s": waited}, indent=2))
        else:
            print(report.render())
            print(lag.render())
            print(f"  settled {waited:.1f}s after the audit began")
        return 0 if report.ok else 1

    return asyncio.run(run())


DESCRIPTION = """\
Chores around a Stampede flash sale. None of them needs a running API, worker or operator: each talks to
Redis and PostgreSQL itself, at the addresses in STAMPEDE_REDIS_URL and STAMPEDE_DATABASE_URL."""

EPILOG = """\
examples:
  stampede migrate                          bring the database to the schema of this version
  stampede audit --sale sneaker-drop        wait for the sale to settle, then check it (exit 1 on a violation)
  STAMPEDE_JWT_SECRET=... stampede mint-token buyer-42
  stampede burst --stock 100 --buyers 300   race buyers against the stock engine alone

Run `stampede COMMAND --help` for a command's options."""


def version() -> str:
    """The installed distribution's version (pyproject's ``version``)."""
    try:
        return importlib.metadata.version("stampede")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed)"


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="stampede",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    top.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    sub = top.add_subparsers(dest="cmd", required=True, metavar="COMMAND", title="commands")
    for name, (help_text, add_args, fn) in sorted(_COMMANDS.items()):
        p = sub.add_parser(name, help=help_text, description=help_text[0].upper() + help_text[1:] + ".")
        add_args(p)
        p.set_defaults(fn=fn)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    ns = parser().parse_args(argv)
    # Messages are scrubbed: a driver's error may quote a connection URL, password included.
    try:
        return int(ns.fn(ns))
    except SettingsError as exc:
        print(f"stampede: configuration error: {scrub(str(exc))}", file=sys.stderr)
        return 2
    except StampedeError as exc:
        print(f"stampede {ns.cmd}: {scrub(str(exc))}", file=sys.stderr)
        return 1
    except Exception:  # a bug or a driver's refusal: the traceback, scrubbed
        print(scrub(traceback.format_exc()), file=sys.stderr, end="")
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
