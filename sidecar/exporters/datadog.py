"""`type: datadog` - traces to Datadog's native intake (`mode: native`, docs/vendors.md
§2.2): OTLP spans mapped as the Datadog Agent maps them (`datadog_mapping`), packed as one
gzipped `AgentPayload` protobuf per request, POSTed to `/api/v0.2/traces`; logs to the HTTP
intake v2 (§3) as one gzipped JSON array per request (`datadog_logs`). `mode: otlp` and
`mode: agent` are OTLP over the OTLP exporter's senders (agentless intake §2.5, local
Agent §2.6).

The intakes' limits (an AgentPayload of 3.2 MB, a logs request of 1,000 entries and 5 MB)
are declared as `LIMITS` and measured by the shared layer on the encoded body: a body over
them is never sent; the chain cuts the batch in as many pieces as the excess asks and
encodes each (nothing is delivered twice). The mapping stops early when a batch's resource
and scope attributes alone, copied onto every span, are already over the limit.

Answers: 2xx is success (the body is not OTLP and is ignored); 408, 429 and every 5xx are
retried, `Retry-After` honoured on each; 413 splits; 400, 401, 403 and the rest are
permanent. Metrics are not supported yet and are dropped without a request."""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import sys
from collections.abc import Mapping
from typing import Literal
from urllib.parse import urlsplit

import aiohttp
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from pydantic import Field, SecretStr, field_validator, model_validator

from sidecar import __version__
from sidecar.component import BuildContext, ExporterComponent, ExporterFactory, register_exporter
from sidecar.configtypes import Strict
from sidecar.errors import PermanentError
from sidecar.exporters import datadog_proto, datadog_stats, otlp_vendor
from sidecar.exporters.datadog_logs import LogDefaults, entries
from sidecar.exporters.datadog_mapping import (
    TRACER_PAYLOADS_TAG,
    Defaults,
    length_delimited,
    map_request,
)
from sidecar.exporters.otlp import OtlpConfig
from sidecar.exporthelper import http
from sidecar.exporthelper.body import NO_LIMITS, Body, BodyLimits, BodyTooLargeError
from sidecar.exporthelper.chain import EncodingSender, ExportChain, send_once
from sidecar.exporthelper.compression import gzip_body
from sidecar.exporthelper.settings import BatchSettings, ExporterSettings, TlsSettings
from sidecar.model import Batch, Signal
from sidecar.telemetry import metrics

log = logging.getLogger(__name__)

TRACES_PATH = "/api/v0.2/traces"
LOGS_PATH = "/api/v2/logs"
MAX_LOG_ENTRIES = 1000
MAX_LOGS_BODY = 5_000_000
# the Agent's flush size, which the intake documents as its maximum (uncompressed)
MAX_PAYLOAD = 3_200_000
RETRYABLE = frozenset({408, 429, *range(500, 600)})
DATADOG_RULES = http.StatusRules(retryable=RETRYABLE, hinted=RETRYABLE)
# measured by the chain on the encoded, uncompressed bodies
LIMITS = {Signal.TRACES: BodyLimits(max_bytes=MAX_PAYLOAD),
          Signal.LOGS: BodyLimits(max_items=MAX_LOG_ENTRIES, max_bytes=MAX_LOGS_BODY)}
# mapping runs in a thread for batches larger than this (it is Python, ~µs per span)
_MAP_OFF_LOOP = 256
_SITE = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)+")


class StatsSettings(Strict):
    """APM stats (mode: native): the Agent's 10 s concentrator, sent to /api/v0.2/stats."""

    enabled: bool = True
    # aggregation keys held at once over all open buckets; a span with a new key beyond
    # this is left out of the stats and counted (sidecar_datadog_stats_refused_spans)
    max_keys: int = Field(default=5000, ge=1, le=1_000_000)
    # the Agent's peer_tags_aggregation: client/producer/consumer spans grouped by the
    # peer.* precursor attributes they carry (db.system, server.address, peer.service...)
    peer_tags: bool = True
    # the Agent's compute_stats_by_span_kind: server/consumer/client/producer spans get
    # stats even when neither top-level nor measured
    compute_by_span_kind: bool = True


