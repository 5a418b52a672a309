"""Built-in redaction rules, key-name rules and the RE2 helpers they compile with.

Every pattern runs on UTF-8 bytes in RE2's Latin-1 mode: the same engine, options and text
for the raw-bytes pre-scan and for the walk over parsed strings, so the walk can only find
what the pre-scan found (genai-and-logs.md §5; perf-notes.md for RE2 vs `re` costs). RE2 is
linear in the text, so no pattern, built-in or user-written, can stall the daemon."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import re2  # type: ignore[import-untyped]  # google-re2 ships no type hints


class Match(Protocol):
    def start(self, group: int = 0) -> int: ...

    def end(self, group: int = 0) -> int: ...

    def span(self, group: int = 0) -> tuple[int, int]: ...


class Pattern(Protocol):
    def search(self, text: bytes, pos: int = 0) -> Match | None: ...

    def finditer(self, text: bytes) -> list[Match]: ...

    def hit(self, text: bytes, pos: int = 0, endpos: int | None = None) -> bool: ...

    def spans(self, text: bytes, pos: int = 0) -> list[tuple[int, int]] | None: ...


class PatternError(ValueError):
    """A pattern RE2 cannot compile; the message names the pattern's problem, not a value."""


def compile_bytes(pattern: str, capture: bool = True) -> Pattern:
    """Compile for UTF-8 bytes, one byte per character (Latin-1 mode). `capture=False`
    for yes/no searches: without submatches RE2 answers from its DFA (measured ~10x
    faster per call on short strings)."""
    options = re2.Options()
    options.encoding = re2.Options.Encoding.LATIN1
    options.log_errors = False
    options.never_capture = not capture
    try:
        compiled = re2.compile(pattern.encode("utf-8"), options)
    except re2.error as exc:
        raise PatternError(str(exc)) from None
    return Re2Pattern(compiled)


_UNANCHORED = getattr(getattr(re2, "_Anchor", None), "UNANCHORED", None)
_NO_SPAN = (-1, -1)


class Re2Pattern:
    """A compiled google-re2 pattern. `search` and `finditer` are google-re2's own (Match
    objects); `hit` and `spans` call the compiled RE2 object directly, as google-re2's
    bytes path does inside `search` (`_Regexp._match`), without its generator and Match
    object: ~2.5 instead of ~5-7 µs a call, and a redaction makes a few per hit."""

    __slots__ = ("_compiled", "_match")

    def __init__(self, compiled: Any) -> None:
        self._compiled = compiled
        raw = getattr(compiled, "_regexp", None)
        self._match = raw.Match if raw is not None and _UNANCHORED is not None else None

    @property
    def groups(self) -> int:
        return int(self._compiled.groups)

    def search(self, text: bytes, pos: int = 0) -> Match | None:
        found: Match | None = self._compiled.search(text, pos)
        return found

    def finditer(self, text: bytes) -> list[Match]:
        found: list[Match] = self._compiled.finditer(text)
        return found

    def spans(self, text: bytes, pos: int = 0) -> list[tuple[int, int]] | None:
        """(start, end) of the whole leftmost match and of each group ((-1, -1): no
        part), searching text[pos:] with text's own edges; None without a match."""
        n = len(text)
        if pos > n:
            return None
        if self._match is None:
            m = self._compiled.search(text, pos)
            if m is None:
                return None
            return [m.span(g) for g in range(self._compiled.groups + 1)]
        found: list[tuple[int, int]] = self._match(_UNANCHORED, text, max(pos, 0), n)
        return None if found[0] == _NO_SPAN else found

    def hit(self, text: bytes, pos: int = 0, endpos: int | None = None) -> bool:
        n = len(text)
        end = n if endpos is None else max(0, min(endpos, n))
        pos = max(pos, 0)
        if pos > end:
            return False
        if self._match is None:
            return self._compiled.search(text, pos, end) is not None
        return bool(self._match(_UNANCHORED, text, pos, end)[0] != _NO_SPAN)


_ASSERTIONS = frozenset("bBAz")


