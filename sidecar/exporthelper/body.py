"""A sender's encoded body and the limits the shared layer measures it against.

A vendor's body is not the OTLP request: Datadog copies a resource's attributes onto every
span (a few KB of OTLP can be megabytes of AgentPayload) and cuts attribute values at
25,000 characters (megabytes of prompts can be a few KB). So the limits a vendor documents
(the trace intake's 3.2 MB, the logs intake's 1,000 entries and 5 MB) are declared by its
sender as `BodyLimits` and measured by the chain on the encoded, uncompressed body; the
chain cuts the batch in as many pieces as the excess asks and encodes each again.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sidecar.errors import SidecarError


@dataclass(frozen=True, slots=True)
class BodyLimits:
    """Per encoded body: at most `max_items` entries and `max_bytes` bytes (before
    compression). None: no limit."""

    max_items: int | None = None
    max_bytes: int | None = None

    def excess(self, items: int, nbytes: int) -> float:
        """How many times over the limits a body of `items` and `nbytes` is (<= 1: fits)."""
        ratio = 0.0
        if self.max_items is not None:
            ratio = items / self.max_items
        if self.max_bytes is not None:
            ratio = max(ratio, nbytes / self.max_bytes)
        return ratio

    @property
    def declared(self) -> bool:
        return self.max_items is not None or self.max_bytes is not None


NO_LIMITS = BodyLimits()


@dataclass(slots=True)
class Body:
    """One encoded request. `items`: entries it holds; `skipped`: the batch's items left
    out by the encoding (counted as rejected); `headers`: extra headers for this body;
    `extra`: the sender's own (read back in `push`)."""

    data: bytes
    items: int
    skipped: int = 0
    headers: Mapping[str, str] = field(default_factory=dict)
    extra: Any = None


class BodyTooLargeError(SidecarError):
    """Raised by `encode` when it can tell before encoding everything that the body will
    be `ratio` times over its limits (so a huge batch is not encoded only to be cut)."""

    def __init__(self, message: str, ratio: float) -> None:
        super().__init__(message)
        self.ratio = ratio
