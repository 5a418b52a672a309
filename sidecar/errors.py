"""One error root. Exporters classify failures as permanent or retryable; the shared
export layer decides what to do with each kind (OpenTelemetry Collector's consumererror)."""

from __future__ import annotations

from dataclasses import dataclass


class SidecarError(Exception):
    """Root of every error the daemon raises on purpose."""


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    source: str  # file name, "--set", or "<defaults>"
    path: str  # dotted key path, e.g. "exporters.dd.api_key"
    message: str

    def __str__(self) -> str:
        where = f"{self.source}: {self.path}" if self.path else self.source
        return f"{where}: {self.message}"


class ConfigError(SidecarError):
    """Every problem found in a configuration, reported at once."""

    def __init__(self, problems: list[ConfigProblem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class StartupError(SidecarError):
    """A component could not start (port in use, unwritable path). The message names the setting."""


class PermanentError(SidecarError):
    """Sending again will not help (400, 401, 413, INVALID_ARGUMENT...): drop and count."""


class RetryableError(SidecarError):
    """Sending again may help (429, 503, UNAVAILABLE, disconnect); `retry_after`: peer's hint."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PipelineFullError(SidecarError):
    """Backpressure: the pipeline cannot take this batch now. Receivers answer
    RESOURCE_EXHAUSTED / 429 with a retry hint instead of dropping."""

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class StorageFullError(PipelineFullError):
    """The durable queue could not store the batch (disk full, I/O error): nothing was kept.
    Receivers answer RESOURCE_EXHAUSTED / 503 with a retry hint."""


class ProcessingError(SidecarError):
    """A processor failed on (or refused) a batch: nothing of it goes on (fail closed, so
    a batch redaction could not finish is never exported unredacted). Receivers refuse it
    with a retryable answer (gRPC UNAVAILABLE, HTTP 503 + Retry-After): the client still
    holds the data. The message names the processor and signal, never the content."""

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class BadInputError(SidecarError):
    """The client sent something we cannot decode. `reason` is a short metric label."""

    def __init__(self, message: str, reason: str = "malformed") -> None:
        super().__init__(message)
        self.reason = reason
