"""Canonical `gen_ai.*` names for the dialect names on a span, as the OpenTelemetry
Collector's `genainormalizer` processor maps them (contrib, processor/genainormalizerprocessor:
its OpenInference and OpenLLMetry tables), plus the Vercel AI SDK's `ai.*` names.

A canonical name is only added when the span lacks it (the processor's default, no
overwrite); the dialect names stay. Values are copied as serialized (ints stay ints,
arrays stay arrays), except the operation: OpenInference span kinds and OpenLLMetry
request types and span kinds are folded onto `gen_ai.operation.name` values, and a single
finish reason becomes the one-element array `gen_ai.response.finish_reasons` is. OpenInference's
flattened `llm.{input,output}_messages.N.message.*` are rebuilt into the semconv JSON
messages (`[{"role": …, "parts": [{"type": "text", "content": …}]}]`).

Usage counts, models and providers are not here: the cost processor writes those from its
own precedence rules (genai_usage.py). OpenLIT writes `gen_ai.*` names itself."""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Callable, Iterable, Mapping

from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue

from sidecar.processors import wire

OPERATION = "gen_ai.operation.name"
FINISH_REASONS = "gen_ai.response.finish_reasons"
INPUT_MESSAGES = "gen_ai.input.messages"
OUTPUT_MESSAGES = "gen_ai.output.messages"

OPENINFERENCE_KIND = "openinference.span.kind"
# dialect key -> canonical key; per canonical key the first dialect key present wins
RENAMES: dict[str, str] = {
    # OpenInference (read only on spans that say they are: `session.id` or `tool.name`
    # alone are too common to mean OpenInference's)
    OPENINFERENCE_KIND: OPERATION,
    "embedding.model_name": "gen_ai.request.model",
    "reranker.model_name": "gen_ai.request.model",
    "llm.input_messages": INPUT_MESSAGES,
    "llm.output_messages": OUTPUT_MESSAGES,
    "tool.name": "gen_ai.tool.name",
    "tool.description": "gen_ai.tool.description",
    "tool_call.function.arguments": "gen_ai.tool.call.arguments",
    "tool_call.id": "gen_ai.tool.call.id",
    "agent.name": "gen_ai.agent.name",
    "session.id": "gen_ai.conversation.id",
    # OpenLLMetry (Traceloop)
    "llm.request.type": OPERATION,
    "traceloop.span.kind": OPERATION,
    "llm.request.max_tokens": "gen_ai.request.max_tokens",
    "llm.request.temperature": "gen_ai.request.temperature",
    "llm.request.top_p": "gen_ai.request.top_p",
    "llm.top_k": "gen_ai.request.top_k",
    "llm.frequency_penalty": "gen_ai.request.frequency_penalty",
    "llm.presence_penalty": "gen_ai.request.presence_penalty",
    "llm.chat.stop_sequences": "gen_ai.request.stop_sequences",
    "llm.request.functions": "gen_ai.tool.definitions",
    "llm.response.finish_reason": FINISH_REASONS,
    "llm.response.stop_reason": FINISH_REASONS,
    "traceloop.entity.name": "gen_ai.agent.name",
    "traceloop.entity.input": INPUT_MESSAGES,
    "traceloop.entity.output": OUTPUT_MESSAGES,
    # Vercel AI SDK (its inner doGenerate spans carry gen_ai.* already; these are the rest)
    "ai.response.id": "gen_ai.response.id",
    "ai.response.finishReason": FINISH_REASONS,
    "ai.settings.maxOutputTokens": "gen_ai.request.max_tokens",
    "ai.settings.maxTokens": "gen_ai.request.max_tokens",
    "ai.settings.temperature": "gen_ai.request.temperature",
    "ai.settings.topP": "gen_ai.request.top_p",
    "ai.settings.topK": "gen_ai.request.top_k",
    "ai.settings.frequencyPenalty": "gen_ai.request.frequency_penalty",
    "ai.settings.presencePenalty": "gen_ai.request.presence_penalty",
    "ai.settings.stopSequences": "gen_ai.request.stop_sequences",
    "ai.toolCall.name": "gen_ai.tool.name",
    "ai.toolCall.id": "gen_ai.tool.call.id",
    "ai.toolCall.args": "gen_ai.tool.call.arguments",
}
SOURCES = frozenset(RENAMES)
_ORDER = {key: n for n, key in enumerate(RENAMES)}
_OPENINFERENCE = frozenset(("embedding.model_name", "reranker.model_name", "llm.input_messages",
                            "llm.output_messages", "tool.name", "tool.description",
                            "tool_call.function.arguments", "tool_call.id", "agent.name",
                            "session.id"))
# values folded onto gen_ai.operation.name, lowercased first; others are copied as they are
OPERATION_VALUES: dict[str, dict[str, str]] = {
    "openinference.span.kind": {
        "llm": "chat", "embedding": "embeddings", "chain": "invoke_agent",
        "retriever": "retrieval", "reranker": "retrieval", "tool": "execute_tool",
        "agent": "invoke_agent", "prompt": "text_completion"},
    "traceloop.span.kind": {"workflow": "invoke_workflow", "task": "invoke_agent",
                            "agent": "invoke_agent", "tool": "execute_tool"},
    "llm.request.type": {"completion": "text_completion", "chat": "chat", "rerank": "retrieval",
                         "embedding": "embeddings"},
}
# span bytes holding one of these may carry OpenInference's flattened messages
MESSAGE_NEEDLE = b"_messages."
_MESSAGE_KEY = re.compile(r"llm\.(input|output)_messages\.(\d{1,6})\.message\.(.+)\Z")
_TOOL_CALL = re.compile(r"tool_calls\.(\d{1,6})\.tool_call\.(id|function\.name|"
                        r"function\.arguments)\Z")
