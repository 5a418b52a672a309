"""`receivers.logs` on real unix and TCP sockets: real Python producers (logging with
python-json-logger, structlog), hostile input, many connections, backpressure, shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import stat
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import structlog
from google.protobuf.json_format import MessageToDict
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord
from pydantic import ValidationError
from pythonjsonlogger.json import JsonFormatter

from sidecar.config import LogsReceiverConfig
from sidecar.errors import PipelineFullError, ProcessingError
from sidecar.model import Batch, Signal
from sidecar.receivers.logparse import PARSE_ERROR_KEY, TRUNCATED_KEY
from sidecar.receivers.ndjson import LogsReceiver
from sidecar.telemetry.metrics import REGISTRY

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"


class Pipeline:
    """The logs pipeline's entrance: keeps batches; refuses while `full` (backpressure),
    and says when there is room again through `wait_for_room`."""

    def __init__(self) -> None:
        self.batches: list[Batch] = []
        self.full = False
        self.refused = 0
        self._room = asyncio.Event()
        self._room.set()

    def block(self) -> None:
        self.full = True
        self._room.clear()

    def unblock(self) -> None:
        self.full = False
        self._room.set()

    async def consume(self, batch: Batch) -> None:
        if self.full:
            self.refused += 1
            raise PipelineFullError("full", 1.0)
        self.batches.append(batch)

    async def wait_for_room(self, nbytes: int) -> None:
        await self._room.wait()

    def records(self) -> list[tuple[dict[str, Any], LogRecord]]:
        """(resource attributes, record) for every record, in arrival order."""
        out = []
        for batch in self.batches:
            for resource in batch.message.resource_logs:  # type: ignore[union-attr]
                attrs = {kv.key: MessageToDict(kv.value) for kv in resource.resource.attributes}
                for scope in resource.scope_logs:
                    out.extend((attrs, record) for record in scope.log_records)
        return out


def attrs(record: LogRecord) -> dict[str, Any]:
    return {kv.key: MessageToDict(kv.value) for kv in record.attributes}


def sample(name: str, **labels: str) -> float:
    value = REGISTRY.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def wait_for(condition: Callable[[], bool], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


Start = Callable[..., Any]


@pytest.fixture
async def start(short_tmp: Path) -> AsyncIterator[Start]:
    """start(pipeline, **config) -> a started LogsReceiver named "logs" on a unix socket
    in short_tmp; stopped at the end."""
    started: list[LogsReceiver] = []

    async def start(pipeline: Pipeline | None, name: str = "logs",
                    **config: Any) -> LogsReceiver:
        tree = {"unix": str(short_tmp / "logs.sock"), "batch": {"max_delay": "10ms"}}
        tree.update(config)
        consumers = {Signal.LOGS: pipeline} if pipeline is not None else {}
        receiver = LogsReceiver(name, LogsReceiverConfig.model_validate(tree), consumers)
        await receiver.start()
        started.append(receiver)
        return receiver

    yield start
    for receiver in started:
        await receiver.shutdown(asyncio.get_running_loop().time() + 2)


async def close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


def unix_client(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    return sock


async def test_python_logging_with_python_json_logger(start: Start, short_tmp: Path) -> None:
    pipeline = Pipeline()
    await start(pipeline, service_name="py-agent")

    def produce() -> None:
        sock = unix_client(str(short_tmp / "logs.sock"))
        stream = sock.makefile("w", encoding="utf-8")
        handler = logging.StreamHandler(stream)
        handler.setFormatter(JsonFormatter(
            "{levelname}{name}{message}", style="{", timestamp=True))
        logger = logging.getLogger("test.pjl")
        logger.propagate = False
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)
        try:
            for i in range(200):
                logger.warning("step %d", i, extra={"seq": i, "trace_id": TRACE,
                                                    "span_id": SPAN, "agent": "planner"})
            try:
                raise ValueError("bad tool output")
            except ValueError:
                logger.exception("tool failed", extra={"seq": 200})
        finally:
            logger.removeHandler(handler)
            stream.close()
            sock.close()

    before = time.time_ns()
    await asyncio.to_thread(produce)
    await wait_for(lambda: len(pipeline.records()) >= 201)
    records = pipeline.records()
    assert len(records) == 201
    assert [int(attrs(r)["seq"]["intValue"]) for _, r in records] == list(range(201))
    resource, first = records[0]
    assert resource == {"service.name": {"stringValue": "py-agent"}}
    assert (first.severity_number, first.severity_text) == (13, "WARNING")
    assert first.body.string_value == "step 0"
    assert first.trace_id.hex() == TRACE
    assert first.span_id.hex() == SPAN
    assert before - 2_000_000_000 < first.time_unix_nano <= time.time_ns()
    assert attrs(first)["agent"] == {"stringValue": "planner"}
    assert attrs(first)["name"] == {"stringValue": "test.pjl"}
    _, last = records[-1]
    assert last.severity_number == 17
    assert "ValueError: bad tool output" in attrs(last)["exception.stacktrace"]["stringValue"]


async def test_structlog_with_bound_context(start: Start, short_tmp: Path) -> None:
    pipeline = Pipeline()
    await start(pipeline)

    def produce() -> None:
        sock = unix_client(str(short_tmp / "logs.sock"))
        stream = sock.makefile("w", encoding="utf-8")
        logger = structlog.wrap_logger(
            structlog.PrintLogger(stream),
            processors=[structlog.processors.add_log_level,
                        structlog.processors.TimeStamper(fmt="iso"),
                        structlog.processors.JSONRenderer()])
        child = logger.bind(agent="researcher", trace_id=TRACE, run={"id": "r-7"})
        try:
            for i in range(100):
                child.info("searched", seq=i)
            child.error("gave up", seq=100)
        finally:
            stream.close()
            sock.close()

    await asyncio.to_thread(produce)
    await wait_for(lambda: len(pipeline.records()) >= 101)
    records = [r for _, r in pipeline.records()]
    assert [int(attrs(r)["seq"]["intValue"]) for r in records] == list(range(101))
    assert all(r.trace_id.hex() == TRACE for r in records)
    assert records[0].severity_number == 9
    assert records[-1].severity_number == 17
    assert records[0].body.string_value == "searched"
    assert records[0].time_unix_nano > 0
    got = attrs(records[0])
    assert got["agent"] == {"stringValue": "researcher"}
    assert got["run"] == {"kvlistValue": {"values": [
        {"key": "id", "value": {"stringValue": "r-7"}}]}}


async def test_hostile_input_is_kept_marked_and_counted(start: Start, short_tmp: Path) -> None:
    pipeline = Pipeline()
    await start(pipeline, name="hostile", max_line_length="64KiB")
    labels = {"receiver": "hostile", "transport": "unix"}
    errors_before = sample("sidecar_logs_parse_errors_total", **labels)
    truncated_before = sample("sidecar_logs_truncated_lines_total", **labels)

    def produce() -> None:
        with unix_client(str(short_tmp / "logs.sock")) as sock:
            sock.sendall(b'{"msg":"before","seq":1}\n')
            sock.sendall(b"\xff\xfe not utf-8\n")
            sock.sendall(b'{"msg":"nul\x00inside"}\n')
            sock.sendall(b'{"a":' * 10_000 + b"1" + b"}" * 10_000 + b"\n")
            sock.sendall(orjson.dumps({"msg": "x" * (10 * 1024 * 1024)}) + b"\n")
            sock.sendall(b'{"msg":"after","seq":2}\n')
            sock.sendall(b'{"msg":"cut off mid-li')  # then the client goes away

    await asyncio.to_thread(produce)
    await wait_for(lambda: len(pipeline.records()) >= 7)
    records = [r for _, r in pipeline.records()]
    assert len(records) == 7
    assert records[0].body.string_value == "before"
    assert records[1].body.string_value == "\ufffd\ufffd not utf-8"
    assert PARSE_ERROR_KEY in attrs(records[1])
    assert records[2].body.string_value == '{"msg":"nul\x00inside"}'  # raw NUL: not JSON
    assert attrs(records[3])[PARSE_ERROR_KEY] == {"stringValue": "not JSON: nested too deep"}
    assert len(records[3].body.string_value) == 60_001
    assert len(records[4].body.string_value) == 64 * 1024
    assert attrs(records[4]) == {TRUNCATED_KEY: {"boolValue": True}}
    assert records[5].body.string_value == "after"
    assert records[6].body.string_value == '{"msg":"cut off mid-li'
    assert PARSE_ERROR_KEY in attrs(records[6])
    assert sample("sidecar_logs_parse_errors_total", **labels) - errors_before == 4
    assert sample("sidecar_logs_truncated_lines_total", **labels) - truncated_before == 1


async def test_a_thousand_idle_connections_cost_nothing_and_block_no_one(
        start: Start, short_tmp: Path) -> None:
    pipeline = Pipeline()
    receiver = await start(pipeline, name="idle")
    path = str(short_tmp / "logs.sock")
    idle = []
    try:
        for _ in range(1000):
            idle.append(await asyncio.open_unix_connection(path))
        labels = {"receiver": "idle", "transport": "unix"}
        await wait_for(lambda: sample("sidecar_logs_connections", **labels) == 1000)
        _, writer = await asyncio.open_unix_connection(path)
        writer.write(b'{"msg":"still served"}\n')
        await writer.drain()
        await wait_for(lambda: len(pipeline.records()) == 1, timeout=5)
        await close(writer)
        assert receiver.unix is not None
        assert all(c.delivery is not None and c.delivery.pending_bytes == 0
                   for c in receiver.unix.connections)
    finally:
        await asyncio.gather(*(close(w) for _, w in idle))
    await wait_for(lambda: sample("sidecar_logs_connections", receiver="idle",
                                  transport="unix") == 0)
    assert len(pipeline.records()) == 1


async def test_connections_over_the_limit_are_closed_and_counted(
        start: Start, short_tmp: Path) -> None:
    pipeline = Pipeline()
    await start(pipeline, name="limited", max_connections=3)
    path = str(short_tmp / "logs.sock")
    kept = [await asyncio.open_unix_connection(path) for _ in range(3)]
    reader, extra = await asyncio.open_unix_connection(path)
    assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the receiver
    await close(extra)
    assert sample("sidecar_logs_connections_refused_total", receiver="limited",
                  transport="unix") == 1
    _, writer = kept[0]
    writer.write(b'{"msg":"ok"}\n')
    await writer.drain()
    await wait_for(lambda: len(pipeline.records()) == 1)
    for _, w in kept:
        await close(w)


async def test_a_full_pipeline_blocks_the_writer_and_loses_nothing(
        start: Start, short_tmp: Path) -> None:
    pipeline = Pipeline()
    pipeline.block()
    receiver = await start(pipeline, batch={"max_records": 100, "max_delay": "10ms"})
    lines = 50_000
    _, writer = await asyncio.open_unix_connection(str(short_tmp / "logs.sock"))
    written = 0

    async def write_all() -> None:
        nonlocal written
        for start_at in range(0, lines, 1000):
            writer.write(b"".join(b'{"level":30,"msg":"line","seq":%d,"pad":"%s"}\n'
                                  % (i, b"." * 100) for i in range(start_at, start_at + 1000)))
            await writer.drain()
            written = start_at + 1000
        await close(writer)

    writing = asyncio.ensure_future(write_all())
    assert receiver.unix is not None
    unix = receiver.unix
    await wait_for(lambda: any(c.delivery and c.delivery.paused for c in unix.connections))
    await asyncio.sleep(0.3)
    assert not writing.done()
    assert written < lines / 2
    refused = pipeline.refused
    await asyncio.sleep(0.3)
    assert pipeline.refused - refused <= 1  # waiting for room, not polling
    pipeline.unblock()
    await asyncio.wait_for(writing, 20)
    await wait_for(lambda: len(pipeline.records()) >= lines)
    seqs = [int(attrs(r)["seq"]["intValue"]) for _, r in pipeline.records()]
    assert seqs == list(range(lines))
    assert all(b.items <= 100 for b in pipeline.batches)


async def test_lines_are_batched_by_count_and_by_delay(start: Start, short_tmp: Path) -> None:
    pipeline = Pipeline()
    await start(pipeline, batch={"max_records": 10, "max_delay": "200ms"})
    _, writer = await asyncio.open_unix_connection(str(short_tmp / "logs.sock"))
    writer.write(b"".join(b'{"msg":"%d"}\n' % i for i in range(25)))
    await writer.drain()
    await wait_for(lambda: len(pipeline.batches) == 2)
    assert [b.items for b in pipeline.batches] == [10, 10]
    await wait_for(lambda: len(pipeline.batches) == 3, timeout=5)  # the rest, after the delay
    assert pipeline.batches[2].items == 5
    await close(writer)


async def test_accepted_records_are_counted_by_receiver_and_transport(
        start: Start, short_tmp: Path) -> None:
    pipeline = Pipeline()
    await start(pipeline, name="counted")
    with unix_client(str(short_tmp / "logs.sock")) as sock:
        sock.sendall(b'{"msg":"a"}\n\n{"msg":"b"}\n')
    await wait_for(lambda: len(pipeline.records()) == 2)
    assert sample("sidecar_receiver_accepted_items_total", receiver="counted",
                  transport="unix", signal="logs") == 2
    assert sample("sidecar_logs_lines_total", receiver="counted", transport="unix") == 2


async def test_socket_file_mode_banner_and_removal(start: Start, short_tmp: Path) -> None:
    path = short_tmp / "logs.sock"
    receiver = await start(Pipeline(), unix_mode="0600")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert receiver.describe() == [f"logs/unix  unix:{path}  logs"]
    await receiver.shutdown(asyncio.get_running_loop().time() + 1)
    assert not path.exists()


async def test_default_socket_mode_is_0660(start: Start, short_tmp: Path) -> None:
    await start(Pipeline())
    assert stat.S_IMODE(os.stat(short_tmp / "logs.sock").st_mode) == 0o660


async def test_tcp_listener_on_loopback(start: Start) -> None:
    pipeline = Pipeline()
    receiver = await start(pipeline, unix=None, tcp={"endpoint": "127.0.0.1:0"})
    (line,) = receiver.describe()
    host, _, port = line.split()[1].rpartition(":")
    assert line.startswith("logs/tcp  127.0.0.1:")
    assert int(port) > 0
    _, writer = await asyncio.open_connection(host, int(port))
    writer.write(b'{"msg":"over tcp","level":"info"}\n')
    await close(writer)
    await wait_for(lambda: len(pipeline.records()) == 1)
    assert pipeline.records()[0][1].body.string_value == "over tcp"


async def test_tcp_off_loopback_needs_allow_remote(start: Start) -> None:
    # refused when the config is read (so `sidecar validate` says it), before any bind
    with pytest.raises(ValidationError, match=r"not loopback: set allow_remote"):
        await start(Pipeline(), unix=None, tcp={"endpoint": "0.0.0.0:0"})


async def test_without_a_logs_pipeline_lines_are_counted_as_refused(
        start: Start, short_tmp: Path) -> None:
    receiver = await start(None, name="nopipe")
    assert receiver.describe()[0].endswith("(no pipelines)")
    with unix_client(str(short_tmp / "logs.sock")) as sock:
        sock.sendall(b'{"msg":"a"}\n')
    await wait_for(lambda: sample("sidecar_receiver_refused_items_total", receiver="nopipe",
                                  transport="unix", signal="logs", reason="no_pipeline") == 1)


async def test_shutdown_delivers_what_was_read(start: Start, short_tmp: Path) -> None:
    pipeline = Pipeline()
    receiver = await start(pipeline, name="drain", batch={"max_delay": "60s"})
    _, writer = await asyncio.open_unix_connection(str(short_tmp / "logs.sock"))
    writer.write(b'{"msg":"a"}\n{"msg":"b"}\n{"msg":"no newline"}')
    await writer.drain()
    await wait_for(lambda: sample("sidecar_logs_lines_total", receiver="drain",
                                  transport="unix") == 2)
    assert pipeline.records() == []  # held for the delay
    await receiver.shutdown(asyncio.get_running_loop().time() + 2)
    bodies = [r.body.string_value for _, r in pipeline.records()]
    assert bodies == ["a", "b", "no newline"]
    await close(writer)


async def test_shutdown_gives_up_at_the_deadline_and_counts_the_loss(
        start: Start, short_tmp: Path) -> None:
    pipeline = Pipeline()
    pipeline.block()
    receiver = await start(pipeline, name="lossy")
    _, writer = await asyncio.open_unix_connection(str(short_tmp / "logs.sock"))
    writer.write(b'{"msg":"a"}\n{"msg":"b"}\n')
    await writer.drain()
    await wait_for(lambda: pipeline.refused >= 1)
    loop = asyncio.get_running_loop()
    began = loop.time()
    await receiver.shutdown(began + 0.2)
    assert loop.time() - began < 2
    assert sample("sidecar_receiver_refused_items_total", receiver="lossy", transport="unix",
                  signal="logs", reason="shutdown") == 2
    await close(writer)


async def test_one_connections_garbage_costs_another_connection_nothing(
        start: Start, short_tmp: Path) -> None:
    """While one client sends over-long lines in pieces, invalid UTF-8, NUL bytes, deep
    nesting and then leaves mid-line, a slow client (each line in two writes) on another
    connection gets every line through whole, in order and unmarked."""
    pipeline = Pipeline()
    await start(pipeline, name="neighbours", max_line_length="4KiB")
    path = str(short_tmp / "logs.sock")
    lines = 200

    async def clean() -> None:
        _, writer = await asyncio.open_unix_connection(path)
        for seq in range(lines):
            line = orjson.dumps({"service": "clean", "msg": f"line {seq}", "seq": seq})
            writer.write(line[:7])
            await writer.drain()
            await asyncio.sleep(0.001)
            writer.write(line[7:] + b"\n")
            await writer.drain()
        await close(writer)

    async def garbage() -> None:
        _, writer = await asyncio.open_unix_connection(path)
        for _ in range(20):
            for piece in range(10):  # a 10 KiB line in 1 KiB writes, cut at 4 KiB
                writer.write(b'{"service":"garbage","msg":"' if piece == 0 else b"y" * 1024)
                await writer.drain()
            writer.write(b'"}\n\xff\xfe\x00 not json\n' + b"[" * 2000 + b"\n")
            await writer.drain()
            await asyncio.sleep(0.005)
        writer.write(b'{"service":"garbage","msg":"gone mid-li')
        await writer.drain()
        await close(writer)

    await asyncio.wait_for(asyncio.gather(clean(), garbage()), 30)
    await wait_for(lambda: len(pipeline.records()) >= lines + 20 * 3 + 1)
    records = pipeline.records()
    ours = [r for resource, r in records if resource["service.name"] == {"stringValue": "clean"}]
    assert [r.body.string_value for r in ours] == [f"line {seq}" for seq in range(lines)]
    assert all(attrs(r) == {"seq": {"intValue": str(seq)}} for seq, r in enumerate(ours))
    theirs = [r for resource, r in records if resource["service.name"] != {"stringValue": "clean"}]
    assert len(theirs) == 20 * 3 + 1
    assert sum(TRUNCATED_KEY in attrs(r) for r in theirs) == 20
    assert sum(PARSE_ERROR_KEY in attrs(r) for r in theirs) == 20 * 2 + 1


async def test_unfinished_lines_of_all_connections_share_one_budget(
        start: Start, short_tmp: Path) -> None:
    """50 clients each hold 512 KiB of an unfinished line: 25 MiB if each were allowed its
    max_line_length. The receiver holds at most max_buffered_bytes of them at once; a line
    that took the total over the budget comes out cut and marked, once, never split."""
    import tracemalloc

    pipeline = Pipeline()
    await start(pipeline, name="budget", max_buffered_bytes="4MiB")
    path = str(short_tmp / "logs.sock")
    clients = 50
    part = b'{"msg":"' + b"y" * (512 * 1024)
    tracemalloc.start()
    try:
        writers = [(await asyncio.open_unix_connection(path))[1] for _ in range(clients)]
        for writer in writers:
            writer.write(part)
            await writer.drain()
        await wait_for(lambda: sample("sidecar_logs_budget_cut_lines_total", receiver="budget",
                                      transport="unix") >= clients - 8)
        assert sample("sidecar_logs_buffered_bytes", receiver="budget") <= 4 * 1024 * 1024
        for i, writer in enumerate(writers):
            writer.write(b'","seq":%d}\n' % i)
            await writer.drain()
            await close(writer)
        await wait_for(lambda: len(pipeline.records()) == clients)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # the partial lines (4 MiB) plus the batches made of them (~26 MiB of bodies): not the
    # 25 MiB of partial lines on top
    assert peak < 40 * 1024 * 1024
    records = [r for _, r in pipeline.records()]
    cut = [r for r in records if TRUNCATED_KEY in attrs(r)]
    whole = [r for r in records if TRUNCATED_KEY not in attrs(r)]
    assert len(cut) == sample("sidecar_logs_budget_cut_lines_total", receiver="budget",
                              transport="unix")
    assert len(whole) >= 1
    assert all(r.body.string_value.startswith('{"msg":"yyy') for r in cut)
    assert sorted(int(attrs(r)["seq"]["intValue"]) for r in whole) == sorted(
        {int(attrs(r)["seq"]["intValue"]) for r in whole})
    await wait_for(lambda: sample("sidecar_logs_buffered_bytes", receiver="budget") == 0)


async def test_a_thousand_connections_that_never_write_are_closed_after_idle_timeout(
        start: Start, short_tmp: Path) -> None:
    pipeline = Pipeline()
    receiver = await start(pipeline, name="idle-timeout", idle_timeout="500ms",
                           max_connections=1001)
    path = str(short_tmp / "logs.sock")
    idle = [await asyncio.open_unix_connection(path) for _ in range(1000)]
    reader, writer = await asyncio.open_unix_connection(path)
    writer.write(b'{"msg":"talks once"}\n')
    await writer.drain()
    try:
        for idle_reader, _ in idle:
            assert await asyncio.wait_for(idle_reader.read(), 10) == b""  # closed by us
        labels = {"receiver": "idle-timeout", "transport": "unix"}
        assert sample("sidecar_logs_connections_idle_closed_total", **labels) == 1000
        assert sample("sidecar_logs_connections", **labels) == 1
        assert receiver.unix is not None
        assert len(receiver.unix.connections) == 1
        writer.write(b'{"msg":"still open"}\n')
        await writer.drain()
        # the closed ones freed their slots: max_connections (1001) admits new clients
        late = [await asyncio.open_unix_connection(path) for _ in range(3)]
        late[-1][1].write(b'{"msg":"late"}\n')
        await late[-1][1].drain()
        await wait_for(lambda: len(pipeline.records()) == 3)
        assert sample("sidecar_logs_connections_refused_total", **labels) == 0
        await asyncio.gather(*(close(w) for _, w in late))
    finally:
        await asyncio.gather(*(close(w) for _, w in idle))
        await close(writer)
    del reader


class RefusingOnce(Pipeline):
    """A pipeline whose processors fail closed on the first batch (ProcessingError)."""

    def __init__(self) -> None:
        super().__init__()
        self.failed = False

    async def consume(self, batch: Batch) -> None:
        if not self.failed:
            self.failed = True
            raise ProcessingError("redact processor failed on a logs request (KeyError)")
        await super().consume(batch)


async def test_a_batch_the_processors_refuse_is_counted_and_the_stream_goes_on(
        start: Start, short_tmp: Path) -> None:
    pipeline = RefusingOnce()
    await start(pipeline, name="failing")
    labels = {"receiver": "failing", "transport": "unix", "signal": "logs",
              "reason": "processing_failed"}
    before = sample("sidecar_receiver_refused_items_total", **labels)
    with unix_client(str(short_tmp / "logs.sock")) as sock:
        sock.sendall(b'{"msg":"first"}\n')
        await wait_for(lambda: pipeline.failed)
        await asyncio.sleep(0.05)
        sock.sendall(b'{"msg":"second"}\n')
        await wait_for(lambda: len(pipeline.records()) == 1)
    assert sample("sidecar_receiver_refused_items_total", **labels) == before + 1
    assert pipeline.records()[0][1].body.string_value == "second"
