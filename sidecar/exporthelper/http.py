"""Shared HTTP client pieces: session factory, TLS, and the OTLP/HTTP answer rules.

Classification follows the OTLP spec (docs/vendors.md §1): any 2xx is success (its body
may carry a partial success); 429, 502, 503 and 504 and disconnects are retryable, with
`Retry-After` honoured on 429 and 503; every other status is permanent. Vendors whose
semantics differ (Datadog retries 408 and 500) pass `extra_retryable`."""

from __future__ import annotations

import logging
import ssl
from collections.abc import Mapping

import aiohttp
import orjson
from google.protobuf.message import DecodeError

from sidecar import __version__
from sidecar.errors import PermanentError, RetryableError, StartupError
from sidecar.exporthelper.retry import (
    DestinationRefusedError,
    RequestTooLargeError,
    parse_retry_after,
)
from sidecar.exporthelper.settings import TlsSettings
from sidecar.model import Signal
from sidecar.signals import SIGNALS, ExportResponse

log = logging.getLogger(__name__)

__all__ = ["ExportResponse"]

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


def partial_success(signal: Signal, body: bytes, content_type: str) -> tuple[int, str]:
    """(rejected items, message) from an Export*ServiceResponse body; (0, "") if absent."""
    if not body:
        return 0, ""
    spec = SIGNALS[signal]
    response_type, field, json_field = spec.response_type, spec.rejected_field, spec.rejected_json
    if "json" in content_type:
        try:
            doc = orjson.loads(body)
            partial = doc.get("partialSuccess") or {}
            return int(partial.get(json_field, 0)), str(partial.get("errorMessage", ""))
        except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError):
            return 0, ""
    try:
        response = response_type.FromString(body)
    except DecodeError:
        return 0, ""
    if not response.HasField("partial_success"):
        return 0, ""
    ps = response.partial_success
    return int(getattr(ps, field)), str(ps.error_message)


# refusals that do not depend on the request's content
_REFUSED_STATUS = frozenset({401, 403, 404, 405})


def classify(status: int, headers: Mapping[str, str], body: bytes, signal: Signal,
             *, extra_retryable: frozenset[int] = frozenset(),
             hinted: frozenset[int] = _HINTED_STATUS, otlp_answer: bool = True) -> int:
    """Rejected-item count for a 2xx; raises PermanentError or RetryableError otherwise.
    `hinted`: retryable statuses whose `Retry-After` is honoured. `otlp_answer=False`: the
    peer is not OTLP, so a 2xx body is not read as a partial success."""
    if 200 <= status < 300:
        if not otlp_answer:
            return 0
        rejected, message = partial_success(signal, body, headers.get("Content-Type", ""))
        if rejected or message:
            log.warning("partial success", extra={"rejected": rejected, "detail": message})
        return rejected
    detail = _error_detail(body)
    if status in RETRYABLE_STATUS or status in extra_retryable:
        hint = parse_retry_after(headers.get("Retry-After")) if status in hinted else None
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


async def post(session: aiohttp.ClientSession, url: str, body: bytes,
               headers: Mapping[str, str], signal: Signal,
               *, extra_retryable: frozenset[int] = frozenset(),
               hinted: frozenset[int] = _HINTED_STATUS, otlp_answer: bool = True) -> int:
    """POST one request and classify the answer (see `classify`); library errors become
    our errors."""
    try:
        async with session.post(url, data=body, headers=headers) as response:
            payload = await response.read()
            return classify(response.status, response.headers, payload, signal,
                            extra_retryable=extra_retryable, hinted=hinted,
                            otlp_answer=otlp_answer)
    except aiohttp.ClientConnectorCertificateError as exc:
        raise PermanentError(f"TLS certificate rejected for {url}: {exc}") from exc
    except aiohttp.InvalidURL as exc:
        raise PermanentError(f"invalid URL {url}: {exc}") from exc
    except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
        # refused, reset or closed before a full answer: the OTLP spec says retry
        raise RetryableError(f"{type(exc).__name__}: {exc}") from exc
