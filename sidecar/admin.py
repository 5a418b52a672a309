"""Admin HTTP server: /metrics (Prometheus text), /healthz, /readyz, /cache/stats,
/listeners (what is bound, JSON), /spend (today's LLM spend by model, JSON), and
POST /-/reload (apply the config file again; 200 when applied, 400 with the reason).

With `admin.auth`, every path but the probes (/healthz, /readyz: kubelet and load balancers
call them without credentials, and they say nothing secret) needs the bearer token."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import orjson
from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client import CONTENT_TYPE_LATEST

from sidecar.configtypes import split_endpoint
from sidecar.errors import StartupError
from sidecar.model import Signal
from sidecar.net.security import AuthConfig, BearerAuth, ServerTls, ServerTlsConfig, banner
from sidecar.telemetry.health import HEALTH
from sidecar.telemetry.metrics import ADMIN_UNAUTHENTICATED, READY, exposition
from sidecar.telemetry.tap import MAX_SUBSCRIBERS, TAPS, Filter, Subscriber

_TAIL_HEARTBEAT = 1.0  # seconds: an idle feed writes a blank line, so a gone reader is seen

StatsProvider = Callable[[], dict[str, object]]
ListenersProvider = Callable[[], list[dict[str, object]]]
Reloader = Callable[[], Awaitable[tuple[bool, str]]]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
OPEN_PATHS = frozenset({"/healthz", "/readyz"})


def _auth_middleware(auth: BearerAuth) -> Middleware:
    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path not in OPEN_PATHS and not auth.check(
                request.headers.get("Authorization")):
            ADMIN_UNAUTHENTICATED.inc()
            return web.json_response(
                {"error": "missing or wrong bearer token in the Authorization header"},
                status=401, headers={"WWW-Authenticate": 'Bearer realm="sidecar"'})
        return await handler(request)

    return check


class AdminServer:
    def __init__(self, endpoint: str, cache_stats: StatsProvider | None = None, *,
                 tls: ServerTlsConfig | None = None, auth: AuthConfig | None = None,
                 reload: Reloader | None = None, listeners: ListenersProvider | None = None,
                 spend: StatsProvider | None = None) -> None:
        self.endpoint = endpoint
        self.ready = False
        self._cache_stats = cache_stats
        self._tls_config = tls
        self._auth_config = auth
        self._auth = BearerAuth(auth) if auth is not None else None
        self._reload = reload
        self._listeners = listeners
        self._spend = spend
        self._runner: web.AppRunner | None = None
        self.bound_port: int | None = None
        self._stopping = asyncio.Event()

    @property
    def scheme(self) -> str:
        return "https" if self._tls_config is not None else "http"

    def _app(self) -> web.Application:
        middlewares = [_auth_middleware(self._auth)] if self._auth is not None else []
        app = web.Application(middlewares=middlewares)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/cache/stats", self._cache)
        app.router.add_get("/listeners", self._listeners_json)
        app.router.add_get("/spend", self._spend_json)
        app.router.add_post("/-/reload", self._reload_config)
        app.router.add_get("/tail", self._tail)
        return app

    async def _metrics(self, _: web.Request) -> web.Response:
        body = exposition()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, _: web.Request) -> web.Response:
        return web.json_response({"status": "alive"})

    async def _readyz(self, _: web.Request) -> web.Response:
        if not self.ready:
            return web.json_response({"status": "starting or stopping"}, status=503)
        problems = HEALTH.problems()
        if problems:
            # a component task died and was restarted: say which, for the operator
            return web.json_response({"status": "degraded", "components": problems},
                                     status=503)
        return web.json_response({"status": "ready"})

    async def _cache(self, _: web.Request) -> web.Response:
        if self._cache_stats is None:
            return web.json_response({"error": "cache is disabled"}, status=404)
        return web.Response(body=orjson.dumps(self._cache_stats()),
                            content_type="application/json")

    async def _listeners_json(self, _: web.Request) -> web.Response:
        rows = self._listeners() if self._listeners is not None else []
        return web.Response(body=orjson.dumps({"listeners": rows}),
                            content_type="application/json")

    async def _spend_json(self, _: web.Request) -> web.Response:
        if self._spend is None:
            return web.json_response({"error": "no spend ledger"}, status=404)
        return web.Response(body=orjson.dumps(self._spend()), content_type="application/json")

    async def _reload_config(self, _: web.Request) -> web.Response:
        if self._reload is None:
            return web.json_response({"error": "reload is not available"}, status=404)
        ok, message = await self._reload()
        return web.json_response({"status": "reloaded" if ok else "refused",
                                  "detail": message}, status=200 if ok else 400)

    # /tail: the live NDJSON feed `sidecar tail` reads (telemetry/tap.py)
    async def _tail(self, request: web.Request) -> web.StreamResponse:
        """`GET /tail?signal=traces|logs&filter=EXPR`: NDJSON, one span or log record a line
        (after processing, as exported), `{"dropped": n}` when the reader fell behind."""
        names = request.query.getall("signal", ["traces", "logs"])
        try:
            signals = frozenset(Signal(name) for name in names)
            wanted = Filter.parse(request.query.get("filter", ""))
        except ValueError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        subscriber = Subscriber(signals, wanted)
        if not TAPS.subscribe(subscriber):
            return web.json_response(
                {"error": f"{MAX_SUBSCRIBERS} tail readers are connected already"},
                status=503, headers={"Retry-After": "5"})
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        try:
            await response.prepare(request)
        except BaseException:
            TAPS.unsubscribe(subscriber)
            raise
        reported = 0
        try:
            await response.write(orjson.dumps(
                {"subscribed": sorted(s.value for s in signals)}) + b"\n")
            while not self._stopping.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(subscriber.ready.wait(), _TAIL_HEARTBEAT)
                taken = subscriber.take()
                chunk = b"".join(orjson.dumps(item) + b"\n" for item in taken)
                if subscriber.dropped != reported:
                    reported = subscriber.dropped
                    chunk += orjson.dumps({"dropped": reported}) + b"\n"
                await response.write(chunk or b"\n")
                TAPS.sent(len(taken))
        except (ConnectionError, RuntimeError):
            pass  # the reader went away
        finally:
            TAPS.unsubscribe(subscriber)
        return response

    def set_ready(self, ready: bool) -> None:
        self.ready = ready
        READY.set(1 if ready else 0)

    async def start(self) -> None:
        host, port = split_endpoint(self.endpoint)
        tls = (ServerTls(self._tls_config, "admin.tls")
               if self._tls_config is not None else None)
        self._runner = web.AppRunner(self._app(), access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, reuse_address=True,
                           ssl_context=tls.listener_context if tls is not None else None)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            self._runner = None
            raise StartupError(f"admin.endpoint: {self.endpoint}: {exc.strerror or exc}") from exc
        self.bound_port = int(self._runner.addresses[0][1])

    async def shutdown(self, deadline: float) -> None:
        self._stopping.set()  # tail feeds end (their readers see the end of the stream)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def describe(self) -> str:
        return (f"admin      {self.scheme}://{self.endpoint}  /metrics /healthz /readyz "
                f"/cache/stats /listeners /spend{banner(self._tls_config, self._auth_config)}")
