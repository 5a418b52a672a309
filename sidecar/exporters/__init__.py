"""Built-in exporter types. Importing this package registers each one by type name."""

from sidecar.exporters import datadog, file, honeycomb, jaeger, otlp

__all__ = ["datadog", "file", "honeycomb", "jaeger", "otlp"]
