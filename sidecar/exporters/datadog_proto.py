"""The generated Datadog trace payload module (`make protos` builds it from
protos/datadog_trace.proto into sidecar/_proto/), imported on first use: an install
without it (a plain `pip install .`, which does not run protoc) still runs every other
exporter, and `type: datadog` with `mode: native` is a config error naming the fix."""

from __future__ import annotations

import functools
import importlib
from types import ModuleType

MODULE = "sidecar._proto.datadog_trace_pb2"


@functools.cache
def load() -> ModuleType:
    """The module; ImportError with what to run when it was not built."""
    try:
        return importlib.import_module(MODULE)
    except ImportError as exc:
        raise ImportError(f"{MODULE} is not built: run `make protos` (grpcio-tools compiles "
                          "protos/datadog_trace.proto)") from exc


SKETCH_MODULE = "sidecar._proto.datadog_sketch_pb2"


@functools.cache
def load_sketch() -> ModuleType:
    """The DDSketch module (protos/datadog_sketch.proto) for APM stats summaries."""
    try:
        return importlib.import_module(SKETCH_MODULE)
    except ImportError as exc:
        raise ImportError(f"{SKETCH_MODULE} is not built: run `make protos` (grpcio-tools "
                          "compiles protos/datadog_sketch.proto)") from exc