def boundary_free(pattern: str) -> str:
    """`pattern` without `^`, `$`, `\\b`, `\\B`, `\\A`, `\\z`: removing an assertion only
    widens what a pattern matches, and in raw protobuf bytes the byte before a string is
    its length varint, which can be a letter. Hand-written: RE2 has no public parse tree in
    Python; the lexer only needs escapes, `\\Q...\\E` and character classes."""
    out: list[str] = []
    i, n = 0, len(pattern)
    in_class = False
    while i < n:
        c = pattern[i]
        if c == "\\" and i + 1 < n:
            nxt = pattern[i + 1]
            if nxt == "Q":
                end = pattern.find("\\E", i + 2)
                end = n if end < 0 else end + 2
                out.append(pattern[i:end])
                i = end
                continue
            if not in_class and nxt in _ASSERTIONS:
                i += 2
                continue
            out.append(pattern[i:i + 2])
            i += 2
            continue
        if in_class:
            if c == "]":
                in_class = False
            out.append(c)
            i += 1
            continue
        if c == "[":
            in_class = True
            out.append(c)
            i += 1
            # a `]` right after `[` or `[^` is a literal member
            if i < n and pattern[i] == "^":
                out.append("^")
                i += 1
            if i < n and pattern[i] == "]":
                out.append("]")
                i += 1
            continue
        if c in "^$":
            i += 1
            continue
        out.append(c)
        i += 1
    return "".join(out)


# A check on a candidate match: (text, start, end of the masked group) -> the spans to
# mask, none to let it be.
Check = Callable[[bytes, int, int], "list[tuple[int, int]]"]


@dataclass(frozen=True, slots=True)
class ValueRule:
    name: str
    pattern: str  # RE2 syntax; group 1 is masked when present, else the whole match
    check: Check | None = None
    group: int = 0  # the capture group to mask (0: the whole match)
    pii: bool = False  # opt-in
    prescan: str | None = None  # a hand-proved superset, when the boundary-free form is weak
    # a cheap superset of `prescan` to scan for, confirmed around each hit (redact_scan.Form)
    prescan_fast: str | None = None
    prescan_reach: int = 0
    prescan_confirmer: str = ""  # a C confirm of `prescan` (redact_scan.CONFIRMERS)
    prescan_finder: str = ""  # a C finder of `prescan_fast` (redact_scan.FINDERS)

    def prescan_form(self) -> str:
        return self.prescan if self.prescan is not None else boundary_free(self.pattern)


def _not_followed_by(chars: bytes) -> Check:
    allowed = frozenset(chars)

    def check(text: bytes, start: int, end: int) -> list[tuple[int, int]]:
        return [(start, end)] if end >= len(text) or text[end] not in allowed else []

    return check


_B64 = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
_DIGITS = frozenset(b"0123456789")


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _known_iin(d: str) -> bool:
    n = len(d)
    if d[0] == "4":
        return n in (13, 16, 19)
    two, four = int(d[:2]), int(d[:4])
    if 51 <= two <= 55 or 2221 <= four <= 2720:
        return n == 16
    if two in (34, 37):
        return n == 15
    if d.startswith(("6011", "65")) or 644 <= int(d[:3]) <= 649:
        return 16 <= n <= 19
    if 3528 <= four <= 3589:
        return 16 <= n <= 19
    return False


def is_card_number(digits: str) -> bool:
    return 13 <= len(digits) <= 19 and _known_iin(digits) and luhn_ok(digits)


