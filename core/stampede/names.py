"""Every name that more than one process must agree on: Redis keys, CRD coordinates, task and queue
names, condition types, label keys. A rename here is a rename everywhere. Statuses, states, reasons and
dependency names are ``stampede.vocabulary``'s."""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from functools import cache

from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

# Kubernetes names (DNS-1123 labels) are what sales are called; they can never hold '{' or '}', so
# the hash tag below is always well formed. ``\Z``, not ``$``: ``$`` also matches before a final newline.
SALE_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\Z")
_LABEL = r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?"
# A sale id: ``<namespace>/<name>`` (both DNS-1123 labels). A bare ``<name>`` is an id too, for callers that
# serve a single tenant (the stock-engine benchmark, the strategies, tests of the core).
SALE_ID_RE = re.compile(rf"^({_LABEL}/)?{_LABEL}\Z")
SALE_ID_SEPARATOR = "/"
# The namespace of the local stack, the demo and of an API that is not told its own.
DEFAULT_NAMESPACE = "default"

KEY_PREFIX = "stampede"
# Stock buckets of one sale (``spec.stock.buckets``; "Stock buckets" in docs/architecture.md).
BUCKETS_MAX = 64
BUCKET_SEPARATOR = "@"  # never in a sale id, so ``<sale>@<n>`` never names another sale's tag

# --- CRD -----------------------------------------------------------------------------------------
CRD_GROUP = "stampede.dev"
CRD_VERSION = "v1alpha1"
CRD_KIND = "FlashSale"
CRD_PLURAL = "flashsales"
CRD_SHORT_NAME = "fs"
FINALIZER = f"{CRD_GROUP}/finalizer"

# --- labels --------------------------------------------------------------------------------------
LABEL_SALE = f"{CRD_GROUP}/sale"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_NAME = "app.kubernetes.io/name"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"

# --- condition types -----------------------------------------------------------------------------
COND_SEEDED = "Seeded"
COND_READY = "Ready"
COND_RECONCILED = "Reconciled"
COND_DRIFTED = "Drifted"

# --- jobs ----------------------------------------------------------------------------------------
QUEUE_SETTLE = "settle"
TASK_SETTLE_BATCH = "stampede.settle_batch"

# --- operator: components of a sale, peering --------------------------------
COMPONENT_API = "api"
COMPONENT_WORKER = "worker"
APP_NAME = "stampede"
MANAGER = "stampede-operator"
ANNOTATION_PREFIX = CRD_GROUP  # where kopf keeps its progress and diff-base annotations
PEERING_GROUP = "kopf.dev"
PEERING_VERSION = "v1"


def component_name(sale: str, component: str) -> str:
    """Name of a sale's Deployment/Service: ``<sale>-api``, ``<sale>-worker``."""
    return f"{sale}-{component}"


def sale_id(namespace: str, name: str) -> str:
    """The one identity of a FlashSale everywhere below Kubernetes (Redis keys, ledger rows, job payloads,
    metrics and logs): ``<namespace>/<name>``, so two sales of one name in two namespaces are two sales.
    Built only here; an empty namespace gives the bare name (a single-tenant caller)."""
    if not SALE_NAME_RE.match(name):
        raise ValueError(f"invalid sale name {name!r}: lowercase letters, digits and '-', 1-63 chars")
    if not namespace:
        return name
    if not SALE_NAME_RE.match(namespace):
        raise ValueError(f"invalid namespace {namespace!r}: lowercase letters, digits and '-', 1-63 chars")
    return f"{namespace}{SALE_ID_SEPARATOR}{name}"


def split_sale_id(sale: str) -> tuple[str, str]:
    """(namespace, name) of a sale id; the namespace is '' for a bare name."""
    namespace, _, name = check_sale(sale).rpartition(SALE_ID_SEPARATOR)
    return namespace, name


def check_sale(sale: str) -> str:
    """Returns the sale id if it is ``[<namespace>/]<name>`` of Kubernetes names, else raises ValueError."""
    if not SALE_ID_RE.match(sale):
        raise ValueError(
            f"invalid sale {sale!r}: [<namespace>/]<name>, each lowercase letters, digits and '-', 1-63 chars"
        )
    return sale


