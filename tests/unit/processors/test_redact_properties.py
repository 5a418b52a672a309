"""Property tests: the raw-bytes pre-scan is a superset of the walk, and secrets planted at
random depths never reach the output while everything else stays identical."""

from __future__ import annotations

import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from sidecar import _spanwalk
from sidecar.model import Batch, Signal
from sidecar.pipeline.stage import Stage
from sidecar.processors.redact import Redactor, RedactProcessor, RedactSettings
from sidecar.protowire import encode_varint
from tests.unit.processors.redact_corpus import secrets

# Pieces that sit near the edge of some rule: key stems in odd spellings, prefixes without
# their bodies, separators, escapes, digits, varint-like bytes as text.
FRAGMENTS = [
    "token", "Token", "TOKENS", "tokens", "_token", "token_count", "token.", "input_tokens",
    "api", "-key", "Key", "apikey", "pass", "word", "passwd", "pwd", "secret", "cookie",
    "set-cookie", "authorization", "private", "credentials", "session", ".id", "_id",
    "sk-", "sk-ant-api03-", "ghp_", "xoxb-", "AKIA", "AIza", "eyJ", "Bearer ", "bearer\t",
    "://", "u:p@", "@", ":", "/", "-----BEGIN ", "PRIVATE KEY-----", "4111", " ", "-",
    "\\u0077", "\\", "\"", "{", "}", "[", "]", ",", "s", "\x12", "\u212a", "é", "0", "9",
    "AAAAAAAAAAAAAAAAAAAA", "abcdefghijklmnopqrstuvwxyz0123456789", "a" * 32, "b" * 7,
    "4111 1111 1111 1111", "5500-0000-0000-0004", "4111111111111111 1", "$", "%", "c9",
    "4111111111111111111", "4111 1111 1111 1111 111",
    *secrets(random.Random(5)).values(),
]

text = st.lists(st.sampled_from(FRAGMENTS), max_size=8).map("".join)


def any_value(depth: int) -> st.SearchStrategy[AnyValue]:
    leaf = st.one_of(
        text.map(lambda t: AnyValue(string_value=t)),
        text.map(lambda t: AnyValue(bytes_value=t.encode())),
        st.integers(-(2**63), 2**63 - 1).map(lambda i: AnyValue(int_value=i)),
    )
    if depth <= 0:
        return leaf
    inner = any_value(depth - 1)
    return st.one_of(
        leaf,
        st.lists(inner, max_size=3).map(
            lambda vs: AnyValue(array_value={"values": vs})),
        st.lists(st.tuples(text, inner), max_size=3).map(
            lambda kvs: AnyValue(kvlist_value={"values": [
                KeyValue(key=k, value=v) for k, v in kvs]})),
        st.lists(text, max_size=3).map(
            lambda keys: AnyValue(kvlist_value={"values": [KeyValue(key=k) for k in keys]})),
    )


# a KeyValue without a value puts the parent's next tag right after the key's bytes
attributes = st.lists(st.tuples(text, st.none() | any_value(3)), max_size=4).map(
    lambda kvs: [KeyValue(key=k) if v is None else KeyValue(key=k, value=v) for k, v in kvs])


@st.composite
def requests(draw: st.DrawFn) -> tuple[Signal, bytes]:
    """1-2 resources x 1-2 scopes x 1-3 items, of traces or logs."""
    shape = st.integers(1, 2)
    if draw(st.booleans()):
        req = ExportTraceServiceRequest()
        for _ in range(draw(shape)):
            rs = req.resource_spans.add()
            rs.resource.attributes.extend(draw(attributes))
            for _ in range(draw(shape)):
                ss = rs.scope_spans.add()
                ss.scope.attributes.extend(draw(attributes))
                for _ in range(draw(st.integers(1, 3))):
                    span = ss.spans.add(name=draw(text))
                    span.status.message = draw(text)
                    span.attributes.extend(draw(attributes))
                    span.events.add(name=draw(text)).attributes.extend(draw(attributes))
        return Signal.TRACES, req.SerializeToString()
    logs = ExportLogsServiceRequest()
    for _ in range(draw(shape)):
        rl = logs.resource_logs.add()
        rl.resource.attributes.extend(draw(attributes))
        for _ in range(draw(shape)):
            sl = rl.scope_logs.add()
            for _ in range(draw(st.integers(1, 3))):
                record = sl.log_records.add()
                record.body.CopyFrom(draw(any_value(4)))
                record.attributes.extend(draw(attributes))
    return Signal.LOGS, logs.SerializeToString()


