"""Canonical gen_ai.* names added for the OpenInference, OpenLLMetry and Vercel AI SDK names
(the OTel Collector's genainormalizer mappings), through the cost processor. Expected
values are written out here by hand."""

from __future__ import annotations

import json

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from sidecar.model import Batch, Signal
from sidecar.pipeline.stage import Stage
from sidecar.processors.llm_cost import CostSettings, LlmCost
from sidecar.sample import AttrValue, attrs
from tests.unit.processors.cost_helpers import attr
from tests.unit.processors.test_llm_cost import NOW, request

SETTINGS = CostSettings.model_validate({"prices": [
    {"model": "house-llama", "input": "1", "output": "2"}]})


def span(values: dict[str, AttrValue], name: str = "span") -> Span:
    return Span(trace_id=b"n" * 16, span_id=b"s" * 8, name=name, start_time_unix_nano=NOW,
                end_time_unix_nano=NOW + 5, attributes=attrs(values))


def run(*spans: Span) -> list[Span]:
    out = Stage(Signal.TRACES, [LlmCost(SETTINGS)]).run(Batch.from_bytes(
        Signal.TRACES, request("svc", *spans).SerializeToString()))
    assert out is not None
    message = out.message
    assert isinstance(message, ExportTraceServiceRequest)
    return list(message.resource_spans[0].scope_spans[0].spans)


def test_an_openinference_llm_span_gets_operation_conversation_and_json_messages() -> None:
    (llm,) = run(span({
        "openinference.span.kind": "LLM", "llm.model_name": "house-llama",
        "llm.provider": "vllm", "llm.token_count.prompt": 1000,
        "llm.token_count.completion": 100, "session.id": "conv-7",
        "llm.input_messages.0.message.role": "system",
        "llm.input_messages.0.message.content": "Be brief.",
        "llm.input_messages.1.message.role": "user",
        "llm.input_messages.1.message.content": "Weather in Oslo?",
        "llm.input_messages.2.message.role": "tool",
        "llm.input_messages.2.message.tool_call_id": "call_1",
        "llm.input_messages.2.message.content": "-3C",
        "llm.output_messages.0.message.role": "assistant",
        "llm.output_messages.0.message.tool_calls.0.tool_call.id": "call_2",
        "llm.output_messages.0.message.tool_calls.0.tool_call.function.name": "forecast",
        "llm.output_messages.0.message.tool_calls.0.tool_call.function.arguments":
            '{"city": "Oslo", "days": 2}',
    }))
    assert attr(llm, "gen_ai.operation.name") == "chat"
    assert attr(llm, "gen_ai.request.model") == "house-llama"
    assert attr(llm, "gen_ai.conversation.id") == "conv-7"
    assert json.loads(str(attr(llm, "gen_ai.input.messages"))) == [
        {"role": "system", "parts": [{"type": "text", "content": "Be brief."}]},
        {"role": "user", "parts": [{"type": "text", "content": "Weather in Oslo?"}]},
        {"role": "tool", "parts": [{"type": "tool_call_response", "id": "call_1",
                                    "response": "-3C"}]}]
    assert json.loads(str(attr(llm, "gen_ai.output.messages"))) == [
        {"role": "assistant", "parts": [{"type": "tool_call", "id": "call_2",
                                         "name": "forecast",
                                         "arguments": {"city": "Oslo", "days": 2}}]}]
    assert attr(llm, "gen_ai.usage.cost") == (1000 * 1 + 100 * 2) / 1e6
    assert attr(llm, "llm.input_messages.0.message.content") == "Be brief."  # kept


def test_openinference_span_kinds_become_operation_names_on_spans_without_usage() -> None:
    call, tool, chain, retriever = run(
        span({"openinference.span.kind": "LLM", "llm.model_name": "house-llama",
              "llm.token_count.prompt": 10}),
        span({"openinference.span.kind": "TOOL", "tool.name": "forecast",
              "tool.description": "Weather forecast", "tool_call.id": "call_2"}),
        span({"openinference.span.kind": "CHAIN", "agent.name": "planner"}),
        span({"openinference.span.kind": "retriever"}))
    assert attr(tool, "gen_ai.operation.name") == "execute_tool"
    assert attr(tool, "gen_ai.tool.name") == "forecast"
    assert attr(tool, "gen_ai.tool.description") == "Weather forecast"
    assert attr(tool, "gen_ai.tool.call.id") == "call_2"
    assert attr(chain, "gen_ai.operation.name") == "invoke_agent"
    assert attr(chain, "gen_ai.agent.name") == "planner"
    assert attr(retriever, "gen_ai.operation.name") == "retrieval"
    assert attr(call, "gen_ai.operation.name") == "chat"