@dataclass(frozen=True, slots=True)
class SaleKeys:
    """The Redis keys of one sale. All carry the hash tag ``{sale}`` (the sale id, namespace included) so
    a whole sale lives in one Redis Cluster slot and every script touching it is single-slot. A sale of
    several stock buckets has one such set per bucket, each under its own tag (``bucket_keys``); ``tag``
    '' is the sale id itself, bucket 0."""

    sale: str
    tag: str = ""

    @property
    def base(self) -> str:
        return f"{KEY_PREFIX}:{{{self.tag or self.sale}}}"

    @property
    def meta(self) -> str:
        """Hash of counters and config: total, remaining, pending, confirmed, released, open, limit…, and
        ``run``: the Redis run_id the sale was last restored under."""
        return f"{self.base}:meta"

    @property
    def reservations(self) -> str:
        """Hash of pending reservations: id -> 'state|quantity|reserved_at_ms|user'. Settled ones move to
        the compact :attr:`settled` store."""
        return f"{self.base}:res"

    @property
    def pending(self) -> str:
        """Sorted set of pending reservation ids scored by reserve time (ms), for the reconciler."""
        return f"{self.base}:pending"

    @property
    def holds(self) -> str:
        """Hash user -> units held (pending + confirmed), for the per-user limit."""
        return f"{self.base}:holds"

    @property
    def settled(self) -> str:
        """Directory of the settled reservations (``lua/smallhash.lua``): reservation id -> +qty (confirmed)
        / -qty (released); its buckets are ``bucket(settled, i)``."""
        return f"{self.base}:settled"

    @staticmethod
    def bucket(directory: str, index: int) -> str:
        """Bucket ``index`` of a store kept as many small hashes (``lua/smallhash.lua``): 'buckets' and
        'count' in the directory hash, the fields in its buckets."""
        return f"{directory}:{index}"

    @property
    def moves_out(self) -> str:
        """Hash move id -> 'to|units': stock this bucket gave to another bucket and the receiver has not
        acknowledged yet (``lua/give.lua``)."""
        return f"{self.base}:mv:out"

    @property
    def moves_in(self) -> str:
        """Hash move id -> units: moves this bucket received, so a move is never counted twice
        (``lua/take.lua``)."""
        return f"{self.base}:mv:in"

    @property
    def idempotency(self) -> str:
        """Hash 'user\\0idempotency-key' -> reservation id."""
        return f"{self.base}:idem"

    @property
    def restore_lock(self) -> str:
        """String holding the token of the one process restoring the sale from the ledger (expires)."""
        return f"{self.base}:restore"

    # --- the waiting room (stampede.waitroom; lua/room.lua) -------------------------------------------

    @property
    def room_config(self) -> str:
        """Hash of the room's settings: on, open_ms, start_ms, end_ms, rate (reserve.lua reads ``on``)."""
        return f"{self.base}:wr:cfg"

    @property
    def room_queue(self) -> str:
        """Sorted set ticket -> score: early tickets a hidden uniform draw below 2^52, late ones 2^52 + arrival."""
        return f"{self.base}:wr:queue"

    @property
    def room_buyers(self) -> str:
        """Hash buyer -> ticket: one ticket per buyer."""
        return f"{self.base}:wr:buyers"

    @property
    def room_tickets(self) -> str:
        """Hash ticket -> buyer: only its buyer may poll a ticket."""
        return f"{self.base}:wr:tickets"

    @property
    def room_admitted(self) -> str:
        """Hash ticket -> Redis time (ms) of its first answer as admitted; the admission token expires from it."""
        return f"{self.base}:wr:admitted"

    @property
    def room_polls(self) -> str:
        """Hash ticket -> Redis time (ms) of its last poll, for the per-ticket poll interval."""
        return f"{self.base}:wr:polls"

    @property
    def room_clock(self) -> str:
        """Hash of the admission cursor (positions admitted), its Redis time, the late-arrival counter and
        the number of early tickets."""
        return f"{self.base}:wr:clock"

    def room_all(self) -> tuple[str, ...]:
        """The waiting room's keys in the order ``lua/room.lua`` takes them (the sale's meta last, read only)."""
        return (
            self.room_config,
            self.room_queue,
            self.room_buyers,
            self.room_tickets,
            self.room_admitted,
            self.room_polls,
            self.room_clock,
            self.meta,
        )

    def buyer_bucket(self, user: str) -> str:
        return f"{self.base}:rl:u:{user}"

    def ip_bucket(self, ip: str) -> str:
        return f"{self.base}:rl:ip:{ip}"

    def all_static(self) -> tuple[str, ...]:
        """Every fixed key of the sale (rate-limit buckets expire by themselves; the settled store's
        buckets are counted in :attr:`settled`)."""
        return (
            self.meta,
            self.reservations,
            self.pending,
            self.holds,
            self.idempotency,
            self.settled,
            self.restore_lock,
            self.moves_out,
            self.moves_in,
            *self.room_all()[:-1],
        )


def sale_keys(sale: str) -> SaleKeys:
    return SaleKeys(check_sale(sale))


@cache
def bucket_keys(sale: str, buckets: int) -> tuple[SaleKeys, ...]:
    """The keys of each of the sale's ``buckets`` stock buckets. Bucket 0 is the sale's own tag (so a sale of
    one bucket is laid out exactly as before buckets existed); bucket ``b`` > 0 is tagged ``<sale>@<b>.<k>``
    with the smallest ``k`` whose slot lies in its own N-th of the slot ring: the N buckets take one slot
    range each (bucket 0's range included), so on masters that own equal contiguous ranges, as
    ``redis-cli --cluster create`` makes them, N buckets spread over min(N, masters) masters evenly when N
    is a multiple of the masters."""
    check_sale(sale)
    if isinstance(buckets, bool) or not isinstance(buckets, int) or not 1 <= buckets <= BUCKETS_MAX:
        raise ValueError(f"buckets must be an integer from 1 to {BUCKETS_MAX}")
    width = REDIS_CLUSTER_HASH_SLOTS / buckets
    first = int(key_slot(sale.encode()) // width)
    out = [SaleKeys(sale)]
    for b in range(1, buckets):
        want = (first + b) % buckets
        k = 0
        while int(key_slot(f"{sale}{BUCKET_SEPARATOR}{b}.{k}".encode()) // width) != want:
            k += 1
        out.append(SaleKeys(sale, f"{sale}{BUCKET_SEPARATOR}{b}.{k}"))
    return tuple(out)


def home_bucket(user: str, buckets: int) -> int:
    """The bucket a buyer's reservations, holdings and idempotency keys live in: a stable hash of the buyer
    (CRC-32, the same in every process), so the per-user limit is one counter in one script."""
    return zlib.crc32(user.encode()) % buckets if buckets > 1 else 0