REDACTOR = Redactor(RedactSettings())


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests())
def test_prescan_is_a_superset_of_the_walk(request: tuple[Signal, bytes]) -> None:
    signal, payload = request
    message = Batch.from_bytes(signal, payload).message
    REDACTOR.counts = {}
    REDACTOR.redact_request(signal, message)
    if not REDACTOR.can_match(payload):
        assert REDACTOR.counts == {}
        assert message.SerializeToString() == payload


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests())
def test_walking_only_the_items_the_prescan_hit_equals_the_full_walk(
        request: tuple[Signal, bytes]) -> None:
    signal, payload = request
    full = Batch.from_bytes(signal, payload).message
    REDACTOR.counts = {}
    REDACTOR.redact_request(signal, full)
    full_counts = REDACTOR.counts
    targeted = Batch.from_bytes(signal, payload).message
    REDACTOR.counts = {}
    REDACTOR.redact_hits(signal, payload, targeted)
    assert REDACTOR.counts == full_counts
    assert targeted.SerializeToString() == full.SerializeToString()


FILLER = st.sampled_from(["alpha", "beta gamma", "delta", "note:", "x=1", ""])


@st.composite
def planted(draw: st.DrawFn) -> tuple[list[tuple[str, str]], AnyValue, AnyValue]:
    """A log body with secrets planted at random depths, and the same body with each secret
    replaced by its mask; plus the list of (rule, secret) planted."""
    rng = random.Random(draw(st.integers(0, 2**32)))
    pool = list(secrets(rng).items())
    planted: list[tuple[str, str]] = []

    def build(depth: int) -> tuple[AnyValue, AnyValue]:
        kind = draw(st.sampled_from(["secret", "text", "array", "kvlist"] if depth < 5
                                    else ["secret", "text"]))
        if kind == "secret":
            rule, secret = pool[draw(st.integers(0, len(pool) - 1))]
            before, after = draw(FILLER), draw(FILLER)
            planted.append((rule, secret))
            return (AnyValue(string_value=f"{before} {secret} {after}"),
                    AnyValue(string_value=f"{before} [REDACTED:{rule}] {after}"))
        if kind == "text":
            t = draw(FILLER)
            return AnyValue(string_value=t), AnyValue(string_value=t)
        children = [build(depth + 1) for _ in range(draw(st.integers(1, 3)))]
        if kind == "array":
            return (AnyValue(array_value={"values": [c[0] for c in children]}),
                    AnyValue(array_value={"values": [c[1] for c in children]}))
        keys = [f"field{i}" for i in range(len(children))]
        return (AnyValue(kvlist_value={"values": [
                    KeyValue(key=k, value=c[0]) for k, c in zip(keys, children, strict=True)]}),
                AnyValue(kvlist_value={"values": [
                    KeyValue(key=k, value=c[1]) for k, c in zip(keys, children, strict=True)]}))

    value, masked = build(0)
    return planted, value, masked


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(planted())
def test_planted_secrets_never_reach_the_output(case: tuple[list[tuple[str, str]], AnyValue,
                                                            AnyValue]) -> None:
    planted_secrets, value, masked = case

    def request(body: AnyValue) -> bytes:
        logs = ExportLogsServiceRequest()
        record = logs.resource_logs.add().scope_logs.add().log_records.add()
        record.body.CopyFrom(body)
        record.attributes.add(key="payload", value=body)
        return logs.SerializeToString()

    stage = Stage(Signal.LOGS, [RedactProcessor(RedactSettings())])
    out = stage.run(Batch.from_bytes(Signal.LOGS, request(value)))
    assert out is not None
    for _, secret in planted_secrets:
        for i in range(len(secret) - 11):
            piece = secret[i:i + 12]
            if piece.startswith(("-----", "PRIVATE KEY", "eyJhbGciOiJI")):
                continue  # the fixed PEM armour and JWT header are not the secret
            assert piece.encode() not in out.payload
    assert out.payload == request(masked)


def _followed_by(key: str) -> list[tuple[Signal, bytes]]:
    """Requests where a value-less KeyValue with `key` is followed by each kind of next
    field, so the byte after the key is that field's tag."""
    out: list[tuple[Signal, bytes]] = []
    for after in ("attribute", "dropped", "event", "link", "status", "nothing"):
        req = ExportTraceServiceRequest()
        span = req.resource_spans.add().scope_spans.add().spans.add(name="n")
        span.attributes.add(key=key)
        if after == "attribute":
            span.attributes.add(key="k", value=AnyValue(int_value=1))
        elif after == "dropped":
            span.dropped_attributes_count = 3
        elif after == "event":
            span.events.add(name="e")
        elif after == "link":
            span.links.add(trace_id=b"\x01" * 16)
        elif after == "status":
            span.status.message = "m"
        out.append((Signal.TRACES, req.SerializeToString()))
    logs = ExportLogsServiceRequest()
    record = logs.resource_logs.add().scope_logs.add().log_records.add()
    record.attributes.add(key=key)
    record.dropped_attributes_count = 1
    record.flags = 1
    record.trace_id = b"\x02" * 16
    out.append((Signal.LOGS, logs.SerializeToString()))
    return out


