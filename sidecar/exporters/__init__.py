"""Built-in exporter types. Importing this package registers each one by type name."""

from sidecar.exporters import file, honeycomb, jaeger, otlp

__all__ = ["file", "honeycomb", "jaeger", "otlp"]
