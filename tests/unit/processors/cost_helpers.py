"""Helpers shared by the cost processor's tests."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from opentelemetry.proto.common.v1.common_pb2 import KeyValue

from tests.helpers.otlp import py_value


class HasAttributes(Protocol):
    @property
    def attributes(self) -> Iterable[KeyValue]: ...


def attr(item: HasAttributes, key: str) -> object:
    """The value of `key` on a span or log record (None when absent); written at most once."""
    values = [kv.value for kv in item.attributes if kv.key == key]
    if not values:
        return None
    assert len(values) == 1, f"{key} written twice"
    return py_value(values[0])
