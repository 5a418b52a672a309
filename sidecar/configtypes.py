"""Building blocks for typed config models: strict base, durations, byte sizes, endpoints."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNITS = {None: 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(b|kb|kib|mb|mib|gb|gib)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {
    None: 1, "b": 1, "kb": 1000, "kib": 1024, "mb": 1000**2, "mib": 1024**2,
    "gb": 1000**3, "gib": 1024**3,
}


class Strict(BaseModel):
    """Unknown keys are errors; models are immutable once loaded."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def _duration(value: object) -> object:
    if isinstance(value, str):
        match = _DURATION.match(value)
        if not match:
            raise ValueError(f"not a duration: {value!r} (use e.g. 500ms, 5s, 2m)")
        return float(match.group(1)) * _UNITS[match.group(2)]
    return value


def _size(value: object) -> object:
    if isinstance(value, str):
        match = _SIZE.match(value)
        if not match:
            raise ValueError(f"not a size: {value!r} (use e.g. 512KiB, 64MiB)")
        unit = match.group(2).lower() if match.group(2) else None
        return int(float(match.group(1)) * _SIZE_UNITS[unit])
    return value


def _endpoint(value: object) -> object:
    if isinstance(value, str):
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError(f"not a host:port endpoint: {value!r}")
    return value


# seconds; accepts numbers or strings such as "250ms", "5s", "2m"
Duration = Annotated[float, BeforeValidator(_duration)]
# bytes; accepts numbers or strings such as "512KiB", "64MiB"
ByteSize = Annotated[int, BeforeValidator(_size)]
# "host:port"
Endpoint = Annotated[str, BeforeValidator(_endpoint)]


def split_endpoint(endpoint: str) -> tuple[str, int]:
    host, _, port = endpoint.rpartition(":")
    return host.strip("[]"), int(port)