class DatadogConfig(ExporterSettings):
    type: Literal["datadog"] = "datadog"
    api_key: SecretStr | None = None  # required unless mode: agent
    site: str = "datadoghq.com"
    # a base URL replacing the site's hosts (https://trace.agent.<site> for traces,
    # https://http-intake.logs.<site> for logs)
    endpoint: str | None = None
    # native: the trace intake (AgentPayload) and the logs intake; otlp: Datadog's agentless
    # OTLP intake; agent: OTLP to a local Datadog Agent
    mode: Literal["native", "otlp", "agent"] = "native"
    compute_stats: bool = True  # mode otlp: ask the intake to compute APM trace metrics
    agent_endpoint: str = "http://localhost:4317"  # mode agent
    agent_protocol: Literal["grpc", "http"] = "grpc"  # mode agent
    env: str = ""  # for resources without deployment.environment(.name)
    hostname: str = ""  # for resources without host.name; default: this machine's name
    tags: dict[str, str] = {}  # AgentPayload tags; ddtags on logs
    source: str = "sidecar"  # ddsource on logs
    top_level_by_span_kind: bool = True  # the Agent's enable_otlp_compute_top_level_by_span_kind
    stats: StatsSettings = StatsSettings()  # mode native: APM stats (RED metrics)
    tls: TlsSettings = TlsSettings()
    # how far queued batches are merged (OTLP items and bytes); the intakes' own limits
    # are measured on the encoded body (LIMITS). The Datadog encoding of LLM spans is ~2x
    # their OTLP size, so merging to 1 MiB of OTLP rarely makes a body that must be cut
    batch: BatchSettings = BatchSettings(max_items=MAX_LOG_ENTRIES, max_bytes=1024 * 1024)

    @field_validator("site")
    @classmethod
    def _site(cls, value: str) -> str:
        if not _SITE.fullmatch(value):
            raise ValueError(f"expected a Datadog site such as datadoghq.com or "
                             f"datadoghq.eu, got {value!r}")
        return value

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, value: str | None) -> str | None:
        if value is None:
            return None
        url = urlsplit(value)
        if url.scheme not in ("http", "https") or not url.hostname or url.query:
            raise ValueError(f"expected a base URL such as https://host:port, got {value!r}")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _checks(self) -> DatadogConfig:
        if self.mode == "agent":
            self.agent_otlp()  # endpoint problems are this block's config errors
            return self
        key = self.api_key.get_secret_value() if self.api_key is not None else ""
        if not key.strip():
            raise ValueError(f"api_key is required with mode: {self.mode} (set it from "
                             "${env:DD_API_KEY})")
        if key != key.strip() or any(c < " " or c > "~" for c in key):
            raise ValueError("api_key has whitespace or non-printable characters")
        if self.mode == "native" and self.compression != "gzip":
            raise ValueError("compression: the Datadog trace intake takes gzip bodies")
        if self.mode == "native":
            try:
                datadog_proto.load()
            except ImportError as exc:
                raise ValueError(f"mode: native needs {exc}") from None
        if self.mode == "otlp":
            self.intake_otlp()
        return self

    @property
    def key(self) -> str:
        return self.api_key.get_secret_value() if self.api_key is not None else ""

    def agent_otlp(self) -> OtlpConfig:
        """mode agent: the OTLP exporter config for the local Agent."""
        return _otlp(self, self.agent_endpoint, self.agent_protocol, {})

    def intake_otlp(self) -> tuple[OtlpConfig, OtlpConfig]:
        """mode otlp: (traces, logs and metrics) OTLP/HTTP configs for the agentless
        intake, which takes http/protobuf only."""
        headers = {"dd-api-key": self.key}
        traces_headers = {**headers, "compute_stats": "true"} if self.compute_stats else headers
        traces = _otlp(self, self.endpoint or f"https://trace.agent.{self.site}", "http",
                       traces_headers)
        other = _otlp(self, self.endpoint or f"https://otlp.{self.site}", "http", headers)
        return traces, other

    @property
    def base_url(self) -> str:
        return self.endpoint or f"https://trace.agent.{self.site}"

    @property
    def logs_url(self) -> str:
        return (self.endpoint or f"https://http-intake.logs.{self.site}") + LOGS_PATH


def _otlp(config: DatadogConfig, endpoint: str, protocol: str,
          headers: dict[str, str]) -> OtlpConfig:
    return otlp_vendor.otlp_config(config, endpoint, protocol, headers, tls=config.tls)


