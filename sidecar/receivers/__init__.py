"""Built-in receiver types. Importing this package registers each one by type name, which
is also its section under `receivers:` in the config."""

from sidecar.receivers import ndjson, otlp

__all__ = ["ndjson", "otlp"]
