"""Typed settings from ``STAMPEDE_*`` environment variables, one frozen dataclass per process kind.

Each field documents itself through ``setting(...)``; ``load(cls)`` reads the environment once at
start-up and fails with an error that names the variable, so a bad deploy stops at boot, not at the
first buyer.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar, get_type_hints

from .names import DEFAULT_NAMESPACE, SALE_NAME_RE
from .redact import redact_url, scrub
from .redis_url import SCHEMES as REDIS_SCHEMES
from .redis_url import is_cluster

PREFIX = "STAMPEDE_"

T = TypeVar("T")


class SettingsError(ValueError):
    """A variable is set to something its setting cannot take."""


def setting(default: Any, doc: str) -> Any:
    """A settings field with its documentation; the variable is ``STAMPEDE_<FIELD NAME>``."""
    return field(default=default, metadata={"doc": doc})


def _parse(name: str, raw: str, typ: Any) -> Any:
    try:
        if typ is bool:
            low = raw.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off", ""):
                return False
            raise ValueError("expected true/false")
        if typ is int:
            return int(raw)
        if typ is float:
            return float(raw)
        if typ is tuple[str, ...]:
            return tuple(p.strip() for p in raw.split(",") if p.strip())
        return raw
    except ValueError as exc:
        raise SettingsError(f"{name}={scrub(raw)!r}: {scrub(str(exc))}") from None


def load(cls: type[T], env: Mapping[str, str] | None = None, **overrides: Any) -> T:
    """Builds ``cls`` from the environment (or ``env``); ``overrides`` win over both."""
    source = os.environ if env is None else env
    hints = get_type_hints(cls)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name in overrides:
            values[f.name] = overrides[f.name]
            continue
        var = PREFIX + f.name.upper()
        if var in source:
            values[f.name] = _parse(var, source[var], hints[f.name])
    obj = cls(**values)
    validate = getattr(obj, "validate", None)
    if validate is not None:
        validate()
    return obj


def describe(cls: type[Any]) -> list[tuple[str, Any, str]]:
    """(variable, default, doc) for every setting of ``cls``: the source of the documented tables."""
    return [(PREFIX + f.name.upper(), f.default, f.metadata.get("doc", "")) for f in dataclasses.fields(cls)]


def _url_problem(var: str, url: str) -> str | None:
    """What the client library would refuse in ``url`` when it first connects, found at start-up instead
    (its own message may quote the whole URL: the caller scrubs it)."""
    try:
        if var == "STAMPEDE_DATABASE_URL":
            from psycopg.conninfo import conninfo_to_dict

            conninfo_to_dict(url)
        else:
            from redis.connection import parse_url

            from .redis_url import client_url, cluster_problem, is_cluster

            if is_cluster(url) and (problem := cluster_problem(url)):
                return problem
            parse_url(client_url(url))  # type: ignore[no-untyped-call]
    except Exception as exc:
        return str(exc) or type(exc).__name__
    return None


_HEADER_NAME = re.compile(r"[A-Za-z0-9-]{1,64}")
_INT_OR_PERCENT = re.compile(r"[0-9]{1,9}%?")
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
# What a sale's pod template may set (spec.api.template, spec.workers.template and the operator's defaults).
POD_TEMPLATE_FIELDS = (
    "resources",
    "nodeSelector",
    "affinity",
    "tolerations",
    "topologySpreadConstraints",
    "priorityClassName",
)


def pod_template(name: str, raw: str) -> dict[str, Any]:
    """The pod template defaults held in setting ``name`` (JSON), or SettingsError naming the variable."""
    if not raw.strip():
        return {}
    var = f"STAMPEDE_{name.upper()}"
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise SettingsError(f"{var} must be a JSON object: {exc}") from None
    if not isinstance(value, dict):
        raise SettingsError(f"{var} must be a JSON object")
    unknown = sorted(set(value) - set(POD_TEMPLATE_FIELDS))
    if unknown:
        raise SettingsError(f"{var} may hold only {', '.join(POD_TEMPLATE_FIELDS)}; not {', '.join(unknown)}")
    return {k: v for k, v in value.items() if v not in (None, "", [], {})}


def _positive(name: str, value: float) -> None:
    if value <= 0:
        raise SettingsError(f"{PREFIX}{name.upper()} must be > 0, got {value}")


@dataclass(frozen=True)
class Common:
    """What every process needs to reach the shared state."""

    redis_url: str = setting(
        "redis://127.0.0.1:6379/0",
        "Redis holding the hot counters; redis+cluster://host:port (rediss+cluster:// with TLS) for a Redis Cluster",
    )
    database_url: str = setting("postgresql://stampede@127.0.0.1:5432/stampede", "PostgreSQL ledger and queue")
    redis_max_connections: int = setting(64, "Redis connection pool size per process")
    redis_ack_replicas: int = setting(
        -1,
        "replicas that must hold a reservation (Redis WAIT) before it is written to the ledger and answered 202; "
        "-1: 1 on a Redis Cluster, 0 on a single Redis",
    )
    redis_ack_timeout_ms: int = setting(1000, "how long a reserve waits for those replicas before answering 503")
    db_pool_min: int = setting(1, "smallest PostgreSQL pool per process")
    db_pool_max: int = setting(8, "largest PostgreSQL pool per process")
    db_timeout_s: float = setting(5.0, "seconds to wait for a PostgreSQL connection before answering 'unavailable'")
    settle_shards: int = setting(4, "shards of a sale's pending rows: at most this many settle jobs wait per sale")
    log_level: str = setting("INFO", "root log level")
    log_json: bool = setting(True, "structured JSON logs (false: plain text for a terminal)")

    @property
    def ack_replicas(self) -> int:
        """``redis_ack_replicas`` resolved: -1 means 1 on a Redis Cluster (whose failover promotes a replica,
        which must then hold every reservation a buyer was told about) and 0 on a single Redis."""
        if self.redis_ack_replicas >= 0:
            return self.redis_ack_replicas
        return 1 if is_cluster(self.redis_url) else 0

    def validate(self) -> None:
        _positive("redis_max_connections", self.redis_max_connections)
        _positive("redis_ack_timeout_ms", self.redis_ack_timeout_ms)
        if self.redis_ack_replicas < -1:
            raise SettingsError(f"STAMPEDE_REDIS_ACK_REPLICAS must be >= -1, got {self.redis_ack_replicas}")
        _positive("db_pool_max", self.db_pool_max)
        _positive("db_timeout_s", self.db_timeout_s)
        _positive("settle_shards", self.settle_shards)
        if self.settle_shards > 1000:
            raise SettingsError(f"STAMPEDE_SETTLE_SHARDS must be <= 1000, got {self.settle_shards}")
        if self.db_pool_min > self.db_pool_max:
            raise SettingsError("STAMPEDE_DB_POOL_MIN must not exceed STAMPEDE_DB_POOL_MAX")
        for var, url, schemes in (
            ("STAMPEDE_REDIS_URL", self.redis_url, REDIS_SCHEMES),
            ("STAMPEDE_DATABASE_URL", self.database_url, ("postgresql://", "postgres://")),
        ):
            # Every message about a URL shows it without its password.
            if not url.startswith(schemes):
                raise SettingsError(f"{var}={redact_url(url)!r}: expected a URL starting with {' or '.join(schemes)}")
            problem = _url_problem(var, url)
            if problem:
                raise SettingsError(f"{var}={redact_url(url)!r}: {scrub(problem)}")


@dataclass(frozen=True)
class StockSettings(Common):
    """The stock engine on its own (the burst command, benchmarks)."""


@dataclass(frozen=True)
class WorkerSettings(Common):
    """The procrastinate worker that settles batches of reservations (``python -m stampede_worker``)."""

    worker_concurrency: int = setting(8, "settle_batch jobs run at once by one worker process")
    worker_metrics_host: str = setting("0.0.0.0", "address of the /metrics and /healthz endpoint")
    worker_metrics_port: int = setting(9102, "port of the /metrics and /healthz endpoint (0: none)")
    worker_max_retries: int = setting(5, "retries of a job after a transient error before compensating")
    worker_retry_base_s: float = setting(0.5, "first retry delay; doubles each retry (exponential backoff)")
    worker_retry_max_s: float = setting(30.0, "longest retry delay")
    worker_heartbeat_s: float = setting(5.0, "how often a worker tells PostgreSQL it is alive")
    worker_stalled_s: float = setting(30.0, "a worker silent this long is dead: its running jobs are retried")
    worker_shutdown_timeout_s: float = setting(20.0, "on SIGTERM, seconds in-flight jobs get to finish")
    worker_delete_jobs: str = setting("never", "delete finished jobs: never | successful | always")
    worker_poll_s: float = setting(2.0, "job polling interval besides LISTEN/NOTIFY wake-ups")
    worker_depth_interval_s: float = setting(5.0, "how often the queue depth gauge is refreshed")
    worker_claim_max: int = setting(1000, "most pending rows a settle job claims and settles in one transaction")
    worker_hold_sweep_s: float = setting(1.0, "how often a worker expires the checkout holds that are due")
    worker_hold_sweep_max: int = setting(1000, "most holds one sweep statement expires (a sweep repeats while full)")
    worker_hold_return_after_s: float = setting(
        10.0, "an expired hold whose units Redis has not taken back this long after is given back again"
    )
    worker_fault_sleep_ms: int = setting(0, "fault injection for tests: sleep between ledger and Redis writes")
    worker_fault_expire_sleep_ms: int = setting(
        0, "fault injection for tests: sleep between a sweep's ledger expiry and its Redis write"
    )
    worker_fault_claim_sleep_ms: int = setting(0, "fault injection for tests: sleep inside a claim, rows locked")

    def validate(self) -> None:
        super().validate()
        for name in (
            "worker_concurrency",
            "worker_claim_max",
            "worker_retry_base_s",
            "worker_heartbeat_s",
            "worker_stalled_s",
            "worker_hold_sweep_s",
            "worker_hold_sweep_max",
            "worker_hold_return_after_s",
        ):
            _positive(name, getattr(self, name))
        if self.worker_max_retries < 0:
            raise SettingsError("STAMPEDE_WORKER_MAX_RETRIES must be >= 0")
        if self.worker_stalled_s <= self.worker_heartbeat_s:
            raise SettingsError("STAMPEDE_WORKER_STALLED_S must exceed STAMPEDE_WORKER_HEARTBEAT_S")
        if self.worker_delete_jobs not in ("never", "successful", "always"):
            raise SettingsError("STAMPEDE_WORKER_DELETE_JOBS must be never, successful or always")


@dataclass(frozen=True)
class ApiSettings(Common):
    """The Falcon buy API under gunicorn: where it listens, how many worker processes, how buyers
    authenticate, and the limits a request must stay within."""

    bind: str = setting("127.0.0.1:8000", "gunicorn bind address (host:port or unix:path)")
    workers: int = setting(2, "gunicorn worker processes (one event loop and one batch flusher each)")
    timeout_s: int = setting(30, "gunicorn worker timeout: a silent worker is restarted after this")
    graceful_timeout_s: int = setting(15, "seconds a worker gets to finish in-flight requests on reload/stop")
    keepalive_s: int = setting(5, "HTTP keep-alive seconds")
    backlog: int = setting(2048, "listen backlog")
    max_requests: int = setting(0, "recycle a worker after this many requests (0: never)")
    jwt_secret: str = setting("", "HS256 secret that signs buyer tokens (required, at least 32 characters)")
    jwt_issuer: str = setting("stampede", "expected `iss` of buyer tokens")
    jwt_audience: str = setting("stampede-api", "expected `aud` of buyer tokens")
    jwt_leeway_s: int = setting(5, "clock skew tolerated on `exp`/`iat`, seconds")
    jwt_max_ttl_s: int = setting(3600, "tokens living longer than this (exp - iat) are refused")
    token_cache_entries: int = setting(
        16384, "verified tokens each worker process remembers, least recently used first out (~0.5 KB each; 0: off)"
    )
    max_body_bytes: int = setting(4096, "largest request body accepted (413 above)")
    max_quantity: int = setting(100, "largest quantity one request may ask for (the per-user limit still applies)")
    retry_after_s: int = setting(1, "Retry-After seconds sent with 503 answers")
    replay_wait_ms: int = setting(1000, "how long an idempotent replay waits for its first attempt to commit")
    batch_max: int = setting(2000, "most reservations one ledger transaction carries")
    sold_out_cache_ms: int = setting(
        100, "after Redis says a sale has 0 units, answer sold_out for this long without asking (0: off)"
    )
    sale_namespace: str = setting(
        DEFAULT_NAMESPACE,
        "namespace whose FlashSales this API serves: /v1/sales/<name> is sale <namespace>/<name> (the operator "
        "sets it; empty: sales are addressed by their bare id, single-tenant)",
    )
    trusted_proxy_hops: int = setting(
        0,
        "proxies in front of the API that append to the client-IP header; the address that many entries from "
        "the right is the client's (0: the TCP peer, the header is ignored)",
    )
    client_ip_header: str = setting(
        "X-Forwarded-For", "the header the trusted proxies append the client address to (X-Forwarded-For or Forwarded)"
    )
    metrics_port: int = setting(
        9101, "port of the Prometheus /metrics of all worker processes, apart from buyers (0: none)"
    )
    metrics_host: str = setting("0.0.0.0", "address the /metrics port listens on")
    max_header_bytes: int = setting(16384, "largest request line plus headers accepted (431 above)")
    header_timeout_s: float = setting(10.0, "seconds a client gets to send a whole request head (then 408/closed)")
    idle_timeout_s: float = setting(60.0, "seconds a new connection may stay without sending a byte (then closed)")
    readiness_cache_ms: int = setting(1000, "how long one /readyz check of Redis and PostgreSQL is reused")
    public_read_rate: float = setting(
        10.0, "reads per second per client of GET /v1/sales/{sale} and per buyer of polls"
    )
    public_read_burst: int = setting(20, "burst of those reads before 429")
    admission_token_ttl_s: int = setting(
        120, "waiting room: seconds an admitted buyer's admission token lets them buy (admission is given once)"
    )
    queue_poll_interval_ms: int = setting(
        500, "waiting room: least time between two polls of one ticket (sooner: 429, the place unchanged)"
    )
    strategies_enabled: bool = setting(False, "expose the /api/v1..v4/buy demonstration strategies (never in prod)")
    environment: str = setting(
        "production", "production | development: development-only features (demo buyers) are refused in production"
    )
    live_page: bool = setting(
        False, "serve the live sale page on /live (public reads, like GET /v1/sales/{sale}; SSE from the counters)"
    )
    live_interval_ms: int = setting(500, "how often the live page's counters are sampled (one sampler per sale)")
    live_max_streams: int = setting(64, "most live page event streams one worker process holds open (429 past it)")
    live_stream_s: float = setting(
        30.0, "seconds an event stream lasts before the browser reconnects (bounds how long a stop waits for it)"
    )
    demo_buyers: bool = setting(
        False,
        "the live page's buy button: POST /live/demo-token mints a short-lived token for a new demo buyer "
        "(development only: refused at start-up unless STAMPEDE_ENVIRONMENT=development)",
    )
    access_log: bool = setting(False, "gunicorn access log (off: it costs throughput at flash-sale rates)")
    fault_exit_after_reserves: int = setting(
        0, "fault injection for tests: a worker process exits after N reserves, before their ledger write (0: never)"
    )

    def validate(self) -> None:
        super().validate()
        if len(self.jwt_secret) < 32:
            raise SettingsError("STAMPEDE_JWT_SECRET must be set to at least 32 characters")
        for name in ("workers", "timeout_s", "max_body_bytes", "max_quantity", "batch_max", "jwt_max_ttl_s"):
            _positive(name, getattr(self, name))
        if self.retry_after_s < 1:
            raise SettingsError("STAMPEDE_RETRY_AFTER_S must be >= 1")
        if self.token_cache_entries < 0:
            raise SettingsError("STAMPEDE_TOKEN_CACHE_ENTRIES must be >= 0 (0: no cache)")
        if self.sale_namespace and not SALE_NAME_RE.match(self.sale_namespace):
            raise SettingsError("STAMPEDE_SALE_NAMESPACE must be a Kubernetes namespace name (or empty)")
        for name in ("admission_token_ttl_s", "queue_poll_interval_ms"):
            _positive(name, getattr(self, name))
        for name in ("max_header_bytes", "header_timeout_s", "idle_timeout_s", "public_read_rate", "public_read_burst"):
            _positive(name, getattr(self, name))
        if self.trusted_proxy_hops < 0:
            raise SettingsError("STAMPEDE_TRUSTED_PROXY_HOPS must be >= 0")
        if not _HEADER_NAME.fullmatch(self.client_ip_header):
            raise SettingsError("STAMPEDE_CLIENT_IP_HEADER must be an HTTP header name")
        if not 0 <= self.metrics_port <= 65535:
            raise SettingsError("STAMPEDE_METRICS_PORT must be a port number (0: none)")
        if self.readiness_cache_ms < 0:
            raise SettingsError("STAMPEDE_READINESS_CACHE_MS must be >= 0")
        if self.environment not in ("production", "development"):
            raise SettingsError("STAMPEDE_ENVIRONMENT must be production or development")
        for name in ("live_interval_ms", "live_max_streams", "live_stream_s"):
            _positive(name, getattr(self, name))
        if self.demo_buyers and self.environment != "development":
            # Anyone who can reach the page could mint buyer tokens: never where the sale is real.
            raise SettingsError(
                "STAMPEDE_DEMO_BUYERS=true mints buyer tokens for anyone: it is refused unless "
                "STAMPEDE_ENVIRONMENT=development"
            )
        if self.demo_buyers and not self.live_page:
            raise SettingsError("STAMPEDE_DEMO_BUYERS=true needs STAMPEDE_LIVE_PAGE=true (the button is on that page)")


@dataclass(frozen=True)
class OperatorSettings(Common):
    """The kopf operator (``kopf run -m stampede_operator.main``): what it puts into the sale's pods, how it
    elects a leader among its replicas, and how long it waits for things."""

    secret_name: str = setting(
        "stampede-env",
        "Secret in the sale's namespace holding STAMPEDE_REDIS_URL and STAMPEDE_DATABASE_URL (API and worker pods) "
        "and STAMPEDE_JWT_SECRET (API pods only)",
    )
    sale_service_account: str = setting(
        "stampede-sale", "ServiceAccount of the sale's API and worker pods (no token is mounted; it needs no rights)"
    )
    api_image: str = setting("stampede-api:latest", "image of the sale's API Deployment")
    worker_image: str = setting("stampede-worker:latest", "image of the sale's worker Deployment")
    image_pull_policy: str = setting("IfNotPresent", "imagePullPolicy of the sale's pods")
    api_port: int = setting(8000, "port the API container listens on (and the Service targets)")
    api_metrics_port: int = setting(
        9101, "port of the API pods' /metrics (container port `metrics`, not in the Service)"
    )
    api_trusted_proxy_hops: int = setting(
        0,
        "proxies in front of the sales' API pods that append the client address (a FlashSale's spec.api may override)",
    )
    api_client_ip_header: str = setting(
        "X-Forwarded-For", "the header those proxies append to (a FlashSale's spec.api may override)"
    )
    worker_metrics_port: int = setting(9102, "port of the worker's /metrics and /healthz endpoint in its pods")
    peering_name: str = setting("stampede", "kopf peering object the replicas elect their leader in")
    peering_priority: int = setting(0, "this replica's priority; 0: derived from the pod name so replicas differ")
    peering_lifetime_s: int = setting(60, "seconds a silent leader is still believed alive by the standbys")
    standalone: bool = setting(False, "run without peering (a single replica, development)")
    delete_drain_timeout_s: float = setting(30.0, "longest a deleted sale waits for its queued jobs to settle")
    reconcile_batch_max: int = setting(1000, "most reservations one healing action (job, release) carries")
    drift_confirmations: int = setting(2, "consecutive passes a drift must persist before Drifted=True + Event")
    operator_metrics_port: int = setting(9103, "port of the operator's Prometheus /metrics (0: none)")
    api_pod_template: str = setting(
        "",
        "JSON object: defaults for every sale's API pods (resources, nodeSelector, affinity, tolerations, "
        "topologySpreadConstraints, priorityClassName); a FlashSale's spec.api.template overrides each field",
    )
    worker_pod_template: str = setting(
        "", "JSON object: the same defaults for every sale's worker pods (spec.workers.template overrides them)"
    )
    image_pull_secrets: str = setting("", "comma-separated Secrets every sale pod pulls its image with")
    autoscale_cooldown_s: float = setting(
        60.0, "least seconds between an autoscaler's change of a sale's workers and a scale-down after it"
    )
    api_pdb_max_unavailable: str = setting(
        "1", "maxUnavailable of each sale's API PodDisruptionBudget (an integer or a percentage; empty: no PDB)"
    )

    @property
    def pull_secrets(self) -> tuple[str, ...]:
        return tuple(n.strip() for n in self.image_pull_secrets.split(",") if n.strip())

    def validate(self) -> None:
        super().validate()
        for name in (
            "api_port",
            "api_metrics_port",
            "worker_metrics_port",
            "peering_lifetime_s",
            "delete_drain_timeout_s",
            "autoscale_cooldown_s",
        ):
            _positive(name, getattr(self, name))
        if self.api_trusted_proxy_hops < 0:
            raise SettingsError("STAMPEDE_API_TRUSTED_PROXY_HOPS must be >= 0")
        if not _HEADER_NAME.fullmatch(self.api_client_ip_header):
            raise SettingsError("STAMPEDE_API_CLIENT_IP_HEADER must be an HTTP header name")
        _positive("reconcile_batch_max", self.reconcile_batch_max)
        _positive("drift_confirmations", self.drift_confirmations)
        if not 0 <= self.operator_metrics_port <= 65535:
            raise SettingsError("STAMPEDE_OPERATOR_METRICS_PORT must be a port number (0: none)")
        if self.peering_priority < 0:
            raise SettingsError("STAMPEDE_PEERING_PRIORITY must be >= 0 (0: derived from the pod name)")
        for name in ("api_pod_template", "worker_pod_template"):
            pod_template(name, getattr(self, name))
        if any(not _DNS_LABEL.fullmatch(n) for n in self.pull_secrets):
            raise SettingsError("STAMPEDE_IMAGE_PULL_SECRETS must be Secret names separated by commas")
        if self.api_pdb_max_unavailable and not _INT_OR_PERCENT.fullmatch(self.api_pdb_max_unavailable):
            raise SettingsError("STAMPEDE_API_PDB_MAX_UNAVAILABLE must be an integer or a percentage such as 25%")
        if not self.secret_name:
            raise SettingsError("STAMPEDE_SECRET_NAME must name the Secret of the sale's pods")
        if not self.sale_service_account:
            raise SettingsError("STAMPEDE_SALE_SERVICE_ACCOUNT must name the ServiceAccount of the sale's pods")
