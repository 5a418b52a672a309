"""Cache service settings (filled in by the cache issue)."""

from __future__ import annotations

from sidecar.configtypes import Strict


class CacheConfig(Strict):
    unix: str | None = "./run/cache.sock"
    redis: str | None = None
