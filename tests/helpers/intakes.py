"""Strict fake vendor intakes on loopback (docs/vendors.md §6). Each refuses what the vendor
refuses (wrong path, missing or wrong headers, bad content type or encoding, oversize
bodies) and decodes every body it accepts."""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import msgpack
import orjson
from aiohttp import web
from google.protobuf.message import DecodeError

from sidecar._proto.datadog_trace_pb2 import AgentPayload
from sidecar._proto.datadog_trace_pb2 import Span as DDSpan
from sidecar.exporthelper.compression import gzip_decompress
from sidecar.testing import OtlpSink


def honeycomb_sink(api_key: str, dataset: str | None = None) -> OtlpSink:
    """Honeycomb's OTLP intake: 401 without the team key (and, when `dataset` is given,
    without that dataset header), 415 for other content types, gzip or plain bodies."""
    required = {"x-honeycomb-team": api_key}
    if dataset is not None:
        required["x-honeycomb-dataset"] = dataset
    return OtlpSink(require_headers=required)


def jaeger_sink() -> OtlpSink:
    """Jaeger's OTLP receivers: no auth, traces only (requests of other signals are
    recorded, so a test can assert there were none)."""
    return OtlpSink()


@dataclass(frozen=True, slots=True)
class Answer:
    """One scripted answer of a fake intake."""

    status: int = 503
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b'{"errors":["injected"]}'
    delay: float = 0.0


@dataclass(slots=True)
class DatadogRequest:
    path: str
    headers: dict[str, str]  # keys lowercased
    status: int  # what the intake answered
    payload: AgentPayload | None  # decoded traces body, when it was well formed
    size: int  # uncompressed body bytes
    at: float
    entries: list[dict[str, Any]] | None = None  # decoded logs body
    stats: dict[str, Any] | None = None  # decoded StatsPayload


# StatsPayload as the Agent's msgp code writes it (pkg/proto/pbgo/trace/stats_gen.go): the
# keys each level must carry, with their msgpack types
_STATS_KEYS: dict[str, dict[str, type | tuple[type, ...]]] = {
    "payload": {"AgentHostname": str, "AgentEnv": str, "Stats": list, "AgentVersion": str,
                "ClientComputed": bool, "SplitPayload": bool},
    "client": {"Hostname": str, "Env": str, "Version": str, "Stats": list, "Lang": str,
               "TracerVersion": str, "RuntimeID": str, "Sequence": int,
               "AgentAggregation": str, "Service": str, "ContainerID": str, "Tags": list,
               "GitCommitSha": str, "ImageTag": str},
    "bucket": {"Start": int, "Duration": int, "Stats": list, "AgentTimeShift": int},
    "group": {"Service": str, "Name": str, "Resource": str, "HTTPStatusCode": int,
              "Type": str, "DBType": str, "Hits": int, "Errors": int, "Duration": int,
              "OkSummary": bytes, "ErrorSummary": bytes, "Synthetics": bool,
              "TopLevelHits": int, "SpanKind": str, "PeerTags": list, "IsTraceRoot": int},
}


def stats_problem(doc: Any) -> str:
    """What is wrong with a decoded StatsPayload ("" if nothing): missing or mistyped keys,
    a summary that is not a DDSketch protobuf, more than 4,000 groups."""
    from ddsketch.pb.ddsketch_pb2 import DDSketch

    def check(level: str, item: Any) -> str:
        if not isinstance(item, dict):
            return f"{level} is not a map"
        for key, kind in _STATS_KEYS[level].items():
            if key not in item:
                return f"{level} without {key}"
            if not isinstance(item[key], kind) or (kind is int and isinstance(item[key], bool)):
                return f"{level}.{key} is {type(item[key]).__name__}"
        return ""

    problem = check("payload", doc)
    if problem:
        return problem
    groups = 0
    for client in doc["Stats"]:
        problem = check("client", client)
        for bucket in [] if problem else client["Stats"]:
            problem = problem or check("bucket", bucket)
            for group in [] if problem else bucket["Stats"]:
                problem = problem or check("group", group)
                groups += 1
                for summary in () if problem else ("OkSummary", "ErrorSummary"):
                    try:
                        DDSketch.FromString(group[summary])
                    except DecodeError:
                        problem = f"group.{summary} is not a DDSketch"
        if problem:
            return problem
    return "more than 4000 groups" if groups > 4000 else ""


