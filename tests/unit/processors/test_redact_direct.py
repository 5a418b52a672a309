"""The hit attribute's direct path (`Redactor._string_attr`, `_spanwalk.kv_string`): an
attribute that is exactly a key and a string value is redacted from its bytes; it must
count, drop and rewrite exactly as `_attr` does through the protobuf wrappers, and its new
bytes must be what the library serialises for the edited KeyValue."""

from __future__ import annotations

import pytest
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from sidecar import _spanwalk
from sidecar.processors.redact import _UNCHANGED, DROP, Redactor, RedactSettings
from tests.unit.processors.test_redact_properties import any_value, text

KEYS = st.one_of(text, st.sampled_from([
    "password", "api_key", "http.request.header.authorization", "gen_ai.prompt",
    "gen_ai.input.messages", "gen_ai.usage.input_tokens", "card", "", "é"]))
VALUES = st.one_of(text.map(lambda t: AnyValue(string_value=t)), any_value(1))
# bytes appended to a serialized KeyValue: none, a second key or value, an unknown field
TAILS = st.sampled_from([b"", b"", b"\x0a\x01k", b"\x12\x02\x0a\x00", b"\x18\x01",
                         b"\x12\x00"])
REDACTORS = [
    Redactor(RedactSettings()),
    Redactor(RedactSettings(prompts="drop", actions={"card-number": "drop", "jwt": "hash"},
                            hash_key="k", pii=["email", "phone"])),
]


def _attr_path(redactor: Redactor, raw: bytes, only: set[int],
               ) -> tuple[bool, dict[str, int], KeyValue]:
    kv = KeyValue.FromString(raw)
    redactor.counts = {}
    redactor._only = only
    try:
        drop = redactor._attr(kv)
    finally:
        redactor._only = None
    return drop, redactor.counts, kv


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(KEYS, VALUES, TAILS, st.data())
def test_the_direct_path_is_the_wrapper_path(key: str, value: AnyValue, tail: bytes,
                                             data: st.DataObject) -> None:
    raw = KeyValue(key=key, value=value).SerializeToString() + tail
    payload = b"\x0a\x00" + raw + b"\x12"  # the attribute inside other bytes
    for redactor in REDACTORS:
        # the rules the pre-scan said may match: all, or some
        only = data.draw(st.sets(st.integers(0, len(redactor._rules) - 1)))
        redactor.counts = {}
        direct = redactor._string_attr(payload, 2, 2 + len(raw), only)
        direct_counts = redactor.counts
        drop, counts, kv = _attr_path(redactor, raw, only)
        if direct is None:
            continue
        assert direct_counts == counts
        assert (direct is not _UNCHANGED) == bool(counts)
        if drop:
            assert direct is DROP
        elif counts:
            assert isinstance(direct, tuple)
            content, new_text = direct
            assert content == kv.SerializeToString()
            assert new_text.decode("utf-8") == kv.value.string_value


def test_the_direct_path_takes_the_common_shapes_only() -> None:
    redactor = REDACTORS[0]
    plain = KeyValue(key="note", value=AnyValue(string_value="Bearer abcdefghijklmnop"))
    raw = plain.SerializeToString()
    assert redactor._string_attr(raw, 0, len(raw), {2}) is not None
    for other in (KeyValue(key="password", value=AnyValue(string_value="x")),  # key rule
                  KeyValue(key="", value=AnyValue(string_value="x")),  # no key field
                  KeyValue(key="n", value=AnyValue(int_value=4)),
                  KeyValue(key="n")):
        data = other.SerializeToString()
        assert redactor._string_attr(data, 0, len(data), {2}) is None
    for tail in (b"\x0a\x01k", b"\x12\x02\x0a\x00", b"\x18\x01"):  # a field more or twice
        assert redactor._string_attr(raw + tail, 0, len(raw) + len(tail), {2}) is None


@settings(max_examples=600, deadline=None)
@given(st.one_of(
    st.builds(lambda k, v, t: KeyValue(key=k, value=v).SerializeToString() + t,
              KEYS, VALUES, TAILS),
    st.binary(max_size=24)))
def test_kv_string_names_the_key_and_string_the_library_reads(raw: bytes) -> None:
    try:
        found = _spanwalk.kv_string(raw, 0, len(raw))
    except ValueError:
        return
    if found is None:
        return
    ks, ke, vs, ve = found
    try:
        kv = KeyValue.FromString(raw)  # the library takes what the direct path takes
    except DecodeError:  # but for text that is not UTF-8, which the direct path decodes
        with pytest.raises(UnicodeDecodeError):
            (raw[ks:ke] + b"\n" + raw[vs:ve]).decode()
        return
    assert kv.key.encode() == raw[ks:ke]
    assert kv.key
    assert kv.value.WhichOneof("value") == "string_value"
    assert kv.value.string_value.encode() == raw[vs:ve]
    # and serialises it back as those two fields
    string = raw[vs:ve]
    value = b"\x0a" + _len(string) + string
    assert kv.SerializeToString() == b"\x0a" + _len(raw[ks:ke]) + raw[ks:ke] + b"\x12" + \
        _len(value) + value


def _len(data: bytes) -> bytes:  # the test's own varint
    n, out = len(data), bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def test_text_that_is_not_utf8_fails_on_both_paths() -> None:
    raw = b"\x0a\x01\xff\x12\x03\x0a\x01a"  # a key that is not UTF-8
    assert _spanwalk.kv_string(raw, 0, len(raw)) == (2, 3, 7, 8)
    with pytest.raises(DecodeError):
        KeyValue.FromString(raw)
    with pytest.raises(UnicodeDecodeError):
        REDACTORS[0]._string_attr(raw, 0, len(raw), {0})


@settings(max_examples=300, deadline=None)
@given(st.text(min_size=1, max_size=200), st.one_of(
    st.text(max_size=300), st.sampled_from(["a" * 127, "b" * 128, "c" * 16_383, "d" * 16_384])))
def test_kv_encode_is_the_librarys_serialisation(key: str, value: str) -> None:
    assert _spanwalk.kv_encode(key.encode(), value.encode()) == KeyValue(
        key=key, value=AnyValue(string_value=value)).SerializeToString()


def test_kv_encode_refuses_an_empty_key() -> None:
    with pytest.raises(ValueError, match="empty key"):
        _spanwalk.kv_encode(b"", b"x")
