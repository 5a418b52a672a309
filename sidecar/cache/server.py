"""Placeholder until the cache service branch lands (replaced by the real server)."""
from sidecar.cache.config import CacheConfig


class CacheService:
    def __init__(self, config: CacheConfig) -> None: ...
    async def start(self) -> None: ...
    async def shutdown(self, deadline: float) -> None: ...
    def describe(self) -> list[str]: return []
    def stats(self) -> dict[str, object]: return {}
