"""Secrets the config holds, and a mask that keeps them out of everything the daemon itself
writes (its logs, startup errors, the banner, crash output).

Collected once from the loaded config: every `SecretStr` (API keys, bearer tokens, the
cache password, the redaction hash key), every exporter header value, any other string under
a key that names a secret, and the password of a `scheme://user:pass@host` endpoint. The
mask replaces each with `[REDACTED:config-secret]`, in the raw form and as a JSON string
escapes it (the daemon logs JSON lines)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import Any
from urllib.parse import urlsplit

import orjson
from pydantic import BaseModel, SecretStr

MASK = "[REDACTED:config-secret]"
# shorter values (a `true`, a port) would mask unrelated text; no real key is this short
MIN_SECRET_LENGTH = 6
# config keys (and header names) whose value is a secret; exact names, because config
# also has keys like `key` (a redaction rule's key-name pattern) and `tenant_keys`
SECRET_CONFIG_KEYS = frozenset({
    "api_key", "password", "passwd", "secret", "token", "hash_key", "bearer_tokens",
    "authorization", "client_secret", "credentials", "x-honeycomb-team", "dd-api-key",
    "x-api-key", "proxy-authorization", "cookie"})
_SECRET_SUFFIXES = ("_api_key", "_token", "_secret", "_password")


def names_a_secret(key: str) -> bool:
    lowered = key.lower()
    return lowered in SECRET_CONFIG_KEYS or lowered.endswith(_SECRET_SUFFIXES)


def configured_secrets(config: BaseModel) -> frozenset[str]:
    return frozenset(s for s in _walk(config, "") if len(s) >= MIN_SECRET_LENGTH)


def _walk(node: Any, key: str) -> Iterator[str]:
    if isinstance(node, SecretStr):
        yield node.get_secret_value()
    elif isinstance(node, BaseModel):
        for name in type(node).model_fields:
            yield from _walk(getattr(node, name), name)
    elif isinstance(node, dict):
        for k, v in node.items():
            if key == "headers" and isinstance(v, str):
                yield v
                yield from _bearer_token(v)
            else:
                yield from _walk(v, str(k))
    elif isinstance(node, (list, tuple)):
        for v in node:
            yield from _walk(v, key)
    elif isinstance(node, str):
        if names_a_secret(key):
            yield node
        yield from _url_password(node)


def _bearer_token(value: str) -> Iterator[str]:
    scheme, _, rest = value.partition(" ")
    if rest and scheme.lower() in ("bearer", "basic", "token"):
        yield rest.strip()


def _url_password(value: str) -> Iterator[str]:
    if "://" not in value or "@" not in value:
        return
    try:
        password = urlsplit(value).password
    except ValueError:
        return
    if password:
        yield password


class SecretMask:
    """`mask(text)`: text with every configured secret replaced. One regex alternation
    (longest first, so a secret that contains another is masked whole); linear in the text."""

    __slots__ = ("_forms", "_pattern")

    def __init__(self, secrets: Iterable[str]) -> None:
        self._forms: set[str] = set()
        self._pattern: re.Pattern[str] | None = None
        self.extend(secrets)

    def extend(self, secrets: Iterable[str]) -> None:
        """Mask these too (a reload brought new secrets; the old ones stay masked)."""
        for secret in secrets:
            self._forms.add(secret)
            self._forms.add(orjson.dumps(secret).decode()[1:-1])  # as in a JSON string
        ordered = sorted(self._forms, key=len, reverse=True)
        self._pattern = re.compile("|".join(map(re.escape, ordered))) if ordered else None

    def __call__(self, text: str) -> str:
        if self._pattern is None:
            return text
        return self._pattern.sub(MASK, text)
