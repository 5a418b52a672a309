"""The shared export layer: everything that makes delivery reliable, written once.

Writing an exporter (see `sidecar/exporters/otlp.py`):

1. a config class subclassing `settings.ExporterSettings` with `type: Literal["name"]`;
2. a `chain.EncodingSender`: `limits(signal)` (the peer's limits on one encoded body,
   `body.BodyLimits`), `encode(batch, limits) -> body.Body` (pure CPU), `push(batch, body,
   data) -> rejected items` raising `errors.PermanentError` /
   `errors.RetryableError(retry_after=...)` (`http.post` with the peer's
   `http.StatusRules` for HTTP peers; reading a 2xx body, such as an OTLP partial success,
   is the sender's), `send(batch)` as `chain.send_once`, `start()`, `close()`,
   `describe()`. (A plain `chain.Sender` with `send(batch)` sends OTLP bytes as they are.)
3. `create(name, settings, ctx)` returning `ExportChain(name, settings, sender)`, registered
   with `component.register_exporter(ExporterFactory("name", Config, create))`, and an
   import in `sidecar/exporters/__init__.py`.

Queueing (`queue`), batching and splitting (`batcher`), measuring the encoded body and
cutting a batch whose body is over the sender's limits, compression (`compression`, per
the `compression` setting, once per request), retries with the same bytes and wait hints
(`retry`), per-attempt timeouts, metrics and shutdown draining (`chain`) come for free.
"""