# at most this many flattened message attributes are read per span, and tool-call
# arguments up to this size are parsed as JSON (else kept as the string)
MAX_MESSAGE_KEYS = 2048
MAX_ARGUMENTS = 64 * 1024

Decode = Callable[[bytes], object]


def _as_string(value: object) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


def _string_array(value: str) -> bytes:
    array = ArrayValue(values=[AnyValue(string_value=value)])
    return AnyValue(array_value=array).SerializeToString()


def effective(sources: frozenset[str]) -> frozenset[str]:
    """The dialect names `added` reads among a span's `sources` (OpenInference's generic
    names only beside `openinference.span.kind`)."""
    return sources if OPENINFERENCE_KIND in sources else sources - _OPENINFERENCE


def added(values: Mapping[str, bytes], sources: frozenset[str], keys: Iterable[str],
          decode: Decode, skip: Iterable[str] = ()) -> list[bytes]:
    """Span attribute bytes for the canonical names the dialect names in `values` (key ->
    serialized AnyValue) stand for: `sources` are the span's keys of `RENAMES`, `keys` the
    span's keys that may be flattened messages, `skip` canonical names written elsewhere."""
    openinference = OPENINFERENCE_KIND in sources
    if not openinference:
        sources = sources - _OPENINFERENCE
        if not sources:
            return []
    out: list[bytes] = []
    done = set(skip)
    for source in sorted(sources, key=_ORDER.__getitem__):
        target = RENAMES[source]
        if target in done or target in values:
            continue
        raw = values[source]
        folds = OPERATION_VALUES.get(source)
        if folds is not None:
            value = decode(raw)
            if not isinstance(value, str) or not value:
                continue
            out.append(wire.attribute(target, folds.get(value.lower(), value)))
        elif target == FINISH_REASONS:
            value = decode(raw)
            if isinstance(value, str):
                raw = _string_array(value)
            out.append(wire.raw_attribute(target, raw))
        else:
            out.append(wire.raw_attribute(target, raw))
        done.add(target)
    for target, text in (messages(values, keys, decode) if openinference else {}).items():
        if target not in done and target not in values:
            out.append(wire.attribute(target, text))
    return out


def messages(values: Mapping[str, bytes], keys: Iterable[str], decode: Decode,
             ) -> dict[str, str]:
    """OpenInference's flattened messages rebuilt as the semconv JSON, by target key."""
    found: dict[str, dict[int, dict[str, object]]] = {}
    seen = 0
    for key in keys:
        if not key.startswith("llm.") or "_messages." not in key:
            continue
        match = _MESSAGE_KEY.match(key)
        if match is None:
            continue
        seen += 1
        if seen > MAX_MESSAGE_KEYS:
            break
        direction, index, field = match.groups()
        raw = values.get(key)
        if raw is None:
            continue
        message = found.setdefault(INPUT_MESSAGES if direction == "input" else OUTPUT_MESSAGES,
                                   {}).setdefault(int(index), {})
        text = _as_string(decode(raw))
        if field in ("role", "content", "tool_call_id"):
            message[field] = text
            continue
        call = _TOOL_CALL.match(field)
        if call is not None:
            calls = message.setdefault("tool_calls", {})
            assert isinstance(calls, dict)
            calls.setdefault(int(call.group(1)), {})[call.group(2)] = text
    return {target: json.dumps([_message(m) for _, m in sorted(by_index.items())],
                               ensure_ascii=False, separators=(",", ":"))
            for target, by_index in found.items()}


def _message(fields: dict[str, object]) -> dict[str, object]:
    role = _as_string(fields.get("role"))
    content = _as_string(fields.get("content"))
    tool_call_id = _as_string(fields.get("tool_call_id"))
    if tool_call_id:  # a tool's result
        return {"role": "tool" if role == "user" else role,
                "parts": [{"type": "tool_call_response", "id": tool_call_id,
                           "response": content}]}
    calls = fields.get("tool_calls")
    if isinstance(calls, dict) and calls:
        parts: list[dict[str, object]] = []
        for _, call in sorted(calls.items()):
            part: dict[str, object] = {"type": "tool_call"}
            if call.get("id"):
                part["id"] = call["id"]
            part["name"] = call.get("function.name", "")
            arguments = call.get("function.arguments")
            if isinstance(arguments, str) and arguments:
                part["arguments"] = arguments
                # not JSON (or nested past the parser's depth): kept as the string
                with contextlib.suppress(ValueError, RecursionError):
                    if len(arguments) <= MAX_ARGUMENTS:
                        part["arguments"] = json.loads(arguments)
            parts.append(part)
        return {"role": role, "parts": parts}
    return {"role": role, "parts": [{"type": "text", "content": content}] if content else []}
