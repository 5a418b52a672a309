"""Built-in exporter types. Importing this package registers each one by type name."""

from sidecar.exporters import file, otlp

__all__ = ["file", "otlp"]
