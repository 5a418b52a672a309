"""OTLP/gRPC receiver: the three Export services on one `grpc.aio` server.

Handlers are generic and take the request as raw bytes (no deserializer), so the only
parse is `Batch.from_bytes` in C; the client's bytes travel on unchanged."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Final

import grpc
from grpc import aio

from sidecar.component import Consumer
from sidecar.config import GrpcListenerConfig
from sidecar.configtypes import split_endpoint
from sidecar.errors import BadInputError, PipelineFullError, StartupError
from sidecar.model import Batch, Signal
from sidecar.net.listeners import place_unix, remove_unix, socket_inode
from sidecar.net.security import BearerAuth, GrpcServerTls, banner
from sidecar.receivers.otlp_common import (
    EMPTY_RESPONSE,
    BadRequestCounters,
    Intake,
    InternalError,
    RetryLater,
    backpressure_status,
    build_intakes,
    describe,
    retry_later_status,
)
from sidecar.signals import GRPC_RETRY_INFO_KEY, GRPC_STATUS_DETAILS_KEY, SIGNALS

TRANSPORT: Final = "grpc"


def _server_options(config: GrpcListenerConfig) -> list[tuple[str, Any]]:
    return [
        ("grpc.max_receive_message_length", config.max_recv_msg_size),
        ("grpc.max_connection_age_ms", int(config.max_connection_age * 1000)),
        ("grpc.max_connection_age_grace_ms", int(config.max_connection_age_grace * 1000)),
        # gRPC binds with SO_REUSEPORT by default: a second daemon would silently share
        # (and steal half of) the port instead of failing at startup.
        ("grpc.so_reuseport", 0),
        # Notice dead peers within ~1.5 min. Accept client keepalive pings down to one per
        # 10 s: gRPC's default policy (one per 5 min) answers a client that configured a
        # shorter keepalive with GOAWAY "too_many_pings".
        ("grpc.keepalive_time_ms", 60_000),
        ("grpc.keepalive_timeout_ms", 20_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.http2.max_ping_strikes", 0),
    ]


if TYPE_CHECKING:  # generic in grpc-stubs only
    _Interceptor = aio.ServerInterceptor[bytes, bytes]
else:
    _Interceptor = aio.ServerInterceptor


class _BearerInterceptor(_Interceptor):
    """Checks the bearer token on the call's metadata, before grpc reads the request: a
    unary handler only runs once the whole message (up to `max_recv_msg_size`) has been
    received and held, so a check inside it would let any client without a token make the
    daemon buffer that much per call. A refused call gets a stream-unary handler that aborts
    without reading a message (on the wire a unary call is a stream of one)."""

    def __init__(self, auth: BearerAuth, bad: BadRequestCounters) -> None:
        self._auth = auth
        self._bad = bad
        self._refuse = grpc.stream_unary_rpc_method_handler(self._refused)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails],
                               Awaitable[grpc.RpcMethodHandler[bytes, bytes]]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[bytes, bytes]:
        if self._auth.check_metadata(handler_call_details.invocation_metadata):
            return await continuation(handler_call_details)
        return self._refuse

    async def _refused(self, requests: AsyncIterator[bytes],
                       context: aio.ServicerContext[bytes, bytes]) -> bytes:
        self._bad.inc("unauthenticated")
        await context.abort(grpc.StatusCode.UNAUTHENTICATED,
                            "missing or wrong bearer token in the authorization metadata")


class _ExportHandler:
    """One signal's Export RPC. Kept to a parse, an await and an increment per request."""

    __slots__ = ("_bad", "_empty", "_intake", "_signal")

    def __init__(self, intake: Intake, bad: BadRequestCounters) -> None:
        self._intake = intake
        self._signal = intake.signal
        self._empty = EMPTY_RESPONSE[intake.signal]
        self._bad = bad

    async def export(self, request: bytes, context: aio.ServicerContext[bytes, bytes]) -> bytes:
        try:
            batch = Batch.from_bytes(self._signal, request)
        except BadInputError as exc:
            self._bad.inc(exc.reason)
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        try:
            await self._intake.deliver(batch)
        except PipelineFullError as exc:
            _, status = backpressure_status(self._signal, exc)
            trailers = (
                (GRPC_STATUS_DETAILS_KEY, status.SerializeToString()),
                (GRPC_RETRY_INFO_KEY, status.details[0].value),
            )
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, status.message, trailers)
        except RetryLater as exc:
            _, status = retry_later_status(exc)
            trailers = (
                (GRPC_STATUS_DETAILS_KEY, status.SerializeToString()),
                (GRPC_RETRY_INFO_KEY, status.details[0].value),
            )
            await context.abort(grpc.StatusCode.UNAVAILABLE, status.message, trailers)
        except InternalError as exc:
            await context.abort(grpc.StatusCode.INTERNAL, str(exc))
        return self._empty


