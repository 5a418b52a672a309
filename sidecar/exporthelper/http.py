"""Shared HTTP client pieces: session factory, TLS, and status classification.

By default statuses follow the OTLP spec (docs/vendors.md §1): any 2xx is success; 429,
502, 503 and 504 and disconnects are retryable, with `Retry-After` honoured on 429 and 503;
413 splits; every other status is permanent. Vendors whose semantics differ (Datadog
retries 408 and 500) pass their `StatusRules`. What a 2xx body means (an OTLP partial
success) is the sender's to read: `post` returns it."""

from __future__ import annotations

import logging
import ssl
from collections.abc import Mapping
from dataclasses import dataclass

import aiohttp

from sidecar import __version__
from sidecar.errors import PermanentError, RetryableError, StartupError
from sidecar.exporthelper.retry import (
    DestinationRefusedError,
    RequestTooLargeError,
    parse_retry_after,
)
from sidecar.exporthelper.settings import TlsSettings

log = logging.getLogger(__name__)

USER_AGENT = f"sidecar/{__version__}"
RETRYABLE_STATUS = frozenset({429, 502, 503, 504})
_HINTED_STATUS = frozenset({429, 503})

def no_password() -> bytes:
    return b""


def ssl_context(tls: TlsSettings) -> ssl.SSLContext:
    context = ssl.create_default_context(
        cafile=str(tls.ca_file) if tls.ca_file is not None else None)
    if tls.cert_file is not None and tls.key_file is not None:
        # no password: an encrypted key fails here instead of OpenSSL prompting
        context.load_cert_chain(str(tls.cert_file), str(tls.key_file), password=no_password)
    if tls.insecure_skip_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def create_session(tls: TlsSettings | None = None, *, connections: int = 8,
                   ) -> aiohttp.ClientSession:
    """One session per exporter: a keep-alive pool sized to the exporter's concurrency.
    Timeouts are the chain's job (per attempt), so the session has none of its own."""
    connector = aiohttp.TCPConnector(
        limit=connections,
        ssl=ssl_context(tls) if tls is not None and not tls.insecure else False,
    )
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=None),
        headers={"User-Agent": USER_AGENT},
        # a vendor's Set-Cookie must not leak into later requests
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=True,
    )


def open_session(tls: TlsSettings | None, *, connections: int = 8) -> aiohttp.ClientSession:
    """`create_session` for a sender's start(): a missing TLS file or a bad PEM is a
    StartupError naming the setting (`tls.ca_file: <path>: No such file or directory`).
    `tls=None`: plaintext."""
    if tls is not None and not tls.insecure:
        for key in ("ca_file", "cert_file", "key_file"):
            path = getattr(tls, key)
            if path is None:
                continue
            try:
                path.read_bytes()
            except OSError as exc:
                raise StartupError(f"tls.{key}: {path}: {exc.strerror}") from exc
    try:
        return create_session(tls, connections=connections)
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError: a bad PEM
        raise StartupError(f"tls: {exc}") from exc


# refusals that do not depend on the request's content
_REFUSED_STATUS = frozenset({401, 403, 404, 405})


@dataclass(frozen=True, slots=True)
class StatusRules:
    """Which non-2xx statuses a peer means as "try again": `retryable`, and among them
    `hinted`, whose `Retry-After` is honoured. OTLP's by default; a vendor passes its own
    (Datadog retries 408 and every 5xx, honouring the hint on each)."""

    retryable: frozenset[int] = RETRYABLE_STATUS
    hinted: frozenset[int] = _HINTED_STATUS


OTLP_RULES = StatusRules()


def classify(status: int, headers: Mapping[str, str], body: bytes,
             rules: StatusRules = OTLP_RULES) -> None:
    """Returns for a 2xx (what its body means is the sender's business: an OTLP partial
    success, or nothing); raises PermanentError or RetryableError otherwise."""
    if 200 <= status < 300:
        return
    detail = _error_detail(body)
    if status in rules.retryable:
        hint = parse_retry_after(headers.get("Retry-After")) if status in rules.hinted else None
        raise RetryableError(f"HTTP {status}{detail}", retry_after=hint)
    if status == 413:
        raise RequestTooLargeError(f"HTTP 413{detail}")
    if status in _REFUSED_STATUS:
        raise DestinationRefusedError(f"HTTP {status}{detail}")
    raise PermanentError(f"HTTP {status}{detail}")


def _error_detail(body: bytes) -> str:
    # enough of the body to explain a failure in a log line, never a whole payload
    text = body[:200].decode("utf-8", "replace").strip()
    return f": {text}" if text else ""


@dataclass(frozen=True, slots=True)
class Answer:
    """A 2xx answer: its body and content type, for the sender to read."""

    body: bytes
    content_type: str


async def post(session: aiohttp.ClientSession, url: str, body: bytes,
               headers: Mapping[str, str], rules: StatusRules = OTLP_RULES) -> Answer:
    """POST one request and classify the answer (see `classify`); library errors become
    our errors."""
    try:
        async with session.post(url, data=body, headers=headers) as response:
            payload = await response.read()
            classify(response.status, response.headers, payload, rules)
            return Answer(payload, response.headers.get("Content-Type", ""))
    except aiohttp.ClientConnectorCertificateError as exc:
        raise PermanentError(f"TLS certificate rejected for {url}: {exc}") from exc
    except aiohttp.InvalidURL as exc:
        raise PermanentError(f"invalid URL {url}: {exc}") from exc
    except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
        # refused, reset or closed before a full answer: the OTLP spec says retry
        raise RetryableError(f"{type(exc).__name__}: {exc}") from exc
