"""Reading DDSketch protobufs the way the Datadog Agent (sketches-go) and libdatadog mean
them, written from the documented mapping independently of the code under test."""

from __future__ import annotations

import math

from ddsketch.pb.ddsketch_pb2 import DDSketch as SketchProto


def decode_sketch(raw: bytes) -> tuple[list[tuple[float, float]], float]:
    """(value, count) per bin with the Agent's / sketches-go meaning of an index (bin k is
    [gamma^(k-offset), gamma^(k-offset+1)), its value the lower bound x 2gamma/(1+gamma)),
    and the zero count. Written from the documented mapping, independently of the code."""
    pb = SketchProto.FromString(raw)
    gamma, offset = pb.mapping.gamma, pb.mapping.indexOffset
    store = pb.positiveValues
    bins = [(store.contiguousBinIndexOffset + i, c)
            for i, c in enumerate(store.contiguousBinCounts) if c]
    bins += [(k, c) for k, c in store.binCounts.items() if c]
    values = [(gamma ** (k - offset) * 2 * gamma / (1 + gamma), c) for k, c in sorted(bins)]
    return values, pb.zeroCount


def quantile(raw: bytes | list[bytes], q: float) -> float:
    """The q-quantile of one encoded sketch, or of several merged (same mapping)."""
    values: list[tuple[float, float]] = []
    zero = 0.0
    for one in [raw] if isinstance(raw, bytes) else raw:
        bins, z = decode_sketch(one)
        values += bins
        zero += z
    values.sort()
    total = zero + sum(c for _, c in values)
    rank = q * (total - 1)
    seen = zero
    if rank < seen:
        return 0.0
    for value, count in values:
        seen += count
        if seen > rank:
            return value
    return values[-1][0]


def exact_quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[math.floor(q * (len(ordered) - 1))]