def test_a_key_rule_at_the_end_of_a_key_trips_the_prescan_whatever_follows() -> None:
    for key in ("x_token", "X-TOKEN", "access.token", "pwd", "apikey", "set-cookie",
                "Private Key", "Session-ID", "credentials", "client_secret"):
        for signal, payload in _followed_by(key):
            message = Batch.from_bytes(signal, payload).message
            REDACTOR.counts = {}
            REDACTOR.redact_request(signal, message)
            assert REDACTOR.counts == {"secret-key": 1}, key
            assert REDACTOR.can_match(payload), (key, payload)


def test_a_card_number_that_is_its_whole_string_trips_the_prescan_at_every_length() -> None:
    # the length byte before such a string is 13..37: the pre-scan's arms must take each
    digits = "4111111111111111"  # Visa test number, 16 digits
    nineteen = "4000000000000000006"  # 19 digits, Luhn valid
    cases = [digits, nineteen]
    for number in (digits, nineteen):
        for seps in range(1, len(number)):
            # `seps` single separators between the first digits, then the rest
            cases.append("".join(d + ("-" if i < seps else "") for i, d in
                                 enumerate(number[:-1])) + number[-1])
            cases.append(" ".join(number[:seps + 1]) + number[seps + 1:])
    for text in cases:
        req = ExportTraceServiceRequest()
        span = req.resource_spans.add().scope_spans.add().spans.add(name="n")
        span.attributes.add(key="card", value=AnyValue(string_value=text))
        payload = req.SerializeToString()
        message = Batch.from_bytes(Signal.TRACES, payload).message
        REDACTOR.counts = {}
        REDACTOR.redact_request(Signal.TRACES, message)
        assert REDACTOR.counts == {"card-number": 1}, text
        assert REDACTOR.can_match(payload), text


def _spliced(signal: Signal, payload: bytes, with_message: bool) -> tuple[dict[str, int], bytes]:
    message = Batch.from_bytes(signal, payload).message if with_message else None
    REDACTOR.counts = {}
    _, out = REDACTOR.redact_payload(signal, payload, message)
    out = payload if out is None else out
    if message is not None:  # edited in step with the bytes
        assert message == Batch.from_bytes(signal, out).message
    return REDACTOR.counts, out


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests(), st.booleans())
def test_splicing_the_redacted_items_into_the_bytes_equals_the_full_walk(
        request: tuple[Signal, bytes], with_message: bool) -> None:
    signal, payload = request
    full = Batch.from_bytes(signal, payload).message
    REDACTOR.counts = {}
    REDACTOR.redact_request(signal, full)
    full_counts = REDACTOR.counts
    counts, out = _spliced(signal, payload, with_message)
    assert counts == full_counts
    assert Batch.from_bytes(signal, out).message == full


def _outside_request(resource_twice: bool = False) -> tuple[bytes, bytes]:
    """A secret in a resource attribute and one in a scope attribute, a span without one
    whose bytes are not what the serialiser writes (a field out of field order)."""
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.resource.attributes.add(key="note", value=AnyValue(string_value="Bearer abcdefgh12345678"))
    ss = rs.scope_spans.add()
    ss.scope.name = "s"
    ss.scope.attributes.add(key="cfg", value=AnyValue(string_value="ghp_" + "a" * 36))
    ss.spans.add(name="n")
    entry = rs.SerializeToString()
    span = ss.spans[0].SerializeToString()
    odd = b"\x38\x01" + span  # kind (field 7) before the name: the same span
    wrapped = b"\x0a" + encode_varint(len(entry)) + entry  # the span is its last bytes
    spliced = _spanwalk.redact_splice(wrapped, [(len(wrapped) - len(span), odd)])
    entry = spliced[-(len(entry) + len(odd) - len(span)):]  # the span's length is one byte
    if resource_twice:  # a second `resource` field: the parser merges the two
        extra = KeyValue(key="k", value=AnyValue(string_value="v")).SerializeToString()
        entry += b"\x0a" + encode_varint(len(extra) + 2) + b"\x0a" + encode_varint(
            len(extra)) + extra
    return b"\x0a" + encode_varint(len(entry)) + entry, odd


def test_a_hit_outside_the_items_re_encodes_only_resources_and_scopes() -> None:
    for twice in (False, True):
        payload, odd = _outside_request(twice)
        full = Batch.from_bytes(Signal.TRACES, payload).message
        REDACTOR.counts = {}
        REDACTOR.redact_request(Signal.TRACES, full)
        assert REDACTOR.counts == {"bearer": 1, "github-token": 1}
        for with_message in (False, True):
            counts, out = _spliced(Signal.TRACES, payload, with_message)
            assert counts == {"bearer": 1, "github-token": 1}
            assert Batch.from_bytes(Signal.TRACES, out).message == full
            assert b"abcdefgh12345678" not in out
            assert b"a" * 36 not in out
            # the span was not re-encoded, unless the resource given twice took the
            # whole request's walk (and the serialiser's field order)
            assert (odd in out) == (not twice)
