"""SQL resource names with their literals replaced by `?`, as the Datadog Agent obfuscates
the resource of `sql` and `cassandra` spans before the intake and its stats see it
(pkg/trace/agent/obfuscate.go: `span.Resource` and meta `sql.query` become the obfuscated
query). APM stats group by resource, so `WHERE id = 42` and `WHERE id = 43` must be one
group, not one per literal.

Not a port of the Agent's SQL tokenizer: quoted strings, numbers (decimal, exponent, hex)
and the booleans/NULL-free literal lists it leaves become `?`; `IN (?, ?, ?)` lists become
`( ? )`; whitespace runs become one space. Identifiers, double-quoted names, bind
placeholders (`$1`, `:name`, `?`) and comments are kept (the Agent drops comments).

Bounded work: the input is a resource, already cut to 5,000 characters; every pattern
below matches in one left-to-right pass (no nested or overlapping repetition)."""

from __future__ import annotations

import functools
import re

# one alternation, tried at each position: a run of single-quoted strings ('it''s' is two
# adjacent ones), then a number, signed unless it follows an operand (x-7 keeps its
# minus), not inside an identifier or a $1 placeholder
_LITERAL = re.compile(r"""
    (?:'[^']*')+
  | (?<![\w$:.)])[-+]?(?:0[xX][0-9a-fA-F]+|\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)(?![\w.])
""", re.VERBOSE)
_LIST = re.compile(r"\(\s*\?(?:\s*,\s*\?)*\s*\)")
_SPACE = re.compile(r"\s+")

SPAN_TYPES = frozenset({"sql", "cassandra"})


@functools.lru_cache(maxsize=2048)  # statements repeat; bounded for hostile ones
def obfuscate_sql(query: str) -> str:
    out = _LITERAL.sub("?", query)
    out = _LIST.sub("( ? )", out)
    return _SPACE.sub(" ", out).strip()
