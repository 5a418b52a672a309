"""Log records that carry a model call's usage are priced like spans."""

from __future__ import annotations

import time
import uuid

import orjson
import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue, KeyValueList
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs, ScopeLogs
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from sidecar.model import Batch, Signal, Work
from sidecar.pipeline.stage import Stage
from sidecar.processors.llm_cost import CostSettings, LlmCost
from sidecar.sample import attrs
from sidecar.telemetry.metrics import REGISTRY
from tests.unit.processors.cost_helpers import attr

NOW = time.time_ns()
SETTINGS = CostSettings.model_validate({"prices": [
    {"model": "house-llama", "input": "0.5", "output": "1.5", "cache_read": "0.05"}]})


def kvlist(values: dict[str, object]) -> AnyValue:
    out = KeyValueList()
    for key, value in values.items():
        if isinstance(value, dict):
            out.values.append(KeyValue(key=key, value=kvlist(value)))
        else:
            assert isinstance(value, str | int | float | bool)
            out.values.extend(attrs({key: value}))
    return AnyValue(kvlist_value=out)


def logs(service: str, *records: LogRecord) -> ExportLogsServiceRequest:
    return ExportLogsServiceRequest(resource_logs=[ResourceLogs(
        resource=Resource(attributes=attrs({"service.name": service})),
        scope_logs=[ScopeLogs(log_records=list(records))])])


def run(request: ExportLogsServiceRequest) -> list[LogRecord]:
    work = Work(Signal.LOGS, request.SerializeToString())
    LlmCost(SETTINGS).process(work)
    message = work.message
    assert isinstance(message, ExportLogsServiceRequest)
    return list(message.resource_logs[0].scope_logs[0].log_records)


def test_a_pino_json_line_with_openai_usage_is_priced() -> None:
    service = f"svc-{uuid.uuid4().hex[:8]}"
    line = orjson.dumps({"level": 30, "time": 1, "msg": "llm call", "model": "house-llama",
                         "tenantId": "acme", "usage": {
                             "prompt_tokens": 3000, "completion_tokens": 200,
                             "total_tokens": 3200,
                             "prompt_tokens_details": {"cached_tokens": 1000}}}).decode()
    (out,) = run(logs(service, LogRecord(time_unix_nano=NOW,
                                         body=AnyValue(string_value=line))))
    want = (2_000 * 0.5 + 1_000 * 0.05 + 200 * 1.5) / 1e6
    assert attr(out, "gen_ai.usage.cost") == pytest.approx(want)
    assert attr(out, "gen_ai.usage.cost.source") == "local"
    assert out.body.string_value == line  # the line itself is untouched
    labels = {"provider": "unknown", "model": "house-llama", "service": service,
              "agent": "unknown", "tenant": "acme"}
    assert REGISTRY.get_sample_value("sidecar_llm_cost_usd_total", labels) == \
        pytest.approx(want)


def test_a_structured_body_with_prompt_and_total_tokens() -> None:
    (out,) = run(logs("svc", LogRecord(time_unix_nano=NOW, body=kvlist({
        "model": "house-llama", "promptTokens": 1000, "totalTokens": 1100}))))
    assert attr(out, "gen_ai.usage.cost") == pytest.approx((1000 * 0.5 + 100 * 1.5) / 1e6)


def test_raw_anthropic_usage_in_attributes_counts_the_cache_as_input() -> None:
    record = LogRecord(time_unix_nano=NOW, body=AnyValue(string_value="claude call"))
    record.attributes.extend(attrs({"model": "claude-sonnet-4-20250514",
                                    "provider": "anthropic"}))
    record.attributes.append(KeyValue(key="usage", value=kvlist({
        "input_tokens": 1_000, "output_tokens": 500, "cache_read_input_tokens": 8_000,
        "cache_creation_input_tokens": 1_000})))
    (out,) = run(logs("svc", record))
    # 10 000 input incl. 8 000 read + 1 000 write, 500 out: the shared doc's worked figure
    assert attr(out, "gen_ai.usage.cost") == pytest.approx(0.01665, rel=1e-12)
    assert attr(out, "sidecar.cost.input_adjusted") is True


def test_the_operation_details_event_and_plain_logs_are_not_priced() -> None:
    details = LogRecord(time_unix_nano=NOW, event_name="gen_ai.client.inference.operation.details",
                        attributes=attrs({"gen_ai.request.model": "house-llama",
                                          "gen_ai.usage.input_tokens": 10}))
    plain = LogRecord(time_unix_nano=NOW, body=AnyValue(string_value='{"tokens": "none"}'))
    payload = logs("svc", details, plain).SerializeToString()
    out = Stage(Signal.LOGS, [LlmCost(SETTINGS)]).run(Batch(Signal.LOGS, 2, payload))
    assert out is not None
    assert out.payload is payload  # nothing edited, nothing re-serialised
