"""`sidecar tail`: a live, coloured view of what the daemon exports (after redaction and
cost), read from the admin server's `GET /tail` NDJSON feed: log records one a line with
level colours, spans as a tree per trace with durations and model cost. The development-time
replacement for pino-pretty.

Rendering is pure (`Renderer.feed` takes one feed line, returns the text lines to print), so
tests check it without a terminal; `run` does the HTTP and the printing."""

from __future__ import annotations

import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, TextIO

import orjson

RESET: Final = "\x1b[0m"
_DIM: Final = "\x1b[2m"
_BOLD: Final = "\x1b[1m"
_RED: Final = "\x1b[31m"
_GREEN: Final = "\x1b[32m"
_YELLOW: Final = "\x1b[33m"
_BLUE: Final = "\x1b[34m"
_MAGENTA: Final = "\x1b[35m"
_CYAN: Final = "\x1b[36m"

# (lowest OTLP severity number, label, colour)
_LEVELS: Final = ((21, "FATAL", _BOLD + _MAGENTA), (17, "ERROR", _RED), (13, "WARN ", _YELLOW),
                  (9, "INFO ", _GREEN), (5, "DEBUG", _BLUE), (1, "TRACE", _DIM))
_COST_KEYS: Final = ("gen_ai.usage.cost", "llm.cost.total")
_MODEL_KEYS: Final = ("gen_ai.response.model", "gen_ai.request.model", "llm.model_name")
_TOKEN_KEYS: Final = (("in", "gen_ai.usage.input_tokens"), ("out", "gen_ai.usage.output_tokens"))
_MAX_ATTRS: Final = 8
_MAX_VALUE: Final = 120
_TRACE_WAIT: Final = 3.0  # seconds without a root span before a trace is shown as it is
_ROOT_GRACE: Final = 0.5  # seconds after the root span before its trace is shown
_MAX_TRACES: Final = 1000  # traces waiting for their root; the oldest is shown beyond


def _clock(ns: int) -> str:
    if ns <= 0:
        return "--:--:--.---"
    return datetime.fromtimestamp(ns / 1e9).strftime("%H:%M:%S.%f")[:-3]


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else orjson.dumps(value).decode()
    text = text.replace("\n", "\\n")
    return text if len(text) <= _MAX_VALUE else text[:_MAX_VALUE] + "…"


def _duration(ns: int) -> str:
    if ns < 0:
        return "?"
    if ns >= 1_000_000_000:
        return f"{ns / 1e9:.2f} s"
    return f"{ns / 1e6:.1f} ms"


