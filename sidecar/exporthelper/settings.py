"""Settings every exporter shares: queue, batching, retry, timeout, compression.

An exporter's own config subclasses `ExporterSettings`, so these keys mean the same thing
for every exporter type (OpenTelemetry Collector's QueueConfig/RetryConfig/TimeoutConfig)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from sidecar.configtypes import ByteSize, Duration, Strict


class QueueSettings(Strict):
    # durable: on disk under storage.dir, survives restarts and kill -9 (README "Durable
    # queue"); memory: lost on exit (what is left at shutdown is dropped and counted)
    type: Literal["durable", "memory"] = "durable"
    max_bytes: ByteSize = Field(default=64 * 1024 * 1024, gt=0)
    # block: refuse new data (clients retry: backpressure); drop_oldest: make room by
    # dropping the oldest data not yet handed to a worker (counted, reason queue_full)
    when_full: Literal["block", "drop_oldest"] = "block"
    # how many pushes run at once for this exporter
    concurrency: int = Field(default=2, ge=1, le=64)


class BatchSettings(Strict):
    max_items: int = Field(default=2048, ge=1)
    max_bytes: ByteSize = Field(default=4 * 1024 * 1024, gt=0)
    max_delay: Duration = 0.2


class RetrySettings(Strict):
    enabled: bool = True
    initial_interval: Duration = 0.5
    max_interval: Duration = 30.0
    multiplier: float = Field(default=1.5, ge=1.0)
    jitter: float = Field(default=0.5, ge=0.0, le=1.0)
    # give up on one batch after this long (0 = retry until shutdown)
    max_elapsed: Duration = 300.0


class ExporterSettings(Strict):
    """Base of every exporter config; `type` selects the factory."""

    type: str
    timeout: Duration = 10.0
    compression: Literal["gzip", "none"] = "gzip"
    queue: QueueSettings = QueueSettings()
    batch: BatchSettings = BatchSettings()
    retry: RetrySettings = RetrySettings()


class TlsSettings(Strict):
    """Client TLS. `insecure: true` sends plaintext even to an https:// endpoint."""

    insecure: bool = False
    ca_file: Path | None = None  # trust this CA bundle instead of the system store
    cert_file: Path | None = None  # client certificate (mTLS), with key_file
    key_file: Path | None = None
    insecure_skip_verify: bool = False  # encrypt but do not check the peer: tests only

    @model_validator(mode="after")
    def _pair(self) -> TlsSettings:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        return self
