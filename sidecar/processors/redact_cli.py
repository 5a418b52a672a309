"""`sidecar redact`: the redact processor over stdin, so users can try their rules on real
samples. Input is one OTLP/JSON request (the file exporter's lines are such requests), or
NDJSON / plain lines, each redacted as a log body would be."""

from __future__ import annotations

from collections.abc import Iterable

import orjson

from sidecar.errors import BadInputError
from sidecar.model import Batch, Signal
from sidecar.otlp_json import request_from_json_bytes, request_to_json_bytes
from sidecar.pipeline.stage import Stage
from sidecar.processors.redact import RedactionError, Redactor, RedactProcessor, RedactSettings

_ROOTS = {b"resourceSpans": Signal.TRACES, b"resourceLogs": Signal.LOGS,
          b"resourceMetrics": Signal.METRICS}


def _otlp_signal(line: bytes) -> Signal | None:
    head = line.lstrip()[:32]
    if not head.startswith(b"{"):
        return None
    for key, signal in _ROOTS.items():
        if b'"' + key + b'"' in head:
            return signal
    return None


class TextRedactor:
    """One string through the redaction engine as a log body, without the processor's
    metrics: for the daemon's own log lines (what it says about itself is not telemetry)."""

    def __init__(self, settings: RedactSettings) -> None:
        self.redactor = Redactor(settings)

    def __call__(self, text: str) -> str:
        from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
            ExportLogsServiceRequest,
        )

        request = ExportLogsServiceRequest()
        request.resource_logs.add().scope_logs.add().log_records.add().body.string_value = text
        _, out = self.redactor.redact_payload(Signal.LOGS, request.SerializeToString(), None)
        if out is None:
            return text
        edited = ExportLogsServiceRequest.FromString(out)
        body: str = edited.resource_logs[0].scope_logs[0].log_records[0].body.string_value
        return body


class LineRedactor:
    def __init__(self, settings: RedactSettings) -> None:
        self.processor = RedactProcessor(settings)
        self.stages = {s: Stage(s, [self.processor]) for s in Signal}
        self.counts: dict[str, int] = {}

    def _tally(self) -> None:
        for rule, n in self.processor.redactor.counts.items():
            self.counts[rule] = self.counts.get(rule, 0) + n
        self.processor.redactor.counts = {}

    def request(self, signal: Signal, data: bytes) -> bytes:
        """An OTLP/JSON request, redacted, as compact OTLP/JSON. Raises BadInputError."""
        message = request_from_json_bytes(signal, data)
        batch = Batch.from_message(signal, message)
        self.processor.redactor.counts = {}
        out = self.stages[signal].run(batch)
        self._tally()
        if out is None:
            return b"{}"
        return request_to_json_bytes(signal, out.message)

    def text(self, line: bytes) -> bytes:
        """One line of text (NDJSON or not) redacted as a log body string."""
        from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
            ExportLogsServiceRequest,
        )

        request = ExportLogsServiceRequest()
        record = request.resource_logs.add().scope_logs.add().log_records.add()
        record.body.string_value = line.decode("utf-8", "replace")
        self.processor.redactor.counts = {}
        out = self.stages[Signal.LOGS].run(Batch.from_message(Signal.LOGS, request))
        self._tally()
        if out is None:
            return line
        message = out.message
        assert hasattr(message, "resource_logs")
        body: str = message.resource_logs[0].scope_logs[0].log_records[0].body.string_value
        return body.encode()

    def run(self, data: bytes) -> tuple[list[bytes], list[str]]:
        """Redacted output lines and one error per line that could not be read."""
        errors: list[str] = []
        signal = _otlp_signal(data)
        if signal is not None:
            try:
                orjson.loads(data)
            except orjson.JSONDecodeError:
                pass  # not one document: NDJSON below
            else:
                try:
                    return [self.request(signal, data)], errors
                except (BadInputError, RedactionError) as exc:
                    return [], [str(exc)]
        out: list[bytes] = []
        for n, line in enumerate(_lines(data), 1):
            line_signal = _otlp_signal(line)
            # a refused line (fail closed) is left out, as an unreadable one is
            try:
                out.append(self.text(line) if line_signal is None
                           else self.request(line_signal, line))
            except (BadInputError, RedactionError) as exc:
                errors.append(f"line {n}: {exc}")
        return out, errors


def _lines(data: bytes) -> Iterable[bytes]:
    return data.split(b"\n")[:-1] if data.endswith(b"\n") else data.split(b"\n")
