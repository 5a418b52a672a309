"""Test peers shipped with the package, for this project's tests and for anyone who embeds
the daemon: `OtlpSink`, a real OTLP server (gRPC and HTTP/protobuf) on loopback that
records every request and answers from a script of injected faults.

    async with OtlpSink() as sink:
        exporter = ... endpoint=sink.grpc_endpoint ...   # or sink.http_endpoint
        sink.fail_next(2, grpc_code=grpc.StatusCode.UNAVAILABLE, retry_after=0.2)
        await sink.wait_for_items(Signal.TRACES, 100, timeout=5)
        assert [r.outcome for r in sink.requests] == ["failed", "failed", "ok"]
        spans = sink.spans()
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from email.utils import formatdate
from pathlib import Path
from types import TracebackType
from typing import Literal

import grpc
import grpc.aio
from aiohttp import web
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord
from opentelemetry.proto.metrics.v1.metrics_pb2 import AGGREGATION_TEMPORALITY_CUMULATIVE
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from sidecar.errors import BadInputError
from sidecar.exporthelper.compression import gzip_decompress
from sidecar.model import (
    REQUEST_TYPES,
    Batch,
    ExportRequest,
    Signal,
    count_items,
    parse_request,
)

__all__ = ["Fault", "OtlpSink", "ReceivedRequest", "SinkTls", "logs_batch", "metrics_batch",
           "traces_batch"]

Transport = Literal["grpc", "http"]
# abandoned: the client gave up (timeout, disconnect) before the sink answered; such an
# attempt is not counted as received, so retries do not look like duplicates
Outcome = Literal["pending", "ok", "partial", "failed", "abandoned"]

# The fake peer spells the wire names out itself (not from sidecar.signals), so a wrong
# entry in the daemon's table fails tests instead of agreeing with itself.
_STATUS_DETAILS_KEY = "grpc-status-details-bin"
_SERVICES = {
    Signal.TRACES: "opentelemetry.proto.collector.trace.v1.TraceService",
    Signal.LOGS: "opentelemetry.proto.collector.logs.v1.LogsService",
    Signal.METRICS: "opentelemetry.proto.collector.metrics.v1.MetricsService",
}
_PARTIAL_FIELDS = {
    Signal.TRACES: (ExportTraceServiceResponse, "rejected_spans"),
    Signal.LOGS: (ExportLogsServiceResponse, "rejected_log_records"),
    Signal.METRICS: (ExportMetricsServiceResponse, "rejected_data_points"),
}
_Context = grpc.aio.ServicerContext[bytes, bytes]
_MAX_BODY = 64 * 1024 * 1024
# how long a stalled request may hang before the sink answers UNAVAILABLE/503 by itself:
# bounds every wait even if a test forgets resume()
STALL_LIMIT = 30.0


@dataclass(frozen=True, slots=True)
class Fault:
    """One scripted answer. Failure by default; `rejected > 0` or `partial=True` answers
    success with `partial_success` instead."""

    grpc_code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE
    http_status: int = 503
    retry_after: float | None = None  # gRPC RetryInfo / HTTP Retry-After (whole seconds)
    retry_after_http_date: bool = False  # HTTP: send Retry-After as an HTTP-date
    message: str = "injected failure"
    partial: bool = False
    rejected: int = 0


@dataclass(frozen=True, slots=True)
class SinkTls:
    """Serve TLS with this PEM certificate and key; with `client_ca`, require client
    certificates signed by it (mTLS)."""

    cert_file: Path
    key_file: Path
    client_ca: Path | None = None

    def ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert_file, self.key_file)
        if self.client_ca is not None:
            context.load_verify_locations(self.client_ca)
            context.verify_mode = ssl.CERT_REQUIRED
        return context

    def grpc_credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials(
            [(self.key_file.read_bytes(), self.cert_file.read_bytes())],
            root_certificates=self.client_ca.read_bytes() if self.client_ca else None,
            require_client_auth=self.client_ca is not None)


@dataclass(slots=True)
class ReceivedRequest:
    transport: Transport
    signal: Signal
    body: bytes  # the serialized Export*ServiceRequest, decompressed
    headers: dict[str, str]  # HTTP headers / gRPC metadata, keys lowercased
    compressed: bool  # HTTP body arrived with Content-Encoding: gzip
    at: float  # event-loop time of arrival
    path: str = ""
    deadline: float | None = None  # gRPC: seconds the call had left on arrival
    outcome: Outcome = "pending"
    fault: Fault | None = None
    _message: ExportRequest | None = field(default=None, repr=False)

    @property
    def message(self) -> ExportRequest:
        if self._message is None:
            self._message = parse_request(self.signal, self.body)
        return self._message

    @property
    def items(self) -> int:
        return count_items(self.signal, self.message)


class OtlpSink:
    """A real OTLP/gRPC + OTLP/HTTP server on loopback (`host`: 127.0.0.1 or ::1) with
    ephemeral ports."""

    def __init__(self, *, require_headers: dict[str, str] | None = None,
                 grpc_max_receive: int = 4 * 1024 * 1024, tls: SinkTls | None = None,
                 host: str = "127.0.0.1", grpc_port: int = 0) -> None:
        self.requests: list[ReceivedRequest] = []
        self.tls = tls
        self.host = host
        # running totals, so waiting on thousands of requests stays linear
        self._accepted_items = dict.fromkeys(Signal, 0)
        self.require_headers = {k.lower(): v for k, v in (require_headers or {}).items()}
        self._grpc_max_receive = grpc_max_receive
        self._script: deque[Fault] = deque()
        self._running = asyncio.Event()
        self._running.set()
        self._changed = asyncio.Condition()
        self._grpc: grpc.aio.Server | None = None
        self._runner: web.AppRunner | None = None
        self.grpc_port = grpc_port  # 0: any free port (a fixed one: "bring a destination up")
        self.http_port = 0

    # --- lifecycle ----------------------------------------------------------------------
    async def __aenter__(self) -> OtlpSink:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.stop()

    async def start(self) -> None:
        server = grpc.aio.server(options=[
            ("grpc.max_receive_message_length", self._grpc_max_receive)])
        server.add_generic_rpc_handlers([
            grpc.method_handlers_generic_handler(service, {
                "Export": grpc.unary_unary_rpc_method_handler(self._grpc_handler(signal))})
            for signal, service in _SERVICES.items()])
        if self.tls is None:
            self.grpc_port = server.add_insecure_port(f"{self._netloc}:{self.grpc_port}")
        else:
            self.grpc_port = server.add_secure_port(f"{self._netloc}:{self.grpc_port}",
                                                    self.tls.grpc_credentials())
        await server.start()
        self._grpc = server

        app = web.Application(client_max_size=_MAX_BODY)
        app.router.add_post("/v1/{signal}", self._http_handler)
        # auto_decompress off: the sink checks that gzip bodies really are gzip
        runner = web.AppRunner(app, auto_decompress=False, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.host, 0,
                           ssl_context=self.tls.ssl_context() if self.tls else None)
        await site.start()
        self._runner = runner
        self.http_port = runner.addresses[0][1]

    async def stop(self) -> None:
        self._running.set()  # release stalled handlers so they answer before we go
        await self.stop_grpc(grace=0.5)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def stop_grpc(self, grace: float) -> None:
        """Stop the gRPC server as a collector drains: GOAWAY to every client, then calls
        in flight have `grace` seconds to finish. Stalled calls stay stalled until
        `resume()`, so a test can answer them after the clients saw the GOAWAY."""
        if self._grpc is not None:
            await self._grpc.stop(grace=grace)
            self._grpc = None

    @property
    def grpc_endpoint(self) -> str:
        return f"{self._scheme}://{self._netloc}:{self.grpc_port}"

    @property
    def http_endpoint(self) -> str:
        return f"{self._scheme}://{self._netloc}:{self.http_port}"

    @property
    def _netloc(self) -> str:
        return f"[{self.host}]" if ":" in self.host else self.host

    @property
    def _scheme(self) -> str:
        return "http" if self.tls is None else "https"

    # --- script -------------------------------------------------------------------------
    def fail_next(
        self,
        n: int = 1,
        fault: Fault | None = None,
        *,
        grpc_code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE,
        http_status: int = 503,
        retry_after: float | None = None,
        retry_after_http_date: bool = False,
        message: str = "injected failure",
    ) -> None:
        """Answer the next `n` requests (either transport) with `fault`, or with a failure
        built from the keywords. `retry_after` becomes a gRPC RetryInfo or an HTTP
        Retry-After header (whole seconds, or an HTTP-date)."""
        if fault is None:
            fault = Fault(grpc_code=grpc_code, http_status=http_status,
                          retry_after=retry_after, retry_after_http_date=retry_after_http_date,
                          message=message)
        self._script.extend([fault] * n)

    def partial_next(self, n: int = 1, rejected: int = 1, message: str = "rejected") -> None:
        self._script.extend([Fault(partial=True, rejected=rejected, message=message)] * n)

    def stall(self) -> None:
        """Hold every request (up to STALL_LIMIT) until `resume()`: a peer that hangs."""
        self._running.clear()

    def resume(self) -> None:
        self._running.set()

    def clear(self) -> None:
        self.requests.clear()
        self._script.clear()
        self._accepted_items = dict.fromkeys(Signal, 0)

    # --- results ------------------------------------------------------------------------
    @property
    def accepted(self) -> list[ReceivedRequest]:
        """Requests answered with success (including partial success)."""
        return [r for r in self.requests if r.outcome in ("ok", "partial")]

    def items(self, signal: Signal) -> int:
        """Items of `signal` in accepted requests (rejected ones of a partial success too)."""
        return self._accepted_items[signal]

    def spans(self) -> list[Span]:
        out: list[Span] = []
        for r in self.accepted:
            if isinstance(r.message, ExportTraceServiceRequest):
                for rs in r.message.resource_spans:
                    for ss in rs.scope_spans:
                        out.extend(ss.spans)
        return out

    def log_records(self) -> list[LogRecord]:
        out: list[LogRecord] = []
        for r in self.accepted:
            if r.signal is Signal.LOGS:
                for rl in r.message.resource_logs:  # type: ignore[union-attr]
                    for sl in rl.scope_logs:
                        out.extend(sl.log_records)
        return out

    def merged(self, signal: Signal) -> ExportRequest:
        """All accepted requests of a signal as one request (concatenated, as merged)."""
        return REQUEST_TYPES[signal].FromString(
            b"".join(r.body for r in self.accepted if r.signal is signal))

    async def wait_for_items(self, signal: Signal, n: int, timeout: float = 10.0) -> None:
        """Until at least `n` items of `signal` were accepted; TimeoutError after `timeout`."""
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(lambda: self.items(signal) >= n)

    async def wait_for_requests(self, n: int, timeout: float = 10.0) -> None:
        """Until at least `n` requests arrived (any outcome, stalled ones included)."""
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(lambda: len(self.requests) >= n)

    # --- serving ------------------------------------------------------------------------
    async def _record(self, request: ReceivedRequest) -> Fault | None:
        """Record the arrival, wait out a stall, and pick the scripted answer."""
        self.requests.append(request)
        await self._notify()
        if not self._running.is_set():
            try:
                async with asyncio.timeout(STALL_LIMIT):
                    await self._running.wait()
            except TimeoutError:
                return Fault(message="stalled too long")
        missing = [k for k, v in self.require_headers.items() if request.headers.get(k) != v]
        if missing:
            return Fault(grpc_code=grpc.StatusCode.UNAUTHENTICATED, http_status=401,
                         message=f"missing or wrong header(s): {', '.join(missing)}")
        fault = self._script.popleft() if self._script else None
        if fault is None:
            # as a collector does: a body that does not parse is refused, never counted
            try:
                parse_request(request.signal, request.body)
            except BadInputError as exc:
                return Fault(grpc_code=grpc.StatusCode.INVALID_ARGUMENT, http_status=400,
                             message=str(exc))
        return fault

    async def _finish(self, request: ReceivedRequest, fault: Fault | None) -> None:
        request.fault = fault
        if fault is None:
            request.outcome = "ok"
        elif fault.partial or fault.rejected:
            request.outcome = "partial"
        else:
            request.outcome = "failed"
        if request.outcome != "failed":
            self._accepted_items[request.signal] += request.items
        await self._notify()

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    def _grpc_handler(self, signal: Signal) -> Callable[[bytes, _Context], Awaitable[bytes]]:
        async def export(body: bytes, context: _Context) -> bytes:
            headers = {k.lower(): v if isinstance(v, str) else v.hex()
                       for k, v in context.invocation_metadata() or ()}
            request = ReceivedRequest("grpc", signal, body, headers, False,
                                      asyncio.get_running_loop().time(), path=service_path,
                                      deadline=context.time_remaining())
            try:
                fault = await self._record(request)
            except asyncio.CancelledError:  # grpc cancels the handler when the client gives up
                request.outcome = "abandoned"
                raise
            if context.cancelled():
                request.outcome = "abandoned"
                return b""
            await self._finish(request, fault)
            if fault is not None and not (fault.partial or fault.rejected):
                trailing: tuple[tuple[str, bytes], ...] = ()
                if fault.retry_after is not None:
                    trailing = ((_STATUS_DETAILS_KEY, _status_with_retry_info(fault)),)
                await context.abort(fault.grpc_code, fault.message, trailing_metadata=trailing)
            return _success_body(signal, fault)

        service_path = f"/{_SERVICES[signal]}/Export"
        # no (de)serializers: the sink sees exactly the bytes the client sent
        return export

    async def _http_handler(self, http_request: web.Request) -> web.StreamResponse:
        try:
            signal = Signal(http_request.match_info["signal"])
        except ValueError:
            return web.Response(status=404, text="unknown signal")
        if http_request.content_type not in ("application/x-protobuf", "application/protobuf"):
            return web.Response(status=415, text="expected application/x-protobuf")
        raw = await http_request.read()
        encoding = http_request.headers.get("Content-Encoding", "").lower()
        if encoding == "gzip":
            try:
                raw = gzip_decompress(raw, _MAX_BODY)
            except (ValueError, OSError) as exc:
                return web.Response(status=400, text=f"bad gzip body: {exc}")
        elif encoding not in ("", "identity"):
            return web.Response(status=415, text=f"unsupported encoding {encoding}")
        headers = {k.lower(): v for k, v in http_request.headers.items()}
        request = ReceivedRequest("http", signal, raw, headers, encoding == "gzip",
                                  asyncio.get_running_loop().time(), path=http_request.path)
        try:
            fault = await self._record(request)
        except asyncio.CancelledError:
            request.outcome = "abandoned"
            raise
        transport = http_request.transport
        if transport is None or transport.is_closing():
            # aiohttp lets a handler run on after its client left: nobody gets this answer
            request.outcome = "abandoned"
            await self._notify()
            return web.Response(status=499)
        await self._finish(request, fault)
        if fault is None or fault.partial or fault.rejected:
            return web.Response(body=_success_body(signal, fault),
                                content_type="application/x-protobuf")
        response_headers = {}
        if fault.retry_after is not None:
            response_headers["Retry-After"] = _retry_after_header(fault)
        status = status_pb2.Status(code=fault.grpc_code.value[0], message=fault.message)
        return web.Response(status=fault.http_status, headers=response_headers,
                            body=status.SerializeToString(),
                            content_type="application/x-protobuf")


def _success_body(signal: Signal, fault: Fault | None) -> bytes:
    response_type, field_name = _PARTIAL_FIELDS[signal]
    response = response_type()
    if fault is not None and (fault.partial or fault.rejected):
        setattr(response.partial_success, field_name, fault.rejected)
        response.partial_success.error_message = fault.message
    return bytes(response.SerializeToString())


def _status_with_retry_info(fault: Fault) -> bytes:
    delay = fault.retry_after or 0.0
    info = error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(
        seconds=int(delay), nanos=round((delay - int(delay)) * 1e9)))
    detail = any_pb2.Any()
    detail.Pack(info)
    status = status_pb2.Status(code=fault.grpc_code.value[0], message=fault.message,
                               details=[detail])
    return bytes(status.SerializeToString())


def _retry_after_header(fault: Fault) -> str:
    seconds = round(fault.retry_after or 0)
    if fault.retry_after_http_date:
        return formatdate(time.time() + seconds, usegmt=True)
    return str(seconds)


# --- sample data ---------------------------------------------------------------------------

def _kv(key: str, value: str) -> KeyValue:
    return KeyValue(key=key, value=AnyValue(string_value=value))


def traces_batch(spans: int = 10, *, resources: int = 1, scopes: int = 1, attrs: int = 5,
                 seed: int = 0) -> Batch:
    """`spans` spans per scope, each with distinct ids and `attrs` string attributes."""
    request = ExportTraceServiceRequest()
    n = 0
    for r in range(resources):
        rs = request.resource_spans.add()
        rs.resource.attributes.append(_kv("service.name", f"svc-{seed}-{r}"))
        for s in range(scopes):
            ss = rs.scope_spans.add()
            ss.scope.name = f"scope-{s}"
            for _ in range(spans):
                n += 1
                span = ss.spans.add(
                    trace_id=(seed * 1_000_003 + n).to_bytes(16, "big"),
                    span_id=(seed * 1_000_003 + n).to_bytes(8, "big"),
                    parent_span_id=(n // 2 or 1).to_bytes(8, "big"),
                    name=f"chat gpt-4o #{n}", kind=Span.SPAN_KIND_CLIENT,
                    start_time_unix_nano=1_700_000_000_000_000_000 + n,
                    end_time_unix_nano=1_700_000_000_500_000_000 + n)
                span.attributes.extend(_kv(f"attr.{a}", f"value-{a}-{n}") for a in range(attrs))
                link = span.links.add(trace_id=bytes(range(16)), span_id=bytes(range(8)))
                link.attributes.append(_kv("link", "yes"))
    return Batch.from_message(Signal.TRACES, request)


def logs_batch(records: int = 10, *, seed: int = 0) -> Batch:
    request = ExportLogsServiceRequest()
    rl = request.resource_logs.add()
    rl.resource.attributes.append(_kv("service.name", f"svc-{seed}"))
    sl = rl.scope_logs.add()
    for i in range(records):
        record = sl.log_records.add(
            time_unix_nano=1_700_000_000_000_000_000 + i, severity_number=9,
            severity_text="INFO", trace_id=(seed + i + 1).to_bytes(16, "big"),
            span_id=(seed + i + 1).to_bytes(8, "big"))
        record.body.string_value = f"log line {seed}-{i}"
    return Batch.from_message(Signal.LOGS, request)


def metrics_batch(points: int = 10, *, seed: int = 0) -> Batch:
    """One sum metric with `points` data points, each with an exemplar."""
    request = ExportMetricsServiceRequest()
    sm = request.resource_metrics.add().scope_metrics.add()
    metric = sm.metrics.add(name=f"gen_ai.tokens.{seed}")
    metric.sum.aggregation_temporality = AGGREGATION_TEMPORALITY_CUMULATIVE
    for i in range(points):
        point = metric.sum.data_points.add(as_int=i, time_unix_nano=1_700_000_000_000_000_000)
        point.attributes.append(_kv("i", str(i)))
        point.exemplars.add(as_int=i, trace_id=bytes(range(16)), span_id=bytes(range(8)))
    return Batch.from_message(Signal.METRICS, request)