class BySignal:
    """mode otlp: traces to the trace intake's host, logs and metrics to the OTLP host."""

    off_loop_items = sys.maxsize

    def __init__(self, traces: EncodingSender, other: EncodingSender) -> None:
        self.traces = traces
        self.other = other

    def _for(self, signal: Signal) -> EncodingSender:
        return self.traces if signal is Signal.TRACES else self.other

    async def start(self) -> None:
        await self.traces.start()
        await self.other.start()

    def limits(self, signal: Signal) -> BodyLimits:
        return self._for(signal).limits(signal)

    def encode(self, batch: Batch, limits: BodyLimits) -> Body:
        return self._for(batch.signal).encode(batch, limits)

    async def push(self, batch: Batch, body: Body, data: bytes) -> int:
        return await self._for(batch.signal).push(batch, body, data)

    async def send(self, batch: Batch) -> int:
        return await self._for(batch.signal).send(batch)

    async def close(self) -> None:
        await self.traces.close()
        await self.other.close()

    def describe(self) -> str:
        return f"datadog/otlp {self.traces.describe()}, {self.other.describe()}"


class NativeTracesSender:
    """Traces as AgentPayload, logs as intake JSON: encoding and Datadog's answer rules;
    the chain measures the bodies against `LIMITS`, cuts, compresses and retries."""

    off_loop_items = _MAP_OFF_LOOP  # mapping is Python, ~µs per span

    def __init__(self, config: DatadogConfig, name: str = "datadog", *,
                 limits: Mapping[Signal, BodyLimits] | None = None) -> None:
        self.config = config
        self.name = name
        self._limits = dict(LIMITS if limits is None else limits)
        self._url = config.base_url + TRACES_PATH
        self._stats_url = config.base_url + datadog_stats.PATH
        self._defaults = Defaults(hostname=config.hostname or socket.gethostname(),
                                  env=config.env,
                                  top_level_by_span_kind=config.top_level_by_span_kind)
        key = config.key
        self._headers = {"DD-Api-Key": key, "Content-Type": "application/x-protobuf",
                         "Content-Encoding": "gzip"}
        self._log_headers = {"DD-API-KEY": key, "Content-Type": "application/json",
                             "Content-Encoding": "gzip"}
        self._log_defaults = LogDefaults(
            hostname=self._defaults.hostname, env=config.env, source=config.source,
            tags=tuple(f"{k}:{v}" for k, v in config.tags.items()))
        self._stats_headers = {"DD-Api-Key": key, "Content-Type": "application/msgpack",
                               "Content-Encoding": "gzip"}
        self._header = datadog_proto.load().AgentPayload(
            hostName=self._defaults.hostname, env=config.env, tags=config.tags,
            agentVersion=f"sidecar-{__version__}", targetTPS=1.0,
            errorTPS=1.0).SerializeToString()
        self._session: aiohttp.ClientSession | None = None
        self._stats_options = datadog_stats.StatsOptions(
            compute_by_span_kind=config.stats.compute_by_span_kind,
            peer_tags=config.stats.peer_tags)
        self._stats: datadog_stats.StatsFlusher | None = None
        if config.stats.enabled:
            concentrator = datadog_stats.Concentrator(
                config.stats.max_keys,
                on_refused=metrics.DATADOG_STATS_REFUSED.labels(name).inc)
            self._stats = datadog_stats.StatsFlusher(
                concentrator, self._post_stats, hostname=self._defaults.hostname,
                env=config.env or "none", agent_version=f"sidecar-{__version__}",
                on_payload=lambda outcome: metrics.DATADOG_STATS_PAYLOADS.labels(
                    name, outcome).inc())

    async def start(self) -> None:
        plaintext = self.config.base_url.startswith("http://")
        self._session = http.open_session(None if plaintext else self.config.tls,
                                          connections=self.config.queue.concurrency)
        if self._stats is not None:
            self._stats.start()

    def limits(self, signal: Signal) -> BodyLimits:
        return self._limits.get(signal, NO_LIMITS)

    def encode(self, batch: Batch, limits: BodyLimits) -> Body:
        if batch.signal is Signal.LOGS:
            return self.encode_logs(batch, limits)
        if batch.signal is not Signal.TRACES:
            raise PermanentError(f"type datadog sends traces and logs, not "
                                 f"{batch.signal.value}; route them elsewhere under pipelines:")
        request = batch.message
        assert isinstance(request, ExportTraceServiceRequest)
        mapped = map_request(request, self._defaults, limits.max_bytes)
        if not mapped.mapped:
            return Body(b"", 0, mapped.skipped)
        parts = [self._header]
        for payload in mapped.mapped:
            parts.append(length_delimited(TRACER_PAYLOADS_TAG, payload.serialize()))
        languages = "|".join(sorted({p.header.languageName for p in mapped.mapped
                                     if p.header.languageName}))
        headers = {"X-Datadog-Reported-Languages": languages} if languages else {}
        stat_spans = (datadog_stats.stat_spans(mapped.mapped, self._stats_options)
                      if self._stats is not None else [])
        return Body(b"".join(parts), mapped.spans, mapped.skipped, headers, stat_spans)

    def encode_logs(self, batch: Batch, limits: BodyLimits = NO_LIMITS) -> Body:
        """The JSON array for the logs intake (one entry per record)."""
        request = batch.message
        assert isinstance(request, ExportLogsServiceRequest)
        if limits.max_items is not None and batch.items > limits.max_items:
            # one entry per record: known before encoding any
            raise BodyTooLargeError(f"{batch.items} log records",
                                    batch.items / limits.max_items)
        items = list(entries(request, self._log_defaults))
        if not items:
            return Body(b"", 0)
        return Body(b"[" + b",".join(items) + b"]", len(items))

    async def push(self, batch: Batch, body: Body, data: bytes) -> int:
        assert self._session is not None, "push() before start()"
        if batch.signal is Signal.LOGS:
            await http.post(self._session, self.config.logs_url, data, self._log_headers,
                            DATADOG_RULES)
            return 0
        headers = {**self._headers, **body.headers} if body.headers else self._headers
        await http.post(self._session, self._url, data, headers, DATADOG_RULES)
        stat_spans: list[datadog_stats.StatSpan] = body.extra or []
        if self._stats is not None and stat_spans:
            # after the intake took the spans: a retried or split request counts once
            concentrator = self._stats.concentrator
            refused = concentrator.add(stat_spans)
            metrics.DATADOG_STATS_SPANS.labels(self.name).inc(len(stat_spans) - refused)
            metrics.DATADOG_STATS_KEYS.labels(self.name).set(concentrator.keys)
        return 0

    async def send(self, batch: Batch) -> int:
        return await send_once(self, batch, self.config.compression)

    async def _post_stats(self, body: bytes) -> None:
        if self._session is None:
            raise PermanentError("stats flush after close")
        await http.post(self._session, self._stats_url, await gzip_body(body),
                        self._stats_headers, DATADOG_RULES)

    async def close(self) -> None:
        if self._stats is not None and self._session is not None:
            try:
                async with asyncio.timeout(self.config.timeout):
                    await self._stats.close()  # the open buckets, once
            except TimeoutError:
                log.warning("datadog stats: final flush timed out after %ss",
                            self.config.timeout)
            except Exception:  # a stats bug must not stop the traces exporter's shutdown
                log.exception("datadog stats: final flush failed")
            metrics.DATADOG_STATS_KEYS.labels(self.name).set(self._stats.concentrator.keys)
        if self._session is not None:
            await self._session.close()
            self._session = None

    def describe(self) -> str:
        stats = f", stats {self._stats_url}" if self._stats is not None else ""
        return f"datadog/native {self._url}, logs {self.config.logs_url}{stats}"


def create(name: str, settings: ExporterSettings, ctx: BuildContext) -> ExporterComponent:
    assert isinstance(settings, DatadogConfig)
    if settings.mode == "agent":
        return ExportChain(name, settings, otlp_vendor.sender_for(settings.agent_otlp()))
    if settings.mode == "otlp":
        traces, other = settings.intake_otlp()
        return ExportChain(name, settings, BySignal(otlp_vendor.sender_for(traces),
                                                    otlp_vendor.sender_for(other)))
    return ExportChain(name, settings, NativeTracesSender(settings, name))


FACTORY = register_exporter(ExporterFactory("datadog", DatadogConfig, create))
