"""Built-in exporter types. Importing this package registers each one by type name."""
