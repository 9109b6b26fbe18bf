"""The API's settings: gunicorn, buyer tokens and request limits, over the ``Common`` ones every process
reads."""

from __future__ import annotations

from dataclasses import dataclass

from stampede.names import DEFAULT_NAMESPACE, SALE_NAME_RE
from stampede.settings import HEADER_NAME, Common, SettingsError, positive, setting


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
            positive(name, getattr(self, name))
        if self.retry_after_s < 1:
            raise SettingsError("STAMPEDE_RETRY_AFTER_S must be >= 1")
        if self.token_cache_entries < 0:
            raise SettingsError("STAMPEDE_TOKEN_CACHE_ENTRIES must be >= 0 (0: no cache)")
        if self.sale_namespace and not SALE_NAME_RE.match(self.sale_namespace):
            raise SettingsError("STAMPEDE_SALE_NAMESPACE must be a Kubernetes namespace name (or empty)")
        for name in ("admission_token_ttl_s", "queue_poll_interval_ms"):
            positive(name, getattr(self, name))
        for name in ("max_header_bytes", "header_timeout_s", "idle_timeout_s", "public_read_rate", "public_read_burst"):
            positive(name, getattr(self, name))
        if self.trusted_proxy_hops < 0:
            raise SettingsError("STAMPEDE_TRUSTED_PROXY_HOPS must be >= 0")
        if not HEADER_NAME.fullmatch(self.client_ip_header):
            raise SettingsError("STAMPEDE_CLIENT_IP_HEADER must be an HTTP header name")
        if not 0 <= self.metrics_port <= 65535:
            raise SettingsError("STAMPEDE_METRICS_PORT must be a port number (0: none)")
        if self.readiness_cache_ms < 0:
            raise SettingsError("STAMPEDE_READINESS_CACHE_MS must be >= 0")
        if self.environment not in ("production", "development"):
            raise SettingsError("STAMPEDE_ENVIRONMENT must be production or development")
        for name in ("live_interval_ms", "live_max_streams", "live_stream_s"):
            positive(name, getattr(self, name))
        if self.demo_buyers and self.environment != "development":
            # Anyone who can reach the page could mint buyer tokens: never where the sale is real.
            raise SettingsError(
                "STAMPEDE_DEMO_BUYERS=true mints buyer tokens for anyone: it is refused unless "
                "STAMPEDE_ENVIRONMENT=development"
            )
        if self.demo_buyers and not self.live_page:
            raise SettingsError("STAMPEDE_DEMO_BUYERS=true needs STAMPEDE_LIVE_PAGE=true (the button is on that page)")