class DatadogIntake:
    """Datadog's native trace intake (`POST /api/v0.2/traces`) and logs intake
    (`POST /api/v2/logs`) on one port, strict: 401 without `DD-Api-Key`, 403 with a wrong
    one, 415 for another content type (`application/x-protobuf`, `application/json`) or
    encoding than gzip, 411 without Content-Length, 413 over `max_payload` (traces) or
    5 MB (logs) uncompressed, 400 for a body that is not gzip or does not decode (an
    `AgentPayload` with no fields unknown to our proto; a JSON array of at most 1,000
    objects of at most 1 MB, each with the reserved keys), 404 for any other path. Accepts
    with 202 `{}` unless scripted otherwise. Also the API-key check
    (`GET /api/v1/validate`: 200 `{"valid":true}`, 403 for a wrong or missing key)."""

    def __init__(self, api_key: str, *, max_payload: int = 3_200_000) -> None:
        self.api_key = api_key
        self.max_payload = max_payload
        self.max_logs_body = 5_000_000
        self.requests: list[DatadogRequest] = []
        self.stats_requests: list[DatadogRequest] = []  # POST /api/v0.2/stats
        self.stats_script: deque[Answer] = deque()
        self.script: deque[Answer] = deque()
        self._runner: web.AppRunner | None = None
        self._changed = asyncio.Condition()
        self.port = 0

    async def __aenter__(self) -> DatadogIntake:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, auto_decompress=False, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self._runner = runner
        self.port = runner.addresses[0][1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def answer_next(self, n: int = 1, answer: Answer | None = None, **kw: Any) -> None:
        self.script.extend([answer or Answer(**kw)] * n)

    @property
    def accepted(self) -> list[AgentPayload]:
        return [r.payload for r in self.requests
                if r.payload is not None and 200 <= r.status < 300]

    def stats(self) -> list[dict[str, Any]]:
        """The accepted StatsPayloads."""
        return [r.stats for r in self.stats_requests
                if r.stats is not None and 200 <= r.status < 300]

    def stats_groups(self) -> list[dict[str, Any]]:
        """Every ClientGroupedStats accepted, with its bucket's Start and its client
        payload's Env/Hostname/Version added (as _start, _env, _hostname, _version)."""
        return [{**g, "_start": b["Start"], "_env": c["Env"], "_hostname": c["Hostname"],
                 "_version": c["Version"]}
                for p in self.stats() for c in p["Stats"] for b in c["Stats"]
                for g in b["Stats"]]

    async def wait_for_stats(self, n: int = 1, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(lambda: len(self.stats()) >= n)

    def logs(self) -> list[dict[str, Any]]:
        return [e for r in self.requests if r.entries is not None and 200 <= r.status < 300
                for e in r.entries]

    def spans(self) -> list[DDSpan]:
        return [span for p in self.accepted for tp in p.tracerPayloads
                for chunk in tp.chunks for span in chunk.spans]

    async def wait_for_logs(self, n: int, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(lambda: len(self.logs()) >= n)

    async def wait_for_spans(self, n: int, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(lambda: len(self.spans()) >= n)

    async def _handle(self, request: web.Request) -> web.Response:
        headers = {k.lower(): v for k, v in request.headers.items()}
        raw = await request.read()
        entries: list[dict[str, Any]] | None = None
        if request.path == "/api/v1/validate" and request.method == "GET":
            ok = headers.get("dd-api-key") == self.api_key
            status = 200 if ok else 403
            self.requests.append(DatadogRequest(request.path, headers, status, None, 0,
                                                asyncio.get_running_loop().time()))
            return web.Response(status=status, content_type="application/json",
                                text='{"valid":true}' if ok else '{"errors":["Forbidden"]}')
        if request.path == "/api/v0.2/stats":
            return await self._handle_stats(request, headers, raw)
        if request.path == "/api/v2/logs":
            status, entries, size, text = self._check_logs(request, headers, raw)
            payload = None
        else:
            status, payload, size, text = self._check(request, headers, raw)
        answer = None
        if status == 202 and self.script:
            answer = self.script.popleft()
            status = answer.status
        self.requests.append(DatadogRequest(request.path, headers, status, payload, size,
                                            asyncio.get_running_loop().time(), entries))
        async with self._changed:
            self._changed.notify_all()
        if answer is not None:
            if answer.delay:
                await asyncio.sleep(answer.delay)
            return web.Response(status=answer.status, headers=answer.headers,
                                body=answer.body, content_type="application/json")
        return web.Response(status=status, text=text, content_type="application/json")

    async def _handle_stats(self, request: web.Request, headers: dict[str, str],
                            raw: bytes) -> web.Response:
        status, doc, size, text = self._check_stats(request, headers, raw)
        answer = None
        if status == 202 and self.stats_script:
            answer = self.stats_script.popleft()
            status = answer.status
        self.stats_requests.append(DatadogRequest(
            request.path, headers, status, None, size, asyncio.get_running_loop().time(),
            stats=doc))
        async with self._changed:
            self._changed.notify_all()
        if answer is not None:
            if answer.delay:
                await asyncio.sleep(answer.delay)
            return web.Response(status=answer.status, headers=answer.headers,
                                body=answer.body, content_type="application/json")
        return web.Response(status=status, text=text, content_type="application/json")

    def _check_stats(self, request: web.Request, headers: dict[str, str], raw: bytes,
                     ) -> tuple[int, dict[str, Any] | None, int, str]:
        """The Agent's writer sends gzipped msgpack (Content-Type application/msgpack)."""
        if request.method != "POST":
            return 404, None, 0, '{"errors":["not found"]}'
        if "dd-api-key" not in headers:
            return 401, None, 0, '{"errors":["API key missing"]}'
        if headers["dd-api-key"] != self.api_key:
            return 403, None, 0, '{"errors":["Forbidden"]}'
        if headers.get("content-type") != "application/msgpack":
            return 415, None, 0, '{"errors":["unsupported content type"]}'
        if headers.get("content-encoding") != "gzip":
            return 415, None, 0, '{"errors":["expected gzip"]}'
        if "content-length" not in headers:
            return 411, None, 0, '{"errors":["length required"]}'
        try:
            body = gzip_decompress(raw, self.max_payload)
        except ValueError as exc:
            if "exceeds" in str(exc):
                return 413, None, 0, '{"errors":["Request Entity Too Large"]}'
            return 400, None, 0, '{"errors":["bad gzip"]}'
        try:
            doc = msgpack.unpackb(body, raw=False)
        except (ValueError, msgpack.UnpackException):
            return 400, None, len(body), '{"errors":["not msgpack"]}'
        problem = stats_problem(doc)
        if problem:
            return 400, None, len(body), orjson.dumps({"errors": [problem]}).decode()
        return 202, doc, len(body), "{}"

    def _check(self, request: web.Request, headers: dict[str, str], raw: bytes,
               ) -> tuple[int, AgentPayload | None, int, str]:
        if request.method != "POST" or request.path != "/api/v0.2/traces":
            return 404, None, 0, '{"errors":["not found"]}'
        if "dd-api-key" not in headers:
            return 401, None, 0, '{"errors":["API key missing"]}'
        if headers["dd-api-key"] != self.api_key:
            return 403, None, 0, '{"errors":["Forbidden"]}'
        if headers.get("content-type") != "application/x-protobuf":
            return 415, None, 0, '{"errors":["unsupported content type"]}'
        if headers.get("content-encoding") != "gzip":
            return 415, None, 0, '{"errors":["expected gzip"]}'
        if "content-length" not in headers:
            return 411, None, 0, '{"errors":["length required"]}'
        try:
            body = gzip_decompress(raw, self.max_payload)
        except ValueError as exc:
            if "exceeds" in str(exc):
                return 413, None, 0, '{"errors":["Request Entity Too Large"]}'
            return 400, None, 0, '{"errors":["bad gzip"]}'
        try:
            payload = AgentPayload.FromString(body)
        except DecodeError:
            return 400, None, len(body), '{"errors":["not an AgentPayload"]}'
        known = AgentPayload()
        known.CopyFrom(payload)
        known.DiscardUnknownFields()
        if known.ByteSize() != payload.ByteSize():
            return 400, None, len(body), '{"errors":["unknown fields"]}'
        return 202, payload, len(body), "{}"

    def _check_logs(self, request: web.Request, headers: dict[str, str], raw: bytes,
                    ) -> tuple[int, list[dict[str, Any]] | None, int, str]:
        if request.method != "POST":
            return 404, None, 0, '{"errors":["not found"]}'
        if "dd-api-key" not in headers:
            return 401, None, 0, '{"errors":["API key missing"]}'
        if headers["dd-api-key"] != self.api_key:
            return 403, None, 0, '{"errors":["Forbidden"]}'
        if headers.get("content-type") != "application/json":
            return 415, None, 0, '{"errors":["unsupported content type"]}'
        if headers.get("content-encoding") != "gzip":
            return 415, None, 0, '{"errors":["expected gzip"]}'
        if "content-length" not in headers:
            return 411, None, 0, '{"errors":["length required"]}'
        try:
            body = gzip_decompress(raw, self.max_logs_body)
        except ValueError as exc:
            if "exceeds" in str(exc):
                return 413, None, 0, '{"errors":["Request Entity Too Large"]}'
            return 400, None, 0, '{"errors":["bad gzip"]}'
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError:
            return 400, None, len(body), '{"errors":["not JSON"]}'
        if not isinstance(doc, list) or not 1 <= len(doc) <= 1000:
            return 400, None, len(body), '{"errors":["expected 1 to 1000 entries"]}'
        for item in doc:
            if not isinstance(item, dict) or len(orjson.dumps(item)) > 1_000_000:
                return 400, None, len(body), '{"errors":["entry not an object or over 1MB"]}'
            missing = {"message", "status", "service", "ddsource", "ddtags",
                       "timestamp"} - set(item)
            if missing or not isinstance(item["timestamp"], int):
                return 400, None, len(body), '{"errors":["missing reserved keys"]}'
        return 202, doc, len(body), "{}"
