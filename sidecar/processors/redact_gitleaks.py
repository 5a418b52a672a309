"""`rules_file:` a gitleaks TOML config (the format of gitleaks' `config/gitleaks.toml`) as
redaction value rules, so the daemon runs the rules a security team already keeps.

What applies to telemetry, as gitleaks applies it to a file fragment (here: one string):
- `regex` (Go RE2 syntax; compiled by RE2 as is, in the redactor's Latin-1 byte mode), and
  the secret it masks: `secretGroup`, else the first non-empty capture group, else the match;
- `keywords`: the rule runs only on a string holding one of them, ASCII case-insensitively.
  The pre-scan looks for the rule's regex without anchors (Hyperscan, prefilter mode), or
  for its keywords where Hyperscan cannot take the regex: both supersets, since the match
  and the keyword lie inside the string. (Keywords alone would hit nearly every request:
  `token` and `key` are in most attribute keys.)
- `entropy`: a secret whose Shannon entropy is at or below it is left alone;
- allowlists, global `[allowlist]` and per rule `[[rules.allowlists]]`: `regexes` against
  the secret, the match or the line (`regexTarget`), `stopwords` in the secret, `condition`
  OR/AND. `paths` and `commits` have no meaning here: an OR allowlist ignores them; an AND
  allowlist that needs one never allows (so nothing is let through on a condition we
  cannot check).
Not applicable, skipped and listed by `sidecar validate`: rules with a `path` (a filename
condition), rules without a regex. A rule whose regex RE2 rejects is a config error that
names the rule."""

from __future__ import annotations

import functools
import math
import re
import tomllib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sidecar.processors.redact_rules import Match, Pattern, PatternError, compile_bytes

__all__ = ["GitleaksError", "GitleaksRule", "GitleaksRules", "load_gitleaks"]


class GitleaksError(ValueError):
    """The file cannot be used; the message names the rule or the problem."""


@dataclass(frozen=True, slots=True)
class _Allowlist:
    regexes: tuple[Pattern, ...]
    target: str  # "secret" | "match" | "line"
    stopwords: tuple[bytes, ...]
    all_of: bool  # condition = "AND"
    needs_path: bool  # AND with paths or commits: never true here

    def allows(self, data: bytes, mstart: int, mend: int, sstart: int, send: int) -> bool:
        if self.all_of and self.needs_path:
            return False
        secret = data[sstart:send]
        if self.target == "match":
            target = data[mstart:mend]
        elif self.target == "line":
            lo = data.rfind(b"\n", 0, mstart) + 1
            hi = data.find(b"\n", mend)
            target = data[lo:hi if hi >= 0 else len(data)]
        else:
            target = secret
        checks: list[bool] = []
        if self.regexes:
            checks.append(any(p.hit(target) for p in self.regexes))
        if self.stopwords:
            lower = secret.lower()
            checks.append(any(w in lower for w in self.stopwords))
        if not checks:
            return False
        return all(checks) if self.all_of else any(checks)


def _entropy(secret: bytes) -> float:
    text = secret.decode("utf-8", "replace")
    if not text:
        return 0.0
    n = len(text)
    return -sum(c / n * math.log2(c / n) for c in Counter(text).values())


@dataclass(frozen=True, slots=True)
class GitleaksRule:
    id: str
    regex: Pattern
    pattern: str
    secret_group: int  # 0: the first non-empty capture group, or the whole match
    groups: int
    keywords: tuple[bytes, ...]  # lower-case
    entropy: float
    allowlists: tuple[_Allowlist, ...]

    def prescan_form(self) -> str | None:
        """The keywords, case-insensitively; None for a rule without (use its regex)."""
        if not self.keywords:
            return None
        words = "|".join(re.escape(k.decode()) for k in self.keywords)
        return f"(?i)(?:{words})"

    def applies(self, lowered: bytes) -> bool:
        return not self.keywords or any(k in lowered for k in self.keywords)

    def secret(self, data: bytes, m: Match) -> list[tuple[int, int]]:
        """The span to mask of one match, or none (entropy, allowlists)."""
        mstart, mend = m.start(), m.end()
        start, end = mstart, mend
        if self.groups:
            if self.secret_group:
                start, end = m.start(self.secret_group), m.end(self.secret_group)
            else:
                for g in range(1, self.groups + 1):
                    if m.start(g) >= 0 and m.end(g) > m.start(g):
                        start, end = m.start(g), m.end(g)
                        break
        if start < 0 or start == end:
            return []
        if self.entropy and _entropy(data[start:end]) <= self.entropy:
            return []
        if any(a.allows(data, mstart, mend, start, end) for a in self.allowlists):
            return []
        return [(start, end)]


