"""A span read as its attributes only, for the cost processor's full path (the spans it
does not read from sidecar/_spanwalk.c's walk alone: dialect names to add)."""

from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import Message


def _span_view() -> type[Message]:
    """A Span read as its attributes only, as a map from key to the serialized AnyValue
    (a KeyValue is wire-identical to a map entry), built by the parser in C: looking up a
    few keys costs less than walking every attribute through the message wrappers. A map
    keeps the last of duplicate keys; the caller compares counts to catch those."""
    field = descriptor_pb2.FieldDescriptorProto
    file = descriptor_pb2.FileDescriptorProto(name="sidecar_span_view.proto",
                                              package="sidecar.span_view", syntax="proto3")
    view = file.message_type.add(name="Span")
    entry = view.nested_type.add(name="AttributesEntry")
    entry.field.add(name="key", number=1, label=field.LABEL_OPTIONAL, type=field.TYPE_STRING)
    entry.field.add(name="value", number=2, label=field.LABEL_OPTIONAL, type=field.TYPE_BYTES)
    entry.options.map_entry = True
    # Span.attributes = 9; every other field is kept as an unknown field and not read
    view.field.add(name="attributes", number=9, label=field.LABEL_REPEATED,
                   type=field.TYPE_MESSAGE, type_name=".sidecar.span_view.Span.AttributesEntry")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("sidecar.span_view.Span"))


SpanView = _span_view()