@dataclass
class Renderer:
    color: bool = True
    clock: Callable[[], float] = time.monotonic
    traces: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    last_seen: dict[str, float] = field(default_factory=dict)
    root_seen: dict[str, float] = field(default_factory=dict)

    def paint(self, code: str, text: str) -> str:
        return f"{code}{text}{RESET}" if self.color else text

    def feed(self, raw: bytes) -> list[str]:
        """Text lines for one line of the feed (and for traces that waited long enough)."""
        out: list[str] = []
        raw = raw.strip()
        if raw:
            try:
                item = orjson.loads(raw)
            except orjson.JSONDecodeError:
                item = None
            if not isinstance(item, dict):
                text = _short(raw.decode(errors="replace"))
                out.append(self.paint(_RED, f"(unreadable feed line: {text})"))
            elif "dropped" in item:
                out.append(self.paint(_YELLOW, f"… {item['dropped']} items dropped so far: this "
                                            "view fell behind (the pipeline did not wait)"))
            elif "subscribed" in item:
                out.append(self.paint(_DIM, f"tailing {', '.join(item['subscribed'])} "
                                         "(Ctrl-C to stop)"))
            elif item.get("signal") == "logs":
                out.append(self.log_line(item))
            elif item.get("signal") == "traces":
                out.extend(self._span(item))
        out.extend(self.expire())
        return out

    def log_line(self, item: dict[str, Any]) -> str:
        number = int(item.get("severity_number") or 0)
        label, colour = (item.get("severity") or "-----")[:5].upper().ljust(5), ""
        for bound, name, code in _LEVELS:
            if number >= bound:
                label, colour = name, code
                break
        body = item.get("body")
        parts = [self.paint(_DIM, _clock(int(item.get("time") or 0))),
                 self.paint(colour, label) if colour else label]
        if item.get("service"):
            parts.append(self.paint(_CYAN, str(item["service"])))
        parts.append(self.paint(_BOLD, _short(body)) if body not in (None, "") else "")
        attrs = dict(item.get("attributes") or {})
        parts.extend(self._cost(attrs))
        for key, value in list(attrs.items())[:_MAX_ATTRS]:
            parts.append(f"{self.paint(_DIM, key + '=')}{_short(value)}")
        if len(attrs) > _MAX_ATTRS:
            parts.append(self.paint(_DIM, f"(+{len(attrs) - _MAX_ATTRS})"))
        if item.get("trace_id"):
            parts.append(self.paint(_DIM, f"trace={item['trace_id'][:8]}"))
        return " ".join(p for p in parts if p)

    def _cost(self, attrs: dict[str, Any]) -> list[str]:
        """Model, tokens and cost, taken out of `attrs` to be shown first."""
        shown: list[str] = []
        for key in _MODEL_KEYS:
            if key in attrs:
                shown.append(self.paint(_MAGENTA, str(attrs.pop(key))))
                for other in _MODEL_KEYS:
                    attrs.pop(other, None)
                break
        for label, key in _TOKEN_KEYS:
            if key in attrs:
                shown.append(f"{label} {attrs.pop(key)}")
        for key in _COST_KEYS:
            cost = attrs.pop(key, None)
            if isinstance(cost, int | float):
                shown.append(self.paint(_BOLD + _YELLOW, f"${cost:.4f}"))
                attrs.pop("gen_ai.usage.cost.currency", None)
                break
        return shown

    def _span(self, span: dict[str, Any]) -> list[str]:
        trace_id = str(span.get("trace_id", ""))
        spans = self.traces.setdefault(trace_id, [])
        spans.append(span)
        now = self.clock()
        self.last_seen[trace_id] = now
        if not span.get("parent_span_id"):
            # shown once the spans exported with it (or just after it) are in too
            self.root_seen[trace_id] = now
        if len(self.traces) > _MAX_TRACES:
            return self._show(next(iter(self.traces)))
        return []

    def expire(self, everything: bool = False) -> list[str]:
        now = self.clock()
        out: list[str] = []
        for trace_id in [t for t, seen in self.last_seen.items()
                         if everything or now - seen >= _TRACE_WAIT
                         or now - self.root_seen.get(t, now + 1) >= _ROOT_GRACE]:
            out.extend(self._show(trace_id))
        return out

    def _show(self, trace_id: str) -> list[str]:
        spans = self.traces.pop(trace_id, [])
        self.last_seen.pop(trace_id, None)
        self.root_seen.pop(trace_id, None)
        if not spans:
            return []
        ids = {s.get("span_id") for s in spans}
        children: dict[str, list[dict[str, Any]]] = {}
        roots = []
        for span in sorted(spans, key=lambda s: int(s.get("start") or 0)):
            parent = span.get("parent_span_id") or ""
            if parent and parent in ids:
                children.setdefault(parent, []).append(span)
            else:
                roots.append(span)
        first = roots[0]
        total = max(int(s.get("end") or 0) for s in spans) - min(
            int(s.get("start") or 0) for s in spans)
        cost = sum(float(s["attributes"].get("gen_ai.usage.cost") or 0)
                   for s in spans if isinstance(s.get("attributes"), dict)
                   and isinstance(s["attributes"].get("gen_ai.usage.cost"), int | float))
        head = [self.paint(_DIM, _clock(int(first.get("start") or 0))),
                self.paint(_BOLD, f"trace {trace_id[:16]}"),
                self.paint(_CYAN, str(first.get("service") or "")),
                f"{len(spans)} spans", _duration(total)]
        if cost:
            head.append(self.paint(_BOLD + _YELLOW, f"${cost:.4f}"))
        if not any(not s.get("parent_span_id") for s in spans):
            head.append(self.paint(_DIM, "(root not seen)"))
        out = [" ".join(p for p in head if p)]

        def walk(span: dict[str, Any], prefix: str, last: bool) -> None:
            branch = "└─ " if last else "├─ "
            name = str(span.get("name") or "?")
            error = span.get("status") == 2
            label = self.paint(_RED, name + " ✗") if error else name
            duration = _duration(int(span.get("end") or 0) - int(span.get("start") or 0))
            parts = [prefix + branch + label, self.paint(_DIM, duration)]
            attrs = dict(span.get("attributes") or {})
            parts.extend(self._cost(attrs))
            if error and span.get("status_message"):
                parts.append(self.paint(_RED, _short(span["status_message"])))
            out.append("  " + " ".join(parts))
            kids = children.get(str(span.get("span_id")), [])
            for index, child in enumerate(kids):
                walk(child, prefix + ("   " if last else "│  "), index == len(kids) - 1)

        for index, root in enumerate(roots):
            walk(root, "", index == len(roots) - 1)
        return out


def feed_url(admin: str, signals: tuple[str, ...], filter_expr: str | None) -> str:
    base = admin if admin.startswith(("http://", "https://")) else f"http://{admin}"
    query = [("signal", s) for s in signals]
    if filter_expr:
        query.append(("filter", filter_expr))
    return f"{base.rstrip('/')}/tail?{urllib.parse.urlencode(query)}"


def run(url: str, color: bool, out: TextIO = sys.stdout, token: str | None = None) -> int:
    """Print the feed until it ends or Ctrl-C. Exit code: 0, or 1 when the daemon cannot
    be reached or refuses the request."""
    renderer = Renderer(color=color)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        request = urllib.request.Request(url, headers=headers)
        with urllib.request.urlopen(request, timeout=30) as response:
            for raw in response:
                for text in renderer.feed(raw):
                    print(text, file=out, flush=True)
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")
        print(f"error: {url}: {exc.code} {detail}", file=sys.stderr)
        return 1
    except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
        reason = getattr(exc, "reason", exc)
        print(f"error: no daemon admin server at {url.split('/tail')[0]} ({reason}): "
              "start `sidecar run` first", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    else:
        print(renderer.paint(_DIM, "(the daemon closed the feed)"), file=out, flush=True)
    for text in renderer.expire(everything=True):
        print(text, file=out, flush=True)
    return 0