@dataclass(frozen=True, slots=True)
class GitleaksRules:
    rules: tuple[GitleaksRule, ...]
    skipped: tuple[str, ...]  # "rule <id>: why", for validate to show


def _strings(value: Any, where: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise GitleaksError(f"{where}: expected a list of strings")
    return list(value)


def _allowlist(table: Any, where: str) -> _Allowlist:
    if not isinstance(table, dict):
        raise GitleaksError(f"{where}: expected a table")
    target = table.get("regexTarget", "secret") or "secret"
    if target not in ("secret", "match", "line"):
        raise GitleaksError(f"{where}: unknown regexTarget {target!r}")
    condition = str(table.get("condition", "OR")).upper()
    regexes = []
    for i, pattern in enumerate(_strings(table.get("regexes"), where)):
        try:
            regexes.append(compile_bytes(pattern, capture=False))
        except PatternError as exc:
            raise GitleaksError(f"{where}: allowlist regex {i + 1}: {exc}") from None
    return _Allowlist(
        tuple(regexes), target,
        tuple(w.lower().encode() for w in _strings(table.get("stopwords"), where)),
        condition == "AND",
        bool(table.get("paths") or table.get("commits")))


def parse_gitleaks(text: str, source: str = "rules_file") -> GitleaksRules:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise GitleaksError(f"{source}: not TOML: {exc}") from None
    global_lists: list[_Allowlist] = []
    if "allowlist" in doc:
        global_lists.append(_allowlist(doc["allowlist"], f"{source}: [allowlist]"))
    for i, table in enumerate(doc.get("allowlists", []) or []):
        global_lists.append(_allowlist(table, f"{source}: [[allowlists]] {i + 1}"))
    rules: list[GitleaksRule] = []
    skipped: list[str] = []
    errors: list[str] = []
    seen: set[str] = set()
    for i, table in enumerate(doc.get("rules", []) or []):
        if not isinstance(table, dict):
            errors.append(f"rule {i + 1}: expected a table")
            continue
        rid = str(table.get("id") or f"#{i + 1}")
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", rid) or rid in seen:
            errors.append(f"rule {rid!r}: an id of letters, digits, `_.-`, used once")
            continue
        seen.add(rid)
        if table.get("path"):
            skipped.append(f"rule {rid}: has a path condition (files only)")
            continue
        pattern = table.get("regex")
        if not isinstance(pattern, str) or not pattern:
            skipped.append(f"rule {rid}: no regex")
            continue
        try:
            regex = compile_bytes(pattern)
            lists = [_allowlist(a, f"rule {rid}: allowlist {j + 1}")
                     for j, a in enumerate(table.get("allowlists", []) or [])]
            if "allowlist" in table:  # the older, single-table spelling
                lists.append(_allowlist(table["allowlist"], f"rule {rid}: allowlist"))
        except PatternError as exc:
            errors.append(f"rule {rid}: regex: {exc}")
            continue
        except GitleaksError as exc:
            errors.append(str(exc))
            continue
        groups = int(getattr(regex, "groups", 0))
        secret_group = int(table.get("secretGroup", 0) or 0)
        if secret_group > groups:
            errors.append(f"rule {rid}: secretGroup {secret_group} but the regex has "
                          f"{groups} group(s)")
            continue
        keywords = tuple(k.lower().encode() for k in _strings(
            table.get("keywords"), f"rule {rid}: keywords") if k)
        rules.append(GitleaksRule(
            rid, regex, pattern, secret_group, groups, keywords,
            float(table.get("entropy", 0.0) or 0.0), tuple(lists) + tuple(global_lists)))
    if errors:
        raise GitleaksError(f"{source}: " + "; ".join(errors))
    return GitleaksRules(tuple(rules), tuple(skipped))


@functools.lru_cache(maxsize=8)
def _load(path: str, mtime_ns: int, size: int) -> GitleaksRules:
    return parse_gitleaks(Path(path).read_text(encoding="utf-8"), path)


def load_gitleaks(path: Path) -> GitleaksRules:
    """Parsed and compiled once per file version (validation and the processor share it)."""
    try:
        st = path.stat()
    except OSError as exc:
        raise GitleaksError(f"rules_file {path}: {exc.strerror}") from None
    return _load(str(path), st.st_mtime_ns, st.st_size)


def names(rules: Sequence[GitleaksRule]) -> list[str]:
    return [r.id for r in rules]
