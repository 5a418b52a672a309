"""The `redact` processor: secrets are masked, hashed or dropped before anything leaves the
host (on by default with the built-in rules; genai-and-logs.md §5).

Per request: one RE2 search over the raw protobuf bytes, with every rule in its
boundary-free form (`redact_rules.boundary_free`), decides whether anything could match.
Most requests carry no secret and stop there, without a parse. Otherwise the message is
walked: span names, status messages, span/event/link/resource/scope/data-point attributes,
log bodies and attributes, at any depth of arrays and kvlists, bytes that are UTF-8, and
JSON text inside strings. Only the matched text is replaced; a key rule replaces the whole
value. Every string the walk scans is a verbatim slice of the raw bytes and is scanned with
the same engine and options, so the walk finds nothing the pre-scan missed.

Fail closed: anything raised while redacting becomes a `RedactionError` that names the
signal only; the stage fails the request and nothing of it is exported."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
from collections.abc import Callable, Iterable, MutableSequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

from google.protobuf.message import DecodeError
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord
from opentelemetry.proto.metrics.v1.metrics_pb2 import Metric
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from pydantic import Field, SecretStr, model_validator

from sidecar import _spanwalk
from sidecar.component import ProcessorFactory, ProcessorSettings, register_processor
from sidecar.configtypes import Strict
from sidecar.errors import ProcessingError
from sidecar.model import Signal, Work, parse_request
from sidecar.processors.redact_gitleaks import GitleaksError, GitleaksRule, load_gitleaks
from sidecar.processors.redact_rules import (
    BUILTIN_RULES,
    KEY_STEM_FORMS,
    PROMPT_KEYS,
    PROMPT_PREFIXES,
    Check,
    Pattern,
    PatternError,
    boundary_free,
    compile_bytes,
    is_allowlisted,
    is_prompt_key,
    is_secret_key,
    normalise_key,
)
from sidecar.processors.redact_scan import Form, MultiScan, TooManyHits, hyperscan_takes
from sidecar.processors.redact_wire import (
    Layout,
    WireError,
    field_header,
    first_fields,
    hit_fields,
    layout,
    splice,
)
from sidecar.signals import SIGNALS
from sidecar.telemetry.metrics import REDACT_FAILURES, REDACT_REDACTIONS, REDACT_REQUESTS

log = logging.getLogger("sidecar.redact")

__all__ = ["RedactProcessor", "RedactSettings", "RedactionError", "Redactor"]

KEY_RULE = "secret-key"  # the rule name of the built-in key-name rules
PROMPT_RULE = "prompt"
JSON_DEPTH_RULE = "json-too-deep"
# JSON text inside a string may spell a key or a secret with `\uXXXX` escapes (or a URL
# with `\/`), which the raw bytes do not show as the rule's text: such text is always
# walked, and its decoded strings go through the value rules (`_json_node`).
_JSON_ESCAPE = r"\\(?:u[0-9a-fA-F]{4}|/)"
# A user key pattern may match a key holding `"` or `\`, which JSON text escapes: with user
# key rules, JSON text holding those escapes is walked too.
_JSON_QUOTE_ESCAPE = r'\\["\\]'
_JSON_START = (b"{", b"[")
_MAX_JSON_DEPTH = 4  # JSON text inside JSON text inside ... a string
_KEY_CACHE_MAX = 4096


class Action(StrEnum):
    MASK = "mask"
    HASH = "hash"
    DROP = "drop"


class UserRule(Strict):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    key: str | None = None  # RE2 pattern searched in attribute / JSON key names
    value: str | None = None  # RE2 pattern searched in text values
    action: Action = Action.MASK

    @model_validator(mode="after")
    def _compiles(self) -> UserRule:
        if self.key is None and self.value is None:
            raise ValueError(f"rule {self.name!r}: give a key pattern, a value pattern or both")
        for what, pattern in (("key", self.key), ("value", self.value)):
            if pattern is None:
                continue
            try:
                compile_bytes(pattern)
            except PatternError as exc:
                raise ValueError(f"rule {self.name!r}: invalid {what} pattern: {exc}") from None
        return self


class RedactSettings(ProcessorSettings):
    # built-in rule name (or "secret-key", "prompt") -> action; rules left out mask
    actions: dict[str, Action] = Field(default_factory=dict)
    rules: list[UserRule] = Field(default_factory=list)
    pii: list[Literal["email", "phone"]] = Field(default_factory=list)  # opt-in rules
    # GenAI prompt/completion content attributes: scanned like any other value
    # (`redact-secrets`) or removed (`drop`)
    prompts: Literal["redact-secrets", "drop"] = "redact-secrets"
    hash_key: SecretStr | None = None  # HMAC-SHA256 key of the `hash` action
    # attributes on each span / log record that had redactions: `info` the counts
    # (redaction.masked.count, redaction.redacted.count), `debug` also the keys
    # (redaction.masked.keys, redaction.redacted.keys): the OTel Collector's names
    summary: Literal["silent", "info", "debug"] = "silent"
    # a gitleaks TOML config whose rules run as value rules too (redact_gitleaks.py)
    rules_file: Path | None = None

    @model_validator(mode="after")
    def _consistent(self) -> RedactSettings:
        known = {r.name for r in BUILTIN_RULES} | {KEY_RULE}
        for name in self.actions:
            if name not in known:
                listed = ", ".join(sorted(known))
                raise ValueError(f"actions: unknown rule {name!r} (known: {listed})")
        names = [r.name for r in self.rules]
        for name in names:
            if name in known or names.count(name) > 1:
                raise ValueError(f"rules: rule name {name!r} is taken")
        hashing = any(a is Action.HASH for a in self.actions.values()) or any(
            r.action is Action.HASH for r in self.rules)
        if hashing and not (self.hash_key and self.hash_key.get_secret_value()):
            raise ValueError("hash_key is required when a rule's action is hash")
        if self.rules_file is not None:
            try:
                load_gitleaks(self.rules_file)
            except GitleaksError as exc:
                raise ValueError(str(exc)) from None
        return self


class RedactionError(ProcessingError):
    """Redaction failed on a request; says which signal, never what was in it."""


class _BudgetExceeded(Exception):
    pass


# Candidate matches checked in Python (card numbers, checks, replacements) per request:
# about 0.3 s of CPU. A request with more is refused (fail closed) rather than hold the
# event loop for seconds: 20 MiB of 13-digit runs would otherwise cost ~5 s.
MAX_CANDIDATES = 50_000


@dataclass(frozen=True, slots=True)
class _Rule:
    name: str
    regex: Pattern
    group: int
    check: Check | None
    action: Action
    gitleaks: GitleaksRule | None = None  # keywords, secret group, entropy, allowlists


@dataclass(frozen=True, slots=True)
class _KeyRule:
    name: str
    regex: Pattern
    value: Pattern | None  # when set, only values of matching keys that match this
    action: Action


_Verdict = tuple[str, Action] | None


class _Drop:
    """Returned by a text scan when a matching rule's action is `drop`."""