_ALNUM = frozenset(b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")


def _card_check(text: bytes, start: int, end: int) -> list[tuple[int, int]]:
    """`start:end` is a maximal run of digits with single spaces or dashes between: each
    window of whole digit groups that is a card number (the shortest from each group on,
    the next one after it; a run of 37 bytes holds two). Not when the run touches a
    letter or `_` (ids: `call_5017262279051f`), follows `$` or touches `-` (UUIDs), or is
    part of a decimal. A run may hold any number of cards (`4111 1111 1111 1111 5500 ...`)."""
    if start > 0 and (text[start - 1] in _ALNUM or text[start - 1] in b"-_$" or (
            start >= 2 and text[start - 1] == 0x2E and text[start - 2] in _DIGITS)):
        return []
    if end < len(text) and (text[end] in _ALNUM or text[end] in b"-_" or (
            end + 1 < len(text) and text[end] == 0x2E and text[end + 1] in _DIGITS)):
        return []
    groups: list[tuple[int, int]] = []
    pos = start
    for part in text[start:end].replace(b"-", b" ").split(b" "):
        groups.append((pos - start, pos - start + len(part)))
        pos += len(part) + 1
    found: list[tuple[int, int]] = []
    i = 0
    while i < len(groups):
        digits = ""
        for j in range(i, len(groups)):
            digits += text[start + groups[j][0]:start + groups[j][1]].decode("ascii")
            if len(digits) > 19:
                break
            if is_card_number(digits):
                found.append((start + groups[i][0], start + groups[j][1]))
                i = j
                break
        i += 1
    return found


# UUIDs and ids (`call_...`) hold 13-digit runs often enough to trip a plain digit-run
# pre-scan on most requests. A run the card rule accepts is, inside its string: after a byte
# other than [0-9A-Za-z_$-] (raw bytes hold it verbatim: first arm); or before a byte other
# than [0-9A-Za-z_-] (third arm); or it is the whole string, at most 37 bytes, so the length
# byte before it is 13..37, none of [0-9A-Za-z_-], and `$` (36) only before a run of 19
# digits (second arm). A run longer than 37 bytes, whose length byte may be anything, has
# at least 20 digits (fourth arm: cards run on in one run, `4111 1111 1111 1111 5500 ...`;
# a 20-digit id costs a walk of its item). Each arm holds a CARD_DIGITS match ending at its
# end or one byte before, within CARD_REACH bytes: the pre-scan finds CARD_DIGITS (cheap)
# and confirms the arms around each hit (`redact_scan.Form`).
CARD_PRESCAN = (r"[^0-9A-Za-z_$-]\d(?:[ -]?\d){12}|\$\d(?:[ -]?\d){18}"
                r"|\d(?:[ -]?\d){12}[^0-9A-Za-z_-]|\d(?:[ -]?\d){19}")
CARD_DIGITS = r"\d(?:[ -]?\d){12}"
CARD_REACH = 40  # the longest arm: `$`, 19 digits, 18 separators
CARD_CONFIRMER = "card-prescan"  # redact_scan.CONFIRMERS: CARD_PRESCAN in C, not RE2
CARD_FINDER = "card-digits"  # redact_scan.FINDERS: CARD_DIGITS in C, not Hyperscan


def _aws_key_id_check(text: bytes, start: int, end: int) -> list[tuple[int, int]]:
    # the id AWS documentation uses
    return [] if text[start:end].endswith(b"EXAMPLE") else [(start, end)]


# Order matters where rules overlap: the first rule of an overlapping pair names the mask.
BUILTIN_RULES: tuple[ValueRule, ...] = (
    ValueRule("private-key",
              r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----(?s:.)*?"
              r"(?:-----END (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----|\z)"),
    ValueRule("jwt", r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*"),
    ValueRule("bearer", r"(?i)\bbearer\s+([A-Za-z0-9._~+/-]{8,}=*)", group=1),
    ValueRule("anthropic-key", r"\bsk-ant-[a-z]{2,8}\d{2}-[A-Za-z0-9_-]{20,}"),
    ValueRule("openai-key", r"\bsk-(?:proj|svcacct|admin)-[A-Za-z0-9_-]{20,}"
                            r"|\bsk-[A-Za-z0-9]{20}T3BlbkFJ[A-Za-z0-9]{20}"),
    ValueRule("sk-key", r"\bsk-[A-Za-z0-9_-]{32,}"),
    ValueRule("aws-access-key-id", r"\b(?:AKIA|ASIA|ABIA|ACCA)[A-Z2-7]{16}\b",
              _aws_key_id_check),
    ValueRule("aws-secret-access-key",
              r"(?i)(?:aws_?secret(?:_?access)?_?key|secretaccesskey)[\"'\s:=]{1,5}"
              r"([A-Za-z0-9/+]{40})", _not_followed_by(_B64 + b"/+"), group=1),
    ValueRule("github-token", r"\bgh[pousr]_[A-Za-z0-9]{36}\b|\bgithub_pat_[A-Za-z0-9_]{82}\b"),
    ValueRule("slack-webhook",
              r"https://hooks\.slack\.com/(?:services|workflows|triggers)/[A-Za-z0-9/+_-]{20,}"),
    ValueRule("slack-token", r"\bxox[abeoprs]-[A-Za-z0-9-]{10,}|\bxapp-\d-[A-Za-z0-9-]{10,}"),
    ValueRule("stripe-key",
              r"\b(?:sk|rk)_(?:live|test|prod)_[A-Za-z0-9]{10,99}\b|\bwhsec_[A-Za-z0-9]{20,}"),
    ValueRule("google-api-key", r"\bAIza[0-9A-Za-z_-]{35}", _not_followed_by(_B64 + b"_-")),
    # the password only: user and host stay; `"` ends it so a match cannot cross a JSON string
    ValueRule("url-credentials", r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s/:@\"]*:([^\s/@\"]+)@", group=1),
    ValueRule("card-number", r"\d(?:[ -]?\d){12,}", _card_check, prescan=CARD_PRESCAN,
              prescan_fast=CARD_DIGITS, prescan_reach=CARD_REACH,
              prescan_confirmer=CARD_CONFIRMER, prescan_finder=CARD_FINDER),
    ValueRule("email", r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b",
              pii=True),
    ValueRule("phone", r"\+[1-9]\d{0,2}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{2,4}(?:[ .-]?\d{2,4}){1,3}",
              pii=True),
)

# --- key names ---------------------------------------------------------------------------
# A normalised key (ASCII lower-case, `-` `.` ` ` -> `_`) that ends with one of these has its
# whole value redacted (§5.2). Each ends with one of KEY_STEMS, which the pre-scan looks for.
SECRET_KEYS: tuple[str, ...] = (
    "password", "passwd", "pwd", "secret", "client_secret", "token", "access_token",
    "refresh_token", "id_token", "api_key", "apikey", "x_api_key", "x_goog_api_key",
    "authorization", "proxy_authorization", "cookie", "set_cookie", "private_key",
    "credentials", "session_id", "x_amz_security_token", "openai_api_key", "anthropic_api_key",
)

# Never matched by key rules (checked first): token counts the `cost` processor needs, ids.
# Their values are still scanned by the value rules.
ALLOW_PREFIXES: tuple[str, ...] = (
    "gen_ai_usage_", "llm_usage_", "llm_token_count_", "ai_usage_")
ALLOW_SUFFIXES: tuple[str, ...] = ("tokens", "token_count")
ALLOW_EXACT: frozenset[str] = frozenset({
    "gen_ai_token_type", "trace_id", "span_id", "parent_span_id", "service_name"})

_SEP = r"[-_. ]"
# Pre-scan forms of the key stems: every SECRET_KEYS entry ends with one of them, in any
# case and with any separator. `token` is special: `gen_ai.usage.input_tokens` is on every
# LLM span. After a key string the raw bytes hold the next field's tag (or the end of the
# request). `_` and `.` are never a tag's first byte (wire types 7 and 6), and `s`/`S` only
# starts a group (wire type 3), which OTLP never uses. So an occurrence of `token` followed
# by `_`, `.` or `s` is not the end of a key, and skipping those keeps the pre-scan a
# superset of the key rules for every request the OTLP schema can express. (A hand-made
# request with an unknown group field right after a key ending in `token` is the one shape
# this does not cover.) In JSON text a key ends at `"`, which is kept.
KEY_STEM_FORMS: tuple[str, ...] = (
    r"(?i)passw(?:or)?d", r"(?i)pwd", r"(?i)secret", rf"(?i)api{_SEP}?key",
    r"(?i)authorization", r"(?i)cookie", rf"(?i)private{_SEP}key", r"(?i)credentials",
    r"(?i)session[-_ ]id",  # not `session.id`: ALLOW_RAW_SUFFIXES
    r"(?i)token(?:\z|[^s._])",
)

_NORMALISE = str.maketrans({**{chr(c): chr(c + 32) for c in range(65, 91)},
                            "-": "_", ".": "_", " ": "_"})


def normalise_key(key: str) -> str:
    """ASCII-only lower-casing (str.lower folds e.g. KELVIN SIGN to `k`, which the byte
    pre-scan would not see), separators to `_`."""
    return key.translate(_NORMALISE)


def is_allowlisted(norm: str) -> bool:
    return (norm in ALLOW_EXACT or norm.startswith(ALLOW_PREFIXES)
            or norm.endswith(ALLOW_SUFFIXES))


_LOWER = str.maketrans({chr(c): chr(c + 32) for c in range(65, 91)})
# OpenTelemetry's `session.id` (on every span of some apps) is a correlation id, not the
# session cookie a `session_id`, `session-id` or `SESSION_ID` key usually holds.
ALLOW_RAW_SUFFIXES: tuple[str, ...] = ("session.id",)


def is_secret_key(key: str, norm: str) -> bool:
    return (norm.endswith(SECRET_KEYS) and not is_allowlisted(norm)
            and not key.translate(_LOWER).endswith(ALLOW_RAW_SUFFIXES))


# GenAI prompt and completion content (§1.7), for the `prompts` policy.
PROMPT_KEYS: frozenset[str] = frozenset({
    "gen_ai.input.messages", "gen_ai.output.messages", "gen_ai.system_instructions",
    "ai.response.text", "gen_ai.prompt", "gen_ai.completion"})
PROMPT_PREFIXES: tuple[str, ...] = (
    "gen_ai.prompt.", "gen_ai.completion.", "llm.input_messages.", "llm.output_messages.",
    "ai.prompt", "gen_ai.reasoning", "ai.response.reasoning")


def is_prompt_key(key: str) -> bool:
    return key in PROMPT_KEYS or key.startswith(PROMPT_PREFIXES)
