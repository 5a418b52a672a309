"""Fuzz targets: each takes arbitrary bytes and must either accept them or refuse them with
the component's own error type. Anything else escaping (a crash), a hang (libFuzzer's
per-input timeout) or runaway memory (its RSS limit) is a finding.

Run coverage-guided by `tests/fuzz/run.py` under atheris (`make fuzz`); `make test` runs a
short pass of each (tests/fuzz/test_fuzz_short.py)."""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
from collections.abc import Callable
from pathlib import Path

from sidecar import _spanwalk, config
from sidecar.cache.config import CacheConfig
from sidecar.cache.server import CacheConnection, CacheService
from sidecar.errors import BadInputError, ConfigError
from sidecar.model import _CHECKERS, Batch, Signal, count_items, parse_request
from sidecar.net.framing import LineSplitter
from sidecar.otlp_json import decode_request
from sidecar.pipeline.graph import build_processors
from sidecar.pipeline.stage import Stage
from sidecar.processors.llm_cost import CostSettings, LlmCost
from sidecar.receivers.logparse import LogBatchBuilder
from sidecar.sample import agent_runs
from sidecar.telemetry import metrics

_SIGNALS = tuple(Signal)
# the default processors (redaction on) run over whatever parsed: a request the receiver
# accepts must never make a processor fail
_STAGES = {s: Stage(s, build_processors(config.from_tree({}))) for s in _SIGNALS}


def _signal(data: bytes) -> tuple[Signal, bytes]:
    if not data:
        return Signal.TRACES, b""
    return _SIGNALS[data[0] % len(_SIGNALS)], data[1:]


def otlp_protobuf(data: bytes) -> None:
    signal, body = _signal(data)
    try:
        batch = Batch.from_bytes(signal, body)
    except BadInputError:
        return
    processed = _STAGES[signal].run(batch)
    if processed is not None:
        Batch.from_bytes(signal, processed.payload)  # what goes on re-parses


def otlp_json(data: bytes) -> None:
    signal, body = _signal(data)
    try:
        decoded = decode_request(signal, body)
    except BadInputError:
        return
    batch = Batch.from_message(signal, decoded.message)
    processed = _STAGES[signal].run(batch)
    if processed is not None:
        Batch.from_bytes(signal, processed.payload)


def ndjson(data: bytes) -> None:
    splitter = LineSplitter(4096)
    builder = LogBatchBuilder("fuzz")
    # two reads, split where the first byte says: framing must not depend on read sizes
    cut = data[0] % (len(data) + 1) if data else 0
    for chunk in (data[:cut], data[cut:]):
        for line in splitter.feed(chunk):
            builder.add(line, observed_ns=1)
    request = builder.take()
    if request is not None:
        Batch.from_bytes(Signal.LOGS, request.SerializeToString())


class _Transport:
    """What CacheConnection writes to (asyncio's transport interface)."""

    def __init__(self) -> None:
        self.written = 0
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written += len(data)

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_extra_info(self, name: str, default: object = None) -> object:
        return default


_loop: asyncio.AbstractEventLoop | None = None
_cache: CacheService | None = None


def resp(data: bytes) -> None:
    """Raw bytes into a cache connection (RESP parser and the whole command layer), on a
    service that lives across inputs as a real one does."""
    global _loop, _cache
    if _loop is None:
        _loop = asyncio.new_event_loop()
        _cache = CacheService(CacheConfig(unix=None))
    assert _cache is not None

    async def feed() -> None:
        assert _cache is not None
        connection = CacheConnection(_cache, None, "fuzz")
        transport = _Transport()
        connection.connection_made(transport)  # type: ignore[arg-type]
        connection.data_received(data)
        for _ in range(3):  # let commands that returned coroutines run
            await asyncio.sleep(0)
        connection.connection_lost(None)

    _loop.run_until_complete(feed())


_config_dir = Path(tempfile.mkdtemp(prefix="sc-fuzz-config-"))


_COST = LlmCost(CostSettings())


_BOUNDS = (0.002, 0.01, 0.1, 1.0, 10.0)


def parse_count(signal: Signal, data: bytes) -> int | None:
    try:
        return count_items(signal, parse_request(signal, data))
    except BadInputError:
        return None


