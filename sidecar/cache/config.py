"""Cache service settings: the `cache:` section of the daemon config.

Every key has a default; the defaults give a memory-only cache on a unix socket (mode 0660)
with the namespaces of the application this sidecar was built for."""

from __future__ import annotations

from typing import Annotated

from pydantic import BeforeValidator, Field, model_validator

from sidecar.configtypes import ByteSize, Duration, Endpoint, Strict
from sidecar.net.security import is_loopback_host


def _octal(value: object) -> object:
    # YAML reads 0660 as the decimal 660 unless quoted; accept "0660"/"0o660" strings and
    # ints already in range, and refuse decimals that cannot be a mode
    if isinstance(value, str):
        text = value.strip().lower().removeprefix("0o")
        try:
            return int(text, 8)
        except ValueError as exc:
            raise ValueError(f"not an octal file mode: {value!r} (use e.g. \"0660\")") from exc
    return value


FileMode = Annotated[int, BeforeValidator(_octal), Field(ge=0, le=0o777)]


class NamespacePolicy(Strict):
    """What a key prefix (`<namespace>:...`) gets."""

    # applied when the client gives no expiry; null = no expiry (bounded by L1 memory only)
    ttl: Duration | None = None
    # client-given expiries are capped at this; null = no cap
    max_ttl: Duration | None = None
    max_value_size: ByteSize = Field(default=1024 * 1024, gt=0)
    # keep entries of this namespace in process memory (only meaningful with an L2)
    l1: bool = True
    # estimated cost in USD of recomputing one entry: hits x value_usd = money saved
    value_usd: float = Field(default=0.0, ge=0)

    @model_validator(mode="after")
    def _ttl_within_max(self) -> NamespacePolicy:
        if self.ttl is not None and self.ttl <= 0:
            raise ValueError("ttl must be positive (or null for no expiry)")
        if self.max_ttl is not None and self.ttl is not None and self.ttl > self.max_ttl:
            raise ValueError("ttl is larger than max_ttl")
        return self


def _ns(ttl: float, usd: float) -> NamespacePolicy:
    return NamespacePolicy(ttl=ttl, value_usd=usd)


# The application's namespaces and how long an answer stays good. value_usd is a rough
# per-call price of the model call the entry saves (small-model classification ~ $0.0005,
# an embedding ~ $0.00002, a long spec generation ~ $0.01); operators should set their own.
DEFAULT_NAMESPACES: dict[str, NamespacePolicy] = {
    "categorization": _ns(3600, 0.0005),
    "sentiment": _ns(3600, 0.0003),
    "embeddings": _ns(24 * 3600, 0.00002),
    "duplicateDetection": _ns(2 * 3600, 0.0005),
    "priorityScoring": _ns(15 * 60, 0.0005),
    "specs": _ns(3600, 0.01),
    "competitive": _ns(4 * 3600, 0.005),
}


class TcpListenerConfig(Strict):
    endpoint: Endpoint = "127.0.0.1:6380"
    # binding anything but loopback must be asked for explicitly (and needs a password)
    allow_remote: bool = False
    # `requirepass`: clients must AUTH before any other command; ${env:...} / ${file:...}
    password: str | None = None

    @model_validator(mode="after")
    def _remote_needs_password(self) -> TcpListenerConfig:
        host = self.endpoint.rpartition(":")[0].strip("[]")
        loopback = is_loopback_host(host)  # the one loopback rule of every listener
        if not loopback and not self.allow_remote:
            raise ValueError(f"{host} is not loopback; set allow_remote: true to bind it")
        if not loopback and not self.password:
            raise ValueError("a non-loopback cache listener needs a password")
        return self


class L2Config(Strict):
    """How the Redis tier (`cache.redis`) is used."""

    # per-command timeout: a slower Redis counts as down and L1 answers
    timeout: Duration = Field(default=0.5, gt=0)
    connect_timeout: Duration = Field(default=1.0, gt=0)
    pool_size: int = Field(default=8, ge=1, le=1024)
    # reconnect with exponential backoff between these bounds
    backoff_min: Duration = Field(default=0.1, gt=0)
    backoff_max: Duration = Field(default=5.0, gt=0)
    # how long an L1 copy may be served without asking Redis (other sidecars may have
    # changed the key); with `tracking` on, invalidation messages remove this bound
    max_staleness: Duration = Field(default=5.0, ge=0)
    # RESP3 client-side caching: Redis tells us when a key changes (BCAST mode)
    tracking: bool = False
    # writes not yet in Redis (outage, or in flight); oldest dropped first beyond these
    replay_max_items: int = Field(default=100_000, ge=1)
    replay_max_bytes: ByteSize = Field(default=64 * 1024 * 1024, gt=0)
    # writes sent per round trip
    write_batch: int = Field(default=256, ge=1)


class MemoryConfig(Strict):
    max_bytes: ByteSize = Field(default=64 * 1024 * 1024, gt=0)


class LimitsConfig(Strict):
    """Protocol limits: a client exceeding one gets -ERR and its connection is closed."""

    max_bulk: ByteSize = Field(default=8 * 1024 * 1024, gt=0)
    max_array: int = Field(default=1024 * 1024, gt=0)
    max_inline: ByteSize = Field(default=64 * 1024, gt=0)
    max_clients: int = Field(default=10_000, gt=0)


class CacheConfig(Strict):
    # listener path; null turns the unix listener off
    unix: str | None = "./run/cache.sock"
    unix_mode: FileMode = 0o660
    unix_group: str | None = None
    tcp: TcpListenerConfig | None = None
    # L2 URL: redis://, rediss://, unix://, redis+sentinel://h1:26379,h2:26379/master[/db],
    # redis+cluster://h1:7000,h2:7001; null = memory only
    redis: str | None = None
    l2: L2Config = L2Config()
    memory: MemoryConfig = MemoryConfig()
    limits: LimitsConfig = LimitsConfig()
    # FLUSHDB / FLUSHALL are refused unless this is true (shared cache, one careless client)
    allow_flush: bool = False
    default: NamespacePolicy = NamespacePolicy()
    namespaces: dict[str, NamespacePolicy] = Field(default_factory=lambda: dict(DEFAULT_NAMESPACES))

    @model_validator(mode="after")
    def _check(self) -> CacheConfig:
        for name in self.namespaces:
            if not name or ":" in name:
                raise ValueError(f"namespace {name!r}: must be non-empty and without ':'")
        if self.redis is not None:
            scheme = self.redis.partition("://")[0]
            if scheme not in ("redis", "rediss", "unix", "redis+sentinel", "redis+cluster"):
                raise ValueError(f"redis: unsupported URL scheme {scheme!r}")
            if scheme == "redis+cluster" and self.l2.tracking:
                raise ValueError("l2.tracking is not supported with redis+cluster "
                                 "(max_staleness bounds L1 copies instead)")
        else:
            # accepted and ignored would be an error in disguise: memory is the only tier
            off = [n for n, p in {"default": self.default, **self.namespaces}.items()
                   if not p.l1]
            if off:
                raise ValueError(f"namespaces {', '.join(off)}: l1: false needs cache.redis "
                                 "(without an L2, memory is the only place a value can live)")
        return self
