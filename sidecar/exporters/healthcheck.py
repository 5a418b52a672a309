"""`sidecar validate --healthcheck`: ask each configured exporter's destination whether it
would take our data, without sending any telemetry.

- OTLP destinations (`otlp`, `honeycomb`, `jaeger`): an empty trace Export request, which
  the OTLP spec says must succeed; a wrong key answers 401/403 (UNAUTHENTICATED,
  PERMISSION_DENIED).
- `datadog`: the API-key validation endpoint, `GET https://api.<site>/api/v1/validate`
  (`{endpoint}/api/v1/validate` with an endpoint override); with `mode: agent`, an empty
  export to the local Agent.
- `file`: nothing to ask.

Each check runs with the exporter's `timeout`; all run at once."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import aiohttp

from sidecar.errors import PermanentError, RetryableError, StartupError
from sidecar.exporters import otlp_vendor
from sidecar.exporters.datadog import DatadogConfig
from sidecar.exporters.honeycomb import HoneycombConfig
from sidecar.exporters.jaeger import JaegerConfig
from sidecar.exporters.otlp import OtlpConfig
from sidecar.exporthelper import http
from sidecar.exporthelper.chain import send_once
from sidecar.exporthelper.settings import ExporterSettings
from sidecar.model import Batch, Signal

VALIDATE_PATH = "/api/v1/validate"


@dataclass(frozen=True, slots=True)
class Result:
    name: str
    ok: bool | None  # None: nothing to check
    detail: str


async def check_all(exporters: dict[str, ExporterSettings]) -> list[Result]:
    return list(await asyncio.gather(*(check(n, s) for n, s in exporters.items())))


async def check(name: str, settings: ExporterSettings) -> Result:
    try:
        async with asyncio.timeout(settings.timeout):
            if isinstance(settings, DatadogConfig) and settings.mode != "agent":
                detail = await _datadog(settings)
            else:
                config = _otlp_config(settings)
                if config is None:
                    return Result(name, None, "nothing to check")
                detail = await _otlp(config)
    except TimeoutError:
        return Result(name, False, f"no answer within {settings.timeout:g}s")
    except PermanentError as exc:
        return Result(name, False, f"refused: {exc}")
    except RetryableError as exc:
        return Result(name, False, f"unreachable or unavailable: {exc}")
    except StartupError as exc:
        return Result(name, False, str(exc))
    return Result(name, True, detail)


def _otlp_config(settings: ExporterSettings) -> OtlpConfig | None:
    if isinstance(settings, OtlpConfig):
        return settings
    if isinstance(settings, HoneycombConfig | JaegerConfig):
        return settings.otlp()
    if isinstance(settings, DatadogConfig):  # mode agent
        return settings.agent_otlp()
    return None


async def _otlp(config: OtlpConfig) -> str:
    sender = otlp_vendor.sender_for(config)
    await sender.start()
    try:
        await send_once(sender, Batch(Signal.TRACES, 0, b""), config.compression)
    finally:
        await sender.close()
    return f"an empty export to {config.endpoint} succeeded"


async def _datadog(config: DatadogConfig) -> str:
    base = config.endpoint or f"https://api.{config.site}"
    url = base + VALIDATE_PATH
    plaintext = url.startswith("http://")
    session = http.open_session(None if plaintext else config.tls, connections=1)
    async with session:
        try:
            async with session.get(
                    url, headers={"DD-API-KEY": config.key}) as answer:
                status = answer.status
                body = (await answer.content.read(200)).decode("utf-8", "replace").strip()
        except aiohttp.ClientError as exc:
            raise RetryableError(f"{type(exc).__name__}: {exc}") from exc
    if status == 200:
        return f"API key valid ({url})"
    if status in (401, 403):
        raise PermanentError(f"API key rejected by {url} (HTTP {status})")
    raise RetryableError(f"HTTP {status} from {url}: {body}")