DROP = _Drop()


class _Unchanged:
    """Returned by `Redactor._string_attr` when nothing matched."""


_UNCHANGED = _Unchanged()


def _alternation(forms: Iterable[str]) -> str:
    return "|".join(f"(?:{f})" for f in forms)


def _widen_to_utf8(data: bytes, start: int, end: int) -> tuple[int, int]:
    # a user pattern may start or end inside a multi-byte character: mask the whole one
    while start > 0 and 0x80 <= data[start] < 0xC0:
        start -= 1
    while end < len(data) and 0x80 <= data[end] < 0xC0:
        end += 1
    return start, end


# --- the strings of one item, as `_text_rules` sees them (`Redactor._walk_item`) ---------
def _value_texts(value: AnyValue, out: list[bytes]) -> None:
    kind = value.WhichOneof("value")
    if kind == "string_value":
        if value.string_value:
            out.append(value.string_value.encode("utf-8"))
    elif kind == "bytes_value":
        out.append(value.bytes_value)
    elif kind == "array_value":
        for v in value.array_value.values:
            _value_texts(v, out)
    elif kind == "kvlist_value":
        for kv in value.kvlist_value.values:
            _value_texts(kv.value, out)


def _attr_texts(attrs: Iterable[KeyValue], out: list[bytes]) -> None:
    for kv in attrs:
        _value_texts(kv.value, out)


def _span_texts(span: Any, out: list[bytes]) -> None:
    for text in (span.name, span.status.message):
        if text:
            out.append(text.encode("utf-8"))
    _attr_texts(span.attributes, out)
    for event in span.events:
        if event.name:
            out.append(event.name.encode("utf-8"))
        _attr_texts(event.attributes, out)
    for link in span.links:
        _attr_texts(link.attributes, out)


def _log_texts(record: Any, out: list[bytes]) -> None:
    _value_texts(record.body, out)
    _attr_texts(record.attributes, out)


def _metric_texts(metric: Any, out: list[bytes]) -> None:
    kind = metric.WhichOneof("data")
    if kind is None:
        return
    for point in getattr(metric, kind).data_points:
        _attr_texts(point.attributes, out)
        for exemplar in getattr(point, "exemplars", ()):
            _attr_texts(exemplar.filtered_attributes, out)


_ITEM_TEXTS: dict[Signal, Callable[[Any, list[bytes]], None]] = {
    Signal.TRACES: _span_texts, Signal.LOGS: _log_texts, Signal.METRICS: _metric_texts}
_ITEM_TYPES: dict[Signal, Any] = {
    Signal.TRACES: Span, Signal.LOGS: LogRecord, Signal.METRICS: Metric}
# the attributes field of a span and of a log record
_ATTR_FIELD: dict[Signal, int] = {
    Signal.TRACES: Span.ATTRIBUTES_FIELD_NUMBER, Signal.LOGS: LogRecord.ATTRIBUTES_FIELD_NUMBER}


@dataclass(frozen=True, slots=True)
class _Hits:
    layout: Layout
    at: dict[int, list[tuple[int, int]]]  # item -> (end offset, form) of matches in it
    whole: set[int]  # items an RE2-only form hit (no offsets): walked whole
    outside: bool  # a match outside every item (resource or scope attributes)
    # scope index -> that scope's items in the message (`_message_item`): each step down
    # the message through its wrappers costs ~0.5 µs, and hit items share their scopes
    scope_items: dict[int, Any]

    def items(self) -> set[int]:
        return set(self.at) | self.whole


