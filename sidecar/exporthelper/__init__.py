"""The shared export layer: everything that makes delivery reliable, written once.

Writing an exporter (see `sidecar/exporters/otlp.py`):

1. a config class subclassing `settings.ExporterSettings` with `type: Literal["name"]`;
2. a `chain.Sender`: `start()`, `send(batch) -> rejected items` raising
   `errors.PermanentError` / `errors.RetryableError(retry_after=...)` (use `http.post` or
   `http.classify` for HTTP peers), `close()`, `describe()`;
3. `create(name, settings, ctx)` returning `ExportChain(name, settings, sender)`, registered
   with `component.register_exporter(ExporterFactory("name", Config, create))`, and an
   import in `sidecar/exporters/__init__.py`.

Queueing (`queue`), batching and splitting (`batcher`), retries and wait hints (`retry`),
per-attempt timeouts, metrics and shutdown draining (`chain`) come for free.
"""
