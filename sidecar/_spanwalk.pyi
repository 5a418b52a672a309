"""Types of the C extension sidecar/_spanwalk.c (see its header for what it reads)."""

from collections.abc import Sequence
from typing import Any

DUPLICATE: int  # a matched key given twice in one span
ODD: int  # a KeyValue given its key or value twice
MANY: int  # more matched attributes than the walk reports

class Matcher:
    """Attribute keys, key i with id i; triggers[i]: True (a span holding key i is
    reported), False, or serialized AnyValues that make it a trigger; `counts`: the keys
    whose values are counts (left out of a span's memo key, given apart); `unkeyed`: keys
    whose values are given but left out of a span's memo key (their ids stay in)."""

    def __init__(self, keys: Sequence[bytes], triggers: Sequence[bool | tuple[bytes, ...]],
                 counts: Sequence[bytes] = (), unkeyed: Sequence[bytes] = ()) -> None: ...

REMEMBER: int  # a record that only names its trace's agent (in `values`), see `walk`'s hot

# per ResourceSpans entry: (matched key ids, their serialized AnyValues, flags, memo key)
Resource = tuple[tuple[int, ...], tuple[bytes, ...], int, bytes]
# per reported span, in wire order: (resource index, content start, content end, trace_id,
# start_time_unix_nano, end_time_unix_nano, matched key ids, their values, flags,
# attribute count, memo key (the ids and the values but for counts and unkeyed keys), the
# count values in wire order (an int where the AnyValue is an int_value, else its bytes));
# ids and values are None when the span has no flags and its memo key is in `memo`. With
# `hot`, a REMEMBER record (flags REMEMBER, values the agent str) stands where a call priced
# in C names an agent its trace may not hold yet.
SpanRecord = tuple[int, int, int, bytes, int, int, tuple[int, ...] | None,
                   tuple[bytes, ...] | str | None, int, int, bytes, tuple[int | bytes, ...]]
# the cost processor's hot path (see hot_span in the C file): (entries by memo key, each
# an entry or a dict of them by (service, tenant), (service, tenant) by resource memo key,
# trace id -> agent or None, its entries at most, series generation, max tokens, histogram
# bounds, the list the priced calls' (content start, bytes) go to)
HotEntry = tuple[Any, ...] | dict[tuple[str, str | None], tuple[Any, ...]]
Hot = tuple[dict[bytes, HotEntry], dict[bytes, tuple[str, str | None]],
            dict[bytes, str] | None, int, int, int, tuple[float, ...],
            list[tuple[int, bytes]]]

def walk(payload: bytes, span_keys: Matcher, resource_keys: Matcher,
         memo: dict[bytes, Any] | None = None, hot: Hot | None = None,
         ) -> tuple[list[Resource], list[SpanRecord]]: ...
def splice(payload: bytes, edits: Sequence[tuple[int, bytes]]) -> bytes: ...
# per request: each ResourceSpans entry's service.name value bytes (None: none), and the rows
# of the (resource index, span name, kind, status code) keys `series` lacked
RedMiss = tuple[int, bytes, int, int, list[float]]

def red(payload: bytes, bounds: tuple[float, ...],
        series: dict[tuple[bytes | None, bytes, int, int], tuple[list[float], list[float]]],
        ) -> tuple[list[bytes | None], list[RedMiss]]: ...

# the receivers' wire check (sidecar/wirecheck.py): per message of a request type, its
# fields as (number, kind, repeated, child message index, item); message 0 the request
class Schema:  # an opaque handle (a capsule at run time), only passed back to `check`
    ...

def schema(messages: Sequence[Sequence[tuple[int, int, int, int, int]]]) -> Schema: ...
def check(payload: bytes, schema: Schema) -> int: ...

# --- redaction (redact_scan.py, redact_wire.py) ---
def digit_runs(payload: bytes, digits: int, limit: int, vector: bool = True,
               ) -> list[int] | None:
    """The end offset of every match of \\d(?:[ -]?\\d){digits - 1}, ascending (what
    Hyperscan reports for it); None when there are more than `limit`. `vector`: the AVX2
    scan where the CPU has one, else the scalar scan (the same ends)."""
def card_confirm(payload: bytes, ends: Sequence[int], reach: int) -> list[int]:
    """The ends `to` for which redact_rules.CARD_PRESCAN matches in
    payload[max(0, to - reach):to + 1], in order."""
def group_hits(offsets: Sequence[tuple[int, int]], starts: Sequence[int], ends: Sequence[int],
               ) -> tuple[dict[int, list[tuple[int, int]]], bool]:
    """The items [starts[k], ends[k]) holding byte to - 1 or to - 2 of each match (to, form)
    (`redact_scan.locate`), {k: matches in the order given}, and whether one lies in none."""
# (head, start, end) per resource entry; (head, start, end, resource, index in it, first
# item) per scope entry; the items' content starts, ends and heads, in wire order
def redact_layout(payload: bytes) -> tuple[list[tuple[int, int, int]],
                                           list[tuple[int, int, int, int, int, int]],
                                           list[int], list[int], list[int]]: ...
# (head, content start, content end, ordinal) of the fields holding the points, and per
# point the index of its field (-1: outside the item); None: a point in another field
def hit_fields(payload: bytes, start: int, end: int, number: int, until: int,
               points: Sequence[int],
               ) -> tuple[list[tuple[int, int, int, int]], list[int]] | None: ...
def first_fields(payload: bytes, start: int, end: int) -> list[tuple[int, int]]: ...
def redact_splice(payload: bytes, edits: Sequence[tuple[int, bytes]]) -> bytes: ...
# the key's and the string's content offsets of a KeyValue that is exactly a non-empty key
# and a string value (each once, in that order); None for any other shape
def kv_string(payload: bytes, start: int, end: int) -> tuple[int, int, int, int] | None: ...
def kv_encode(key: bytes, text: bytes) -> bytes: ...
