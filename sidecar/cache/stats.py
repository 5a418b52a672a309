"""Per-command latency histograms kept as plain lists (read by the metrics collector)."""

from __future__ import annotations

from bisect import bisect_left
from typing import Final

# seconds; an L1 hit is a few µs, an L2 round trip a fraction of a ms
BOUNDS: Final = (0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
                 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class Histogram:
    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(BOUNDS) + 1)
        self.total = 0.0

    def observe(self, seconds: float, count: int = 1) -> None:
        self.counts[bisect_left(BOUNDS, seconds)] += count
        self.total += seconds * count

    def quantile(self, q: float) -> float | None:
        """Upper bound of the bucket holding the q-quantile (what the histogram can tell)."""
        n = sum(self.counts)
        if not n:
            return None
        rank = q * n
        running = 0
        for bound, count in zip((*BOUNDS, float("inf")), self.counts, strict=True):
            running += count
            if running >= rank:
                return bound
        return float("inf")


class Latency:
    """command name -> Histogram; names come from the command table (bounded label set)."""

    __slots__ = ("_lookup", "by_command")

    def __init__(self, names: list[bytes]) -> None:
        self.by_command = {name.upper(): Histogram() for name in names}
        self.by_command[b"OTHER"] = Histogram()
        # lookups by the name as the client spelled it (upper or lower case) hit directly
        self._lookup = dict(self.by_command)
        self._lookup.update({n.lower(): h for n, h in self.by_command.items()})

    def get(self, name: bytes) -> Histogram:
        found = self._lookup.get(name)
        if found is None:
            found = self._lookup.get(name.upper(), self.by_command[b"OTHER"])
        return found