class Redactor:
    """The compiled rules (once, at start) and the walk. Not thread-safe: `counts` holds
    the current request's redactions per rule."""

    def __init__(self, settings: RedactSettings) -> None:
        actions = settings.actions
        self._key = (settings.hash_key.get_secret_value().encode()
                     if settings.hash_key else b"")
        self._key_action = actions.get(KEY_RULE, Action.MASK)
        self._drop_prompts = settings.prompts == "drop"
        builtin = [r for r in BUILTIN_RULES if not r.pii or r.name in settings.pii]
        rules = [_Rule(r.name, compile_bytes(r.pattern), r.group, r.check,
                       actions.get(r.name, Action.MASK)) for r in builtin]
        # per string: the rules without their assertions; on the raw request: forms that
        # may also look at the bytes around a string (CARD_PRESCAN)
        value_forms = [boundary_free(r.pattern) for r in builtin]
        prescan_forms: list[str | Form] = [
            Form(r.prescan_fast, r.prescan_form(), r.prescan_reach, r.prescan_confirmer,
                 r.prescan_finder)
            if r.prescan_fast
            else r.prescan_form() for r in builtin]
        key_forms = list(KEY_STEM_FORMS)
        self._user_keys: list[_KeyRule] = []
        for u in settings.rules:
            if u.key is None:
                assert u.value is not None
                rules.append(_Rule(u.name, compile_bytes(u.value), 0, None, u.action))
                value_forms.append(boundary_free(u.value))
                prescan_forms.append(boundary_free(u.value))
            else:
                value = compile_bytes(u.value) if u.value is not None else None
                self._user_keys.append(_KeyRule(u.name, compile_bytes(u.key), value, u.action))
                # a hit needs the key (and the value) verbatim in the bytes: either suffices
                key_forms.append(boundary_free(u.value if u.value is not None else u.key))
        if settings.rules_file is not None:
            loaded = load_gitleaks(settings.rules_file)
            for note in loaded.skipped:
                log.warning("rules_file %s: skipped %s", settings.rules_file, note)
            for g in loaded.rules:
                rules.append(_Rule(g.id, g.regex, 0, None, Action.MASK, g))
                # its regex, where Hyperscan takes it (a clean request stays unhit: keywords
                # such as `token` or `key` are in most attribute keys); else its keywords
                form = boundary_free(g.pattern)
                if not hyperscan_takes(form):
                    form = g.prescan_form() or form
                value_forms.append(form)
                prescan_forms.append(form)
        self._rules = tuple(rules)
        if self._user_keys:
            key_forms.append(_JSON_QUOTE_ESCAPE)
        if self._drop_prompts:  # a prompt attribute is dropped whatever it holds
            key_forms += [re.escape(k) for k in (*PROMPT_KEYS, *PROMPT_PREFIXES)]
        self._value_hint = compile_bytes(_alternation(value_forms), capture=False)
        self._key_hint = compile_bytes(_alternation([*key_forms, _JSON_ESCAPE]), capture=False)
        # the raw request, and the strings of one hit item joined (`_item_texts`)
        self.prescan = MultiScan([*prescan_forms, *key_forms, _JSON_ESCAPE])
        self._value_scan = MultiScan(value_forms)
        # while walking one item: its strings no value rule can match, and for those that
        # one may, the indices (in `_rules`) of the rules that may
        self._clean: frozenset[bytes] | set[bytes] = frozenset()
        self._dirty: dict[bytes, set[int]] = {}
        # while walking one attribute: the indices of the only rules that may match in it
        self._only: set[int] | None = None
        self._verdicts: dict[str, _Verdict] = {}
        self._masks: dict[str, bytes] = {}  # rule name -> its mask, encoded (`_emit`)
        self.counts: dict[str, int] = {}
        self.candidates_left = MAX_CANDIDATES
        self.masked = self.dropped = 0  # redactions so far: masked (or hashed), removed
        self._summary = settings.summary
        self._summary_keys: tuple[set[str], set[str]] | None = None  # masked, removed

    # --- requests ------------------------------------------------------------------------
    def can_match(self, payload: bytes) -> bool:
        return self.prescan.any(payload)

    def redact_request(self, signal: Signal, message: Any) -> None:
        """Walk every resource, scope and item."""
        self.candidates_left = MAX_CANDIDATES
        resources, scopes, items = SIGNALS[signal].levels
        item = self._item_walker(signal)
        for resource in getattr(message, resources):
            self._attrs(resource.resource.attributes)
            for scope in getattr(resource, scopes):
                self._attrs(scope.scope.attributes)
                for one in getattr(scope, items):
                    item(one)

    def _hits(self, payload: bytes) -> _Hits | None:
        """Where the pre-scan hit; None when nowhere. Raises WireError and TooManyHits for
        the caller to walk everything."""
        offsets = self.prescan.offsets(payload)
        re2 = bool(self.prescan.re2_forms) and self.prescan.re2_any(payload)
        if not offsets and not re2:
            return None
        lay = layout(payload)
        starts, ends = lay.starts, lay.ends
        at, outside = _spanwalk.group_hits(offsets, starts, ends)  # `locate` per hit, in C
        whole: set[int] = set()
        if re2:
            whole, out = self.prescan.re2_segments(payload, starts, ends)
            outside = outside or out
        return _Hits(lay, at, whole, outside, {})

    def redact_hits(self, signal: Signal, payload: bytes, message: Any) -> None:
        """Walk only the items whose bytes the pre-scan hit (and every resource's and
        scope's attributes after a hit outside the items), on a parsed message. Sound
        because the match of a pre-scan form that a walk's match implies lies inside the
        string the walk scans, which lies inside its item (`redact_scan`)."""
        self.candidates_left = MAX_CANDIDATES
        try:
            hits = self._hits(payload)
        except (WireError, TooManyHits):
            self.redact_request(signal, message)
            return
        if hits is not None:
            self._walk_hits(signal, message, hits)

    def _walk_hits(self, signal: Signal, message: Any, hits: _Hits) -> None:
        resources, scopes, items = SIGNALS[signal].levels
        level0 = getattr(message, resources)
        if hits.outside:
            for resource in level0:
                self._attrs(resource.resource.attributes)
                for scope in getattr(resource, scopes):
                    self._attrs(scope.scope.attributes)
        walk = self._item_walker(signal)
        for k in sorted(hits.items()):
            _, _, r, sc, i = hits.layout.item(k)
            self._walk_item(signal, walk, getattr(getattr(level0[r], scopes)[sc], items)[i])

    def redact_payload(self, signal: Signal, payload: bytes,
                       message: Any | None) -> tuple[bool, bytes | None]:
        """Redact what the pre-scan hit and splice it, re-encoded, into the raw request:
        (whether the pre-scan hit, the new request or None when nothing changed). When
        `message` is given it is edited in step with the bytes. Where the hits lie only in
        attributes of a span or log record, only those attributes are read and re-encoded;
        otherwise the hit item is. A hit outside every item, a wire walk that fails or too
        many hits walk the whole request (`message` or a fresh parse) and re-encode it."""
        self.candidates_left = MAX_CANDIDATES
        try:
            hits = self._hits(payload)
        except (WireError, TooManyHits):
            hits, whole = None, True
        else:
            if hits is None:
                return False, None
            whole = False
            new_fields: list[tuple[int, bytes]] = []
            if hits.outside:
                outside = self._outside(signal, payload, message, hits)
                if outside is None:
                    whole = True
                else:
                    new_fields = outside
        if whole:
            full = message if message is not None else parse_request(signal, payload)
            before = self.masked + self.dropped
            if hits is None:
                self.redact_request(signal, full)
            else:
                self._walk_hits(signal, full, hits)
            if self.masked + self.dropped == before:
                return True, None
            return True, full.SerializeToString()
        assert hits is not None
        new_items: dict[int, bytes] = {}
        for k in sorted(hits.items()):
            try:
                out = self._redact_item(signal, payload, message, hits, k)
            except WireError:
                out = self._redact_whole_item(signal, payload, message, hits, k)
            if out is not None:
                new_items[k] = out
        if not new_items and not new_fields:
            return True, None
        return True, splice(payload, hits.layout, new_items, new_fields)

    def _outside(self, signal: Signal, payload: bytes, message: Any | None,
                 hits: _Hits) -> list[tuple[int, bytes]] | None:
        """After a hit outside every item: every resource's and scope's attributes walked
        (what `_walk_hits` does), each entry's `resource` or `scope` field read alone and,
        when it changed, re-encoded: (content start, new content) per changed field. Not
        the whole request parsed and re-encoded (~2.4 µs a span) for one resource
        attribute (a 32-digit hex id's length byte is a space: a card pre-scan hit). None,
        before anything is walked, when an entry gives its resource or scope twice (the
        parser merges them) or its bytes do not parse: the caller walks the whole request."""
        lay = hits.layout
        resources, scopes, _ = SIGNALS[signal].levels
        # (content start, end, resource index, scope index or -1) of each field
        where: list[tuple[int, int, int, int]] = []
        try:
            for r, (_, start, end) in enumerate(lay.resource_fields):
                fields = first_fields(payload, start, end)
                if len(fields) > 1:
                    return None
                where += [(fs, fe, r, -1) for fs, fe in fields]
            for _, start, end, r, sc, _ in lay.scopes:
                fields = first_fields(payload, start, end)
                if len(fields) > 1:
                    return None
                where += [(fs, fe, r, sc) for fs, fe in fields]
        except WireError:
            return None
        objects: list[Any] = []
        for fs, fe, r, sc in where:
            if message is not None:
                entry = getattr(message, resources)[r]
                objects.append(entry.resource if sc < 0 else getattr(entry, scopes)[sc].scope)
                continue
            kind = Resource if sc < 0 else InstrumentationScope
            try:
                objects.append(kind.FromString(payload[fs:fe]))
            except DecodeError:
                return None
        edits: list[tuple[int, bytes]] = []
        for (fs, _, _, _), obj in zip(where, objects, strict=True):
            before = self.masked + self.dropped
            self._attrs(obj.attributes)
            if self.masked + self.dropped != before:
                edits.append((fs, obj.SerializeToString()))
        return edits

    def _message_item(self, signal: Signal, message: Any, hits: _Hits, k: int) -> Any:
        """Item k in `message` (the one message every call with these hits is given)."""
        lay = hits.layout
        j = lay.scope_of(k)
        found = hits.scope_items.get(j)
        if found is None:
            resources, scopes, items = SIGNALS[signal].levels
            _, _, _, r, sc, _ = lay.scopes[j]
            found = hits.scope_items[j] = getattr(
                getattr(getattr(message, resources)[r], scopes)[sc], items)
        return found[k - lay.first_items[j]]

    def _redact_whole_item(self, signal: Signal, payload: bytes, message: Any | None,
                           hits: _Hits, k: int) -> bytes | None:
        start, end = hits.layout.item(k)[:2]
        item = (self._message_item(signal, message, hits, k) if message is not None
                else _ITEM_TYPES[signal].FromString(payload[start:end]))
        before = self.masked + self.dropped
        self._walk_item(signal, self._item_walker(signal), item)
        return None if self.masked + self.dropped == before else item.SerializeToString()

    def _redact_item(self, signal: Signal, payload: bytes, message: Any | None,
                     hits: _Hits, k: int) -> bytes | None:
        """Item k, re-encoded, or None when unchanged. Reads only the attributes that hold
        a hit when every hit lies in one (the walk of an item reads nothing but them: a
        key rule, a value rule and the prompts policy all need bytes of the attribute)."""
        attr_field = _ATTR_FIELD.get(signal)
        if attr_field is None or k in hits.whole or self._summary != "silent":
            return self._redact_whole_item(signal, payload, message, hits, k)
        start, end = hits.layout.starts[k], hits.layout.ends[k]
        at = hits.at[k]
        # the bytes a match ending at `to` may be about: `to - 1` and `to - 2` (`locate`)
        points = [p for to, _ in at for p in (to - 1, to - 2)]
        # fields are read up to the one holding the last hit's end: max(to) = max(points) + 1
        found = hit_fields(payload, start, end, attr_field, max(points) + 1, points)
        if found is None:  # a hit outside the attributes
            return self._redact_whole_item(signal, payload, message, hits, k)
        item_fields, which = found  # (head, start, end, index among the attributes)
        hit_forms: dict[int, set[int]] = {}  # field -> the pre-scan forms that hit it
        for n, (_, form) in enumerate(at):
            for j in (which[2 * n], which[2 * n + 1]):
                if j >= 0:
                    hit_forms.setdefault(j, set()).add(form)
        attrs = self._message_item(signal, message, hits, k).attributes \
            if message is not None else None
        new: dict[int, bytes | None] = {}  # field -> its new content, None: removed
        removed: list[int] = []  # indices in `attrs` of removed attributes
        direct = not self._user_keys  # a user key rule reads key and value: the wrapper
        for j in sorted(hit_forms):
            _, fstart, fend, index = item_fields[j]
            if direct:
                edit = self._string_attr(payload, fstart, fend, hit_forms[j])
                if edit is not None:
                    if edit is _UNCHANGED:
                        continue
                    if edit is DROP:
                        removed.append(index)
                        new[j] = None
                        continue
                    assert isinstance(edit, tuple)
                    encoded, out = edit
                    if attrs is not None:
                        attrs[index].value.string_value = out.decode("utf-8")
                    new[j] = encoded
                    continue
            if attrs is not None:
                kv = attrs[index]
            else:
                index = -1
                kv = KeyValue.FromString(payload[fstart:fend])
            before = self.masked + self.dropped
            # the value rules whose pre-scan form hit it: forms 0.. are the rules' own
            self._only = hit_forms[j]
            try:
                drop = self._attr(kv)
            finally:
                self._only = None
            if drop:
                new[j] = None
                removed.append(index)
            elif self.masked + self.dropped != before:
                new[j] = kv.SerializeToString()
        if not new:
            return None
        if attrs is not None:
            for index in reversed(removed):
                del attrs[index]
        pieces: list[bytes] = []
        pos = start
        for j in sorted(new):
            head, _, fend, _ = item_fields[j]
            pieces.append(payload[pos:head])
            content = new[j]
            if content is not None:
                pieces += (field_header(payload, head, len(content)), content)
            pos = fend
        pieces.append(payload[pos:end])
        return b"".join(pieces)

    def _string_attr(self, payload: bytes, start: int, end: int, only: set[int],
                     ) -> tuple[bytes, bytes] | _Drop | _Unchanged | None:
        """An attribute that is exactly a key and a string value (`_spanwalk.kv_string`)
        whose key no key rule or prompts policy takes, redacted from its bytes: its new
        content and its new string's bytes, DROP to remove it, or _UNCHANGED. What `_attr`
        does through the message wrappers, and what the re-serialised KeyValue would be,
        since the parser reads those bytes as that key and that string and serialises them
        back as the same two fields (property-tested against `_attr`). None: use `_attr`."""
        found = _spanwalk.kv_string(payload, start, end)
        if found is None:
            return None
        ks, ke, vs, ve = found
        key = payload[ks:ke]
        name = key.decode("utf-8")  # the parser's UTF-8 check
        if self._verdict(name) is not None or (self._drop_prompts and is_prompt_key(name)):
            return None
        data = payload[vs:ve]
        data.decode("utf-8")
        if not data:
            return _UNCHANGED
        out = self._bytes(data, True, 0, only)
        if out is None:
            return _UNCHANGED
        if out is DROP:
            return DROP
        assert isinstance(out, bytes)
        return _spanwalk.kv_encode(key, out), out

    def _walk_item(self, signal: Signal, walk: Callable[[Any], None], item: Any) -> None:
        """Walk one item; one scan over its strings joined tells which of them any value
        rule could match, so the others skip their own search (~2 µs each)."""
        texts: list[bytes] = []
        _ITEM_TEXTS[signal](item, texts)
        if texts:
            starts, ends, pos = [], [], 0
            for t in texts:
                starts.append(pos)
                pos += len(t)
                ends.append(pos)
                pos += 1
            every = set(range(len(self._rules)))
            try:
                hit, _ = self._value_scan.segments(b"\n".join(texts), starts, ends)
            except TooManyHits:
                hit = dict.fromkeys(range(len(texts)), every)
            dirty: dict[bytes, set[int]] = {}
            for k, rules in hit.items():  # equal strings: the union of their rules
                dirty.setdefault(texts[k], set()).update(rules)
            self._dirty = dirty
            self._clean = {t for t in texts if t not in dirty}
        try:
            walk(item)
        finally:
            self._clean = frozenset()
            self._dirty = {}

    def _item_walker(self, signal: Signal) -> Callable[[Any], None]:
        if signal is Signal.TRACES:
            return self._span
        if signal is Signal.LOGS:
            return self._log_record
        return self._metric

    def _log_record(self, record: Any) -> None:
        before = self._summary_start()
        if record.HasField("body"):
            self._any(record.body, droppable=False)
        self._attrs(record.attributes)
        self._summary_end(before, record.attributes)

    def _metric(self, metric: Any) -> None:
        kind = metric.WhichOneof("data")
        if kind is None:
            return
        for point in getattr(metric, kind).data_points:
            self._attrs(point.attributes)
            for exemplar in getattr(point, "exemplars", ()):
                self._attrs(exemplar.filtered_attributes)

    def _span(self, span: Any) -> None:
        before = self._summary_start()
        self._span_fields(span)
        self._summary_end(before, span.attributes)

    def _summary_start(self) -> tuple[int, int]:
        if self._summary == "debug":
            self._summary_keys = (set(), set())
        return self.masked, self.dropped

    def _summary_end(self, before: tuple[int, int], attrs: Any) -> None:
        """Summary attributes on the item, named as the OTel Collector's redaction
        processor names them."""
        if self._summary == "silent":
            return
        masked, dropped = self.masked - before[0], self.dropped - before[1]
        if masked:
            attrs.add(key="redaction.masked.count", value=AnyValue(int_value=masked))
        if dropped:
            attrs.add(key="redaction.redacted.count", value=AnyValue(int_value=dropped))
        if self._summary_keys is not None:
            for name, keys in zip(("redaction.masked.keys", "redaction.redacted.keys"),
                                  self._summary_keys, strict=True):
                if keys:
                    attrs.add(key=name, value=AnyValue(string_value=",".join(sorted(keys))))
        self._summary_keys = None

    def _span_fields(self, span: Any) -> None:
        name = self._string(span.name, droppable=False)
        if isinstance(name, str):
            span.name = name
        if span.status.message:
            message = self._string(span.status.message, droppable=False)
            if isinstance(message, str):
                span.status.message = message
        self._attrs(span.attributes)
        for event in span.events:
            event_name = self._string(event.name, droppable=False)
            if isinstance(event_name, str):
                event.name = event_name
            self._attrs(event.attributes)
        for link in span.links:
            self._attrs(link.attributes)

    # --- values --------------------------------------------------------------------------
    def _attrs(self, attrs: MutableSequence[KeyValue]) -> None:
        if not attrs:
            return
        drop: list[int] = []
        for i, kv in enumerate(attrs):
            masked, dropped = self.masked, self.dropped
            if self._attr(kv):
                drop.append(i)
            if self._summary_keys is not None:
                if self.masked != masked:
                    self._summary_keys[0].add(kv.key)
                if self.dropped != dropped:
                    self._summary_keys[1].add(kv.key)
        for i in reversed(drop):
            del attrs[i]

    def _attr(self, kv: KeyValue) -> bool:
        """Redact one attribute in place; True when it is to be removed."""
        verdict = self._verdict(kv.key)
        if verdict is not None:
            return self._whole_value(kv.value, verdict)
        if self._drop_prompts and is_prompt_key(kv.key):
            self._count(PROMPT_RULE, dropped=True)
            return True
        return bool((self._user_keys and self._user_key_value(kv))
                    or self._any(kv.value, droppable=True))

    def _verdict(self, key: str) -> _Verdict:
        """Key-rule verdict for an attribute or JSON key (cached: keys repeat)."""
        try:
            return self._verdicts[key]
        except KeyError:
            pass
        norm = normalise_key(key)
        verdict: _Verdict = None
        if is_secret_key(key, norm):
            verdict = (KEY_RULE, self._key_action)
        elif not is_allowlisted(norm):
            data = key.encode()
            for rule in self._user_keys:
                if rule.value is None and rule.regex.hit(data):
                    verdict = (rule.name, rule.action)
                    break
        if len(self._verdicts) >= _KEY_CACHE_MAX:
            self._verdicts.clear()
        self._verdicts[key] = verdict
        return verdict

    def _user_key_value(self, kv: KeyValue) -> bool:
        """User rules with both a key and a value pattern (searched in a string value);
        True to drop the attribute."""
        if kv.value.WhichOneof("value") != "string_value":
            return False
        data = kv.key.encode()
        text = kv.value.string_value.encode()
        for rule in self._user_keys:
            if rule.value is None or not rule.regex.hit(data):
                continue
            if rule.value.hit(text):
                return self._whole_value(kv.value, (rule.name, rule.action))
        return False

    def _whole_value(self, value: AnyValue, verdict: tuple[str, Action]) -> bool:
        """Apply a key rule to a whole value; True when the attribute is to be dropped."""
        name, action = verdict
        self._count(name, dropped=action is Action.DROP)
        if action is Action.DROP:
            return True
        # only a hash reads the secret: a mask need not serialise a large value
        secret = value.SerializeToString() if action is Action.HASH else b""
        value.string_value = self._replacement(name, action, secret)
        return False

    def _any(self, value: AnyValue, droppable: bool) -> bool:
        """Redact an AnyValue in place; True when it is to be dropped by its container."""
        kind = value.WhichOneof("value")
        if kind == "string_value":
            out = self._string(value.string_value, droppable)
            if out is DROP:
                return True
            if isinstance(out, str):
                value.string_value = out
        elif kind == "bytes_value":
            # scanned as they are, valid UTF-8 or not: a secret next to a stray byte is
            # still a secret, and the rules read bytes (Latin-1 mode)
            scanned = self._bytes(value.bytes_value, droppable)
            if scanned is DROP:
                return True
            if isinstance(scanned, bytes):
                value.bytes_value = scanned
        elif kind == "array_value":
            values = value.array_value.values
            drop = [i for i, v in enumerate(values) if self._any(v, droppable=True)]
            for i in reversed(drop):
                del values[i]
        elif kind == "kvlist_value":
            self._attrs(value.kvlist_value.values)
        return False

    def _string(self, text: str, droppable: bool) -> str | _Drop | None:
        """The redacted text, DROP, or None when nothing matched."""
        if not text:
            return None
        data = text.encode("utf-8")
        out = self._bytes(data, droppable)
        if out is DROP:
            return DROP
        if out is None:
            return None
        assert isinstance(out, bytes)
        return out.decode("utf-8")

    def _bytes(self, data: bytes, droppable: bool, depth: int = 0,
               only: set[int] | None = None) -> bytes | _Drop | None:
        """`only`: the rules that may match (`_text_rules`)."""
        changed = False
        out = self._text_rules(data, droppable, only)
        if out is DROP:
            return DROP
        if isinstance(out, bytes):
            data, changed = out, True
        if data.lstrip()[:1] in _JSON_START and self._key_hint.hit(data):
            rewritten = self._json_text(data, depth)
            if rewritten is DROP:
                return DROP
            if isinstance(rewritten, bytes):
                data, changed = rewritten, True
        return data if changed else None

    def _text_rules(self, data: bytes, droppable: bool,
                    only: set[int] | None = None) -> bytes | _Drop | None:
        """`only`: the indices of the only forms that may match in `data` (a pre-scan's),
        else this item's (`_walk_item`) or this attribute's (`_only`)."""
        every = self._rules
        if only is None:
            if data in self._clean:
                return None
            only = self._dirty.get(data) if self._only is None else self._only
            if only is None and not self._value_hint.hit(data):
                return None
        # forms past the rules' own are key forms (`prescan`): no rule of theirs to run
        rules = every if only is None else [every[i] for i in sorted(only) if i < len(every)]
        spans: list[tuple[int, int, _Rule]] = []
        lowered: bytes | None = None
        for rule in rules:
            gitleaks = rule.gitleaks
            if gitleaks is not None:
                if lowered is None:
                    lowered = data.lower()  # ASCII only, as the keywords' pre-scan form
                if not gitleaks.applies(lowered):
                    continue
            # each pass over a long string counts too: hundreds of rules (a gitleaks
            # file) over megabytes stay within the budget (~0.3 s of scanning)
            self.candidates_left -= len(data) >> 12
            if gitleaks is None:
                found = self._matches(rule, data, droppable)
                if found is DROP:
                    return DROP
                assert isinstance(found, list)
                spans.extend(found)
                continue
            for m in rule.regex.finditer(data):
                self.candidates_left -= 1
                if self.candidates_left < 0:
                    raise _BudgetExceeded
                secret = gitleaks.secret(data, m)
                if not secret:
                    continue
                if rule.action is Action.DROP and droppable:
                    self._count(rule.name, dropped=True)
                    return DROP
                spans.extend((*_widen_to_utf8(data, s, e), rule) for s, e in secret)
        if not spans:
            return None
        if len(spans) > 1:
            spans.sort(key=lambda s: (s[0], -s[1]))
        pieces: list[bytes] = []
        pos = 0
        cur_start, cur_end, cur_rule = spans[0]
        for start, end, rule in spans[1:]:
            if start < cur_end:  # overlapping matches are masked as one
                cur_end = max(cur_end, end)
                continue
            pieces += (data[pos:cur_start], self._emit(data, cur_start, cur_end, cur_rule))
            pos = cur_end
            cur_start, cur_end, cur_rule = start, end, rule
        pieces += (data[pos:cur_start], self._emit(data, cur_start, cur_end, cur_rule),
                   data[cur_end:])
        return b"".join(pieces)

    def _matches(self, rule: _Rule, data: bytes, droppable: bool = True,
                 ) -> list[tuple[int, int, _Rule]] | _Drop:
        """The spans a built-in or user value rule masks in `data`: the matches google-re2's
        `finditer` would give (leftmost-first, each search from the end of the last match,
        one byte on after an empty one), found by calling RE2 directly (`Re2Pattern`)."""
        out: list[tuple[int, int, _Rule]] = []
        regex, group, check = rule.regex, rule.group, rule.check
        pos, n = 0, len(data)
        while True:
            found = regex.spans(data, pos)
            if found is None:
                break
            end0 = found[0][1]
            start, end = found[group]
            # a check reads its match in Python: a long digit run costs as much as
            # many candidates (~6 µs per 16 bytes)
            self.candidates_left -= 1 if check is None else 1 + (end - start) // 16
            if self.candidates_left < 0:
                raise _BudgetExceeded
            if start >= 0 and start != end:
                masked = [(start, end)] if check is None else check(data, start, end)
                if masked:
                    if rule.action is Action.DROP and droppable:
                        self._count(rule.name, dropped=True)
                        return DROP
                    for s, e in masked:
                        # `_widen_to_utf8` moves an edge only inside a multi-byte character
                        if (s > 0 and 0x80 <= data[s] < 0xC0) or (
                                e < n and 0x80 <= data[e] < 0xC0):
                            s, e = _widen_to_utf8(data, s, e)
                        out.append((s, e, rule))
            # from the end of the text only an empty match can follow, which masks nothing
            if pos == n or end0 == n:
                break
            pos = pos + 1 if pos == end0 else end0
        return out

    def _emit(self, data: bytes, start: int, end: int, rule: _Rule) -> bytes:
        """What replaces data[start:end], counted."""
        name = rule.name
        self._count(name)
        if rule.action is Action.HASH:
            return self._replacement(name, Action.HASH, data[start:end]).encode()
        # a mask (or a drop where nothing can be removed): the same bytes every time
        mask = self._masks.get(name)
        if mask is None:
            mask = self._masks[name] = self._replacement(name, Action.MASK, b"").encode()
        return mask

    def _replacement(self, name: str, action: Action, secret: bytes) -> str:
        if action is Action.HASH:
            digest = hmac.new(self._key, secret, hashlib.sha256).hexdigest()[:16]
            return f"[REDACTED:{name}:{digest}]"
        return f"[REDACTED:{name}]"

    # --- JSON text inside a string ---------------------------------------------------------
    def _json_text(self, data: bytes, depth: int) -> bytes | _Drop | None:
        """Key rules inside JSON text (value rules already ran on the text itself). The
        text is re-serialised only when a key rule fired in it."""
        try:
            doc = json.loads(data.decode("utf-8", "surrogatepass"))
        except RecursionError:
            # nested too deep to read its keys: mask it whole rather than pass it unread
            self._count(JSON_DEPTH_RULE)
            return f"[REDACTED:{JSON_DEPTH_RULE}]".encode()
        except ValueError:
            return None  # not JSON
        escaped = b"\\" in data
        doc, changed = self._json_node(doc, depth, escaped)
        if not changed:
            return None
        try:
            return json.dumps(doc, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate from a `\ud800` escape: keep it escaped
            return json.dumps(doc).encode("utf-8")

    def _json_node(self, node: Any, depth: int, escaped: bool) -> tuple[Any, bool]:
        """`escaped`: the text held escapes, so its decoded strings may hold secrets the
        value rules did not see in the raw text."""
        changed = False
        if isinstance(node, dict):
            for key in list(node):
                verdict = self._verdict(key) if isinstance(key, str) else None
                if verdict is not None:
                    name, action = verdict
                    self._count(name, dropped=action is Action.DROP)
                    changed = True
                    if action is Action.DROP:
                        del node[key]
                    else:
                        raw = (json.dumps(node[key], sort_keys=True).encode()
                               if action is Action.HASH else b"")
                        node[key] = self._replacement(name, action, raw)
                    continue
                node[key], sub = self._json_node(node[key], depth, escaped)
                changed = changed or sub
        elif isinstance(node, list):
            for i, item in enumerate(node):
                node[i], sub = self._json_node(item, depth, escaped)
                changed = changed or sub
        elif isinstance(node, str):
            data = node.encode("utf-8", "surrogatepass")
            if escaped:
                masked = self._decoded_text_rules(data)
                if masked is not None:
                    data, node, changed = masked, masked.decode("utf-8", "surrogatepass"), True
            if (depth < _MAX_JSON_DEPTH and data.lstrip()[:1] in _JSON_START
                    and self._key_hint.hit(data)):
                out = self._json_text(data, depth + 1)
                if isinstance(out, bytes):
                    return out.decode("utf-8", "surrogatepass"), True
        return node, changed

    def _decoded_text_rules(self, data: bytes) -> bytes | None:
        """Every value rule on a string decoded from escaped JSON text: the rules the raw
        attribute's pre-scan hit (`_only`) say nothing about it."""
        only, self._only = self._only, None
        try:
            out = self._text_rules(data, droppable=False)
        finally:
            self._only = only
        return out if isinstance(out, bytes) else None

    def _count(self, rule: str, dropped: bool = False) -> None:
        self.counts[rule] = self.counts.get(rule, 0) + 1
        if dropped:
            self.dropped += 1
        else:
            self.masked += 1


class RedactProcessor:
    name = "redact"
    mutates = True
    signals = frozenset(Signal)

    def __init__(self, settings: RedactSettings) -> None:
        self.redactor = Redactor(settings)
        self._skipped = {s: REDACT_REQUESTS.labels(s.value, "skipped") for s in Signal}
        self._walked = {s: REDACT_REQUESTS.labels(s.value, "walked") for s in Signal}
        self._failures = {s: REDACT_FAILURES.labels(s.value) for s in Signal}

    def process(self, work: Work) -> None:
        # Runs first (order 10), so `work.payload` is still what `work.message` holds.
        redactor = self.redactor
        redactor.counts = {}
        try:
            hit, payload = redactor.redact_payload(
                work.signal, work.payload, work.peek_message())
        except _BudgetExceeded:
            self._failures[work.signal].inc()
            raise RedactionError(
                f"redaction refused a {work.signal.value} request: more than "
                f"{MAX_CANDIDATES} candidate matches") from None
        except Exception:
            self._failures[work.signal].inc()
            # `from None`: the cause's message could quote the content
            raise RedactionError(f"redaction failed on a {work.signal.value} request") from None
        (self._walked if hit else self._skipped)[work.signal].inc()
        # The hit items were re-encoded and spliced into the request's bytes; a message the
        # receiver parsed was edited in step, without marking it touched, so the stage does
        # not re-encode the whole request.
        if payload is not None:
            work.replace_payload(payload)
        for rule, n in redactor.counts.items():
            REDACT_REDACTIONS.labels(work.signal.value, rule).inc(n)


def _create(settings: ProcessorSettings) -> RedactProcessor:
    assert isinstance(settings, RedactSettings)
    return RedactProcessor(settings)


register_processor(ProcessorFactory("redact", RedactSettings, 10, _create))
