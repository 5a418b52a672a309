"""The daemon's own logs: JSON lines (orjson) by default, human-readable text on request."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from typing import Literal

import orjson

LogFormat = Literal["json", "text"]

# attributes every LogRecord has; anything else came from `extra=` and is a field
_STANDARD = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        event: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        event.update((k, v) for k, v in record.__dict__.items() if k not in _STANDARD)
        if record.exc_info:
            event["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(event, default=str).decode()


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s%(fields)s")

    def format(self, record: logging.LogRecord) -> str:
        fields = {k: v for k, v in record.__dict__.items() if k not in _STANDARD}
        record.fields = "".join(f" {k}={v}" for k, v in fields.items()) if fields else ""
        return super().format(record)


class MaskingFormatter(logging.Formatter):
    """Another formatter's output with the configured secrets masked: whatever a log call,
    an exception message or a traceback says, a configured key never reaches stderr."""

    def __init__(self, inner: logging.Formatter, mask: Callable[[str], str]) -> None:
        super().__init__()
        self._inner = inner
        self._mask = mask

    def format(self, record: logging.LogRecord) -> str:
        return self._mask(self._inner.format(record))


def setup_logging(fmt: LogFormat = "json", level: str = "info",
                  mask: Callable[[str], str] | None = None) -> None:
    handler = logging.StreamHandler(sys.stderr)
    formatter: logging.Formatter = JsonFormatter() if fmt == "json" else TextFormatter()
    if mask is not None:
        formatter = MaskingFormatter(formatter, mask)
        # a crash's traceback goes through the same mask instead of Python's raw print
        sys.excepthook = lambda kind, value, tb: logging.getLogger("sidecar").critical(
            "the daemon crashed", exc_info=(kind, value, tb))
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # our own diagnostics matter; third-party chatter at INFO does not
    for noisy in ("aiohttp.access", "grpc", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