class _NoPipelineHandler:
    """Answers UNIMPLEMENTED with a message that says why, instead of grpc's bare
    'Method not found!'."""

    __slots__ = ("_bad", "_message")

    def __init__(self, signal: Signal, bad: BadRequestCounters) -> None:
        self._message = f"no {signal.value} pipeline is configured in this sidecar"
        self._bad = bad

    async def export(self, request: bytes, context: aio.ServicerContext[bytes, bytes]) -> bytes:
        self._bad.inc("no_pipeline")
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, self._message)


def _bind_problem(host: str, port: int) -> str | None:
    """Why binding `host:port` fails, or None. gRPC itself only logs 'Failed to bind' to
    stderr, so a plain socket (with the SO_REUSEADDR gRPC also sets) asks first."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, address = infos[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)
    except OSError as exc:
        return (exc.strerror or str(exc)).lower()
    return None


class OtlpGrpcReceiver:
    """`name` is the receiver's config section: the `receiver` label on its metrics."""

    def __init__(self, name: str, config: GrpcListenerConfig,
                 consumers: Mapping[Signal, Consumer]) -> None:
        self.name = name
        self._config = config
        self._setting = f"receivers.{name}.{TRANSPORT}.endpoint"
        self._intakes = build_intakes(name, TRANSPORT, consumers)
        self._bad = BadRequestCounters(name, TRANSPORT)
        self._auth = BearerAuth(config.auth) if config.auth is not None else None
        self._tls = (GrpcServerTls(config.tls, f"receivers.{name}.{TRANSPORT}.tls")
                     if config.tls is not None else None)
        self._server: aio.Server | None = None
        self._port: int | None = None
        self._unix_inode: int | None = None

    @property
    def bound_port(self) -> int:
        if self._port is None:
            raise RuntimeError("receiver not started")
        return self._port

    def _handlers(self) -> list[grpc.GenericRpcHandler[bytes, bytes]]:
        handlers = []
        for signal, spec in SIGNALS.items():
            intake = self._intakes.get(signal)
            # A bound `async def` method: grpc.aio looks for a coroutine function, which an
            # object with an async __call__ is not.
            behaviour = (
                _ExportHandler(intake, self._bad).export
                if intake is not None
                else _NoPipelineHandler(signal, self._bad).export
            )
            method = grpc.unary_unary_rpc_method_handler(behaviour)
            handlers.append(
                grpc.method_handlers_generic_handler(spec.grpc_service, {"Export": method}))
        return handlers

    async def start(self) -> None:
        config = self._config
        interceptors = ([_BearerInterceptor(self._auth, self._bad)]
                        if self._auth is not None else None)
        server = aio.server(handlers=self._handlers(), interceptors=interceptors,
                            options=_server_options(config),
                            maximum_concurrent_rpcs=config.max_concurrent_rpcs)
        credentials = self._tls.credentials() if self._tls is not None else None

        def add(address: str) -> int:
            try:
                return (server.add_insecure_port(address) if credentials is None
                        else server.add_secure_port(address, credentials))
            except RuntimeError:
                return 0  # lost a race for the port since the probe; same answer

        try:
            bound = None
            if config.endpoint is not None:
                host, port = split_endpoint(config.endpoint)
                problem = _bind_problem(host, port)
                if problem is not None:
                    raise StartupError(f"{self._setting}: {config.endpoint}: {problem}")
                bound = add(config.endpoint)
                if not bound:
                    raise StartupError(
                        f"{self._setting}: {config.endpoint}: cannot bind this address")
            if config.unix is not None:
                setting = f"receivers.{self.name}.{TRANSPORT}.unix"
                unix = config.unix

                def bind(temporary: str) -> None:  # grpc binds at add_*_port
                    if not add(f"unix:{temporary}"):
                        raise StartupError(f"{setting}: {unix}: cannot bind this socket")

                place_unix(unix, setting, config.unix_mode, config.unix_group, bind)
                self._unix_inode = socket_inode(unix)
            await server.start()
        except BaseException:
            await server.stop(None)
            raise
        self._server = server
        self._port = bound

    async def shutdown(self, deadline: float) -> None:
        """Refuse new RPCs at once; in-flight ones get until `deadline` (loop time)."""
        server, self._server = self._server, None
        if server is None:
            return
        grace = max(0.0, deadline - asyncio.get_running_loop().time())
        await server.stop(grace)
        if self._config.unix is not None:
            remove_unix(self._config.unix, self._unix_inode)

    def describe(self) -> str:
        return describe(self.name, TRANSPORT, self._config.endpoint, self._port, self._intakes,
                        banner(self._config.tls, self._config.auth), self._config.unix)