def test_openllmetry_names_map_with_their_types() -> None:
    llm, workflow = run(
        span({"llm.request.type": "completion", "llm.request.model": "house-llama",
              "gen_ai.request.model": "house-llama", "llm.usage.prompt_tokens": 50,
              "llm.request.max_tokens": 256, "llm.request.temperature": 0.5,
              "llm.top_k": 40, "llm.response.finish_reason": "stop"}),
        span({"traceloop.span.kind": "workflow", "traceloop.entity.name": "triage",
              "traceloop.workflow.name": "triage",
              "traceloop.entity.input": '{"ticket": 1}'}))
    assert attr(llm, "gen_ai.operation.name") == "text_completion"
    assert attr(llm, "gen_ai.request.max_tokens") == 256
    assert attr(llm, "gen_ai.request.temperature") == 0.5
    assert attr(llm, "gen_ai.request.top_k") == 40
    (reasons,) = [kv.value for kv in llm.attributes
                  if kv.key == "gen_ai.response.finish_reasons"]
    assert reasons == AnyValue(array_value=ArrayValue(values=[AnyValue(string_value="stop")]))
    assert attr(workflow, "gen_ai.operation.name") == "invoke_workflow"
    assert attr(workflow, "gen_ai.agent.name") == "triage"
    assert attr(workflow, "gen_ai.input.messages") == '{"ticket": 1}'


def test_vercel_ai_sdk_settings_and_finish_reason() -> None:
    (inner,) = run(span({
        "ai.operationId": "ai.generateText.doGenerate", "ai.model.id": "house-llama",
        "ai.model.provider": "vllm.chat", "ai.usage.inputTokens": 30,
        "ai.usage.outputTokens": 3, "ai.settings.maxOutputTokens": 64,
        "ai.response.finishReason": "length", "ai.response.id": "resp_1"}))
    assert attr(inner, "gen_ai.request.max_tokens") == 64
    assert attr(inner, "gen_ai.response.id") == "resp_1"
    assert attr(inner, "gen_ai.operation.name") == "chat"


def test_canonical_names_already_there_are_kept_and_generic_names_need_openinference() -> None:
    native, plain = run(
        span({"openinference.span.kind": "LLM", "gen_ai.operation.name": "chat",
              "llm.model_name": "house-llama", "llm.token_count.prompt": 10,
              "session.id": "conv-1", "gen_ai.conversation.id": "conv-native"}),
        # not an OpenInference span: its session.id and tool.name are its own
        span({"gen_ai.operation.name": "chat", "gen_ai.request.model": "house-llama",
              "gen_ai.usage.input_tokens": 5, "session.id": "s-1", "tool.name": "x"}))
    assert attr(native, "gen_ai.conversation.id") == "conv-native"  # written once, kept
    assert attr(native, "gen_ai.operation.name") == "chat"
    assert attr(plain, "gen_ai.conversation.id") is None
    assert attr(plain, "gen_ai.tool.name") is None


def test_hostile_flattened_messages_are_bounded_and_never_crash() -> None:
    deep = "[" * 100_000 + "]" * 100_000
    values: dict[str, AttrValue] = {
        "openinference.span.kind": "LLM", "llm.model_name": "house-llama",
        "llm.token_count.prompt": 1,
        "llm.output_messages.0.message.tool_calls.0.tool_call.function.arguments": deep,
        "llm.output_messages.0.message.tool_calls.0.tool_call.function.name": "f",
        "llm.input_messages.99999999999.message.content": "index too long: not read",
    }
    (out,) = run(span(values))
    (message,) = json.loads(str(attr(out, "gen_ai.output.messages")))
    assert message["parts"][0]["arguments"] == deep  # not parsed: kept as the string
    assert attr(out, "gen_ai.input.messages") is None


def test_duplicate_keys_take_the_first_as_the_rest_of_the_processor() -> None:
    dup = span({"openinference.span.kind": "TOOL", "llm.token_count.prompt": 1,
                "tool.name": "first"})
    dup.attributes.append(KeyValue(key="tool.name", value=AnyValue(string_value="second")))
    (out,) = run(dup)
    assert attr(out, "gen_ai.tool.name") == "first"