def spanwalk(data: bytes) -> None:
    """The cost processor's C walk on any bytes (not only those the protobuf parser took):
    it reads them or refuses them with ValueError, and a splice at every span it reported
    adds exactly the edits' bytes. The span metrics walk reads or refuses them too. The
    redaction's C functions on the same bytes: the digit-run ends are ascending and end at
    a digit, the items, hit fields, keys and strings found lie inside the payload (or the
    bytes are refused with ValueError), and a splice emptying every item gives bytes with
    the same items, all empty."""
    _redact_c(data)
    with contextlib.suppress(ValueError):
        _spanwalk.red(data, _BOUNDS, {})
    # the receivers' wire check: what it passes, the parser takes, with the same count
    for signal in (Signal.TRACES, Signal.LOGS):
        items = _CHECKERS[signal].items(data)
        if items >= 0 and parse_count(signal, data) != items:
            raise AssertionError(f"the wire check passed a {signal} request the parser "
                                 "refuses or counts differently")
    try:
        _, spans = _spanwalk.walk(data, _COST._span_keys, _COST._resource_keys)
    except ValueError:
        return
    edits = [(span[1], b"\x4a\x00") for span in spans]  # an empty attribute on each
    out = _spanwalk.splice(data, edits)
    if len(out) < len(data) + 2 * len(edits):
        raise AssertionError("a splice lost bytes")
    # the hot path of a processor that priced sample runs before: it reads what the plain
    # walk read (or the same bytes are refused), and its edits splice like the others
    hot_edits: list[tuple[int, bytes]] = []
    warm = _warm_cost()
    hot = (warm._hot, warm._hot_resources, warm._agents, 64, warm._series_generation,
           10**12, metrics.LLM_DURATION.bounds, hot_edits)
    _, handed_back = _spanwalk.walk(data, warm._span_keys, warm._resource_keys,
                                    warm._known_spans, hot)
    if len(handed_back) > len(spans) or len(hot_edits) > len(spans):
        raise AssertionError("the hot path reported spans the walk does not")
    hot_edits.sort()
    out = _spanwalk.splice(data, hot_edits)
    if len(out) < len(data) + sum(len(edit) for _, edit in hot_edits):
        raise AssertionError("a splice of the hot path's edits lost bytes")


_WARM: list[LlmCost] = []


def _warm_cost() -> LlmCost:
    """A cost processor that priced sample agent runs twice: its hot path holds entries."""
    if not _WARM:
        processor = LlmCost(CostSettings())
        stage = Stage(Signal.TRACES, [processor])
        for run in list(agent_runs(8, seed=3)) * 2:
            stage.run(Batch.from_bytes(Signal.TRACES, run.traces.SerializeToString()))
        _WARM.append(processor)
    return _WARM[0]


def _redact_c(data: bytes) -> None:
    ends_found = _spanwalk.digit_runs(data, 13, 10_000)
    if ends_found is None:
        if len(data) < 10_000:
            raise AssertionError("digit_runs over its limit on a short input")
        return
    if ends_found != sorted(set(ends_found)) or any(
            not data[e - 1:e].isdigit() for e in ends_found):
        raise AssertionError("digit_runs ends out of order or not at a digit")
    try:
        _, scopes, starts, ends, heads = _spanwalk.redact_layout(data)
    except ValueError:
        return
    if not all(h < s <= e <= len(data) for h, s, e in zip(heads, starts, ends, strict=True)):
        raise AssertionError("an item outside the payload")
    if starts != sorted(starts) or any(not 0 <= sc[5] <= len(starts) for sc in scopes):
        raise AssertionError("items out of order, or a scope's first item out of range")
    for start, end in list(zip(starts, ends, strict=True))[:8]:
        try:
            found = _spanwalk.hit_fields(data, start, end, 9, end, [start, end - 1, -1])
        except ValueError:
            continue
        if found is None:
            continue
        if not all(start <= h < s <= e <= end and n >= 0 for h, s, e, n in found[0]):
            raise AssertionError("a hit field outside its item")
        for _, s, e, _ in found[0]:
            with contextlib.suppress(ValueError):
                kv = _spanwalk.kv_string(data, s, e)
                if kv is not None and not s <= kv[0] <= kv[1] <= kv[2] <= kv[3] <= e:
                    raise AssertionError("a key or string outside its attribute")
    if _spanwalk.digit_runs(data, 13, 10_000, False) != ends_found:
        raise AssertionError("the vector and scalar digit scans differ")
    if not set(_spanwalk.card_confirm(data, ends_found, 40)) <= set(ends_found):
        raise AssertionError("card_confirm kept an end it was not given")
    at, _ = _spanwalk.group_hits([(e, 0) for e in ends_found], starts, ends)
    if any(not 0 <= k < len(starts) for k in at):
        raise AssertionError("group_hits named no item")
    # every item emptied, and each entry's resource or scope: the result has the same
    # items, each empty
    edits = [(s, b"") for s in starts]
    for _, start, end in _spanwalk.redact_layout(data)[0]:
        edits += [(s, b"") for s, _ in _spanwalk.first_fields(data, start, end)]
    for _, start, end, _, _, _ in scopes:
        edits += [(s, b"") for s, _ in _spanwalk.first_fields(data, start, end)]
    edits.sort(key=lambda e: e[0])
    out = _spanwalk.redact_splice(data, edits)
    _, _, new_starts, new_ends, _ = _spanwalk.redact_layout(out)
    if len(out) > len(data) or new_starts != new_ends or len(new_starts) != len(starts):
        raise AssertionError("a splice lost items or kept their bytes")


def config_file(data: bytes) -> None:
    path = _config_dir / "sidecar.yaml"
    path.write_bytes(data)
    with contextlib.suppress(ConfigError):
        config.load(path)


TARGETS: dict[str, Callable[[bytes], None]] = {
    "otlp_protobuf": otlp_protobuf,
    "otlp_json": otlp_json,
    "ndjson": ndjson,
    "resp": resp,
    "config": config_file,
    "spanwalk": spanwalk,
}
