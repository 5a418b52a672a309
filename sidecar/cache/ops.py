"""What L1, the command layer and the L2 tier share without importing redis-py.

Kept apart from `l2.py` so a memory-only cache (the default) never imports redis-py,
which costs ~9 MiB of RSS at startup."""

from __future__ import annotations

from typing import Final
from urllib.parse import urlsplit

OP_SET: Final = 0
OP_DEL: Final = 1
OP_EXPIRE: Final = 2  # expire_at NEVER = PERSIST
NEVER = float("inf")


class _Unavailable:
    """Result of a read that could not reach Redis (distinct from a miss, which is None)."""


UNAVAILABLE: Final = _Unavailable()
Fetched = tuple[bytes, float] | None | _Unavailable  # (value, expire_at) | miss | no answer


def redacted(url: str) -> str:
    """The URL without its password, for banners and stats."""
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return parts._replace(netloc=netloc).geturl()
    return url
