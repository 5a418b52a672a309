"""`sidecar status`: one screen of a running daemon's state, read from its admin server.

It asks `/readyz` (open, even with `admin.auth`), then `/metrics`, `/listeners` and
`/spend` (with the bearer token when one is given): readiness and degraded components, the
endpoints bound (with the real ports, TLS and auth), accepted and refused items per
receiver, per-exporter queue, deliveries and failures, the cache's hit ratio and dollars
saved, LLM spend by model since the daemon started and today (UTC, kept across restarts).
Plain urllib: four GETs do not need an HTTP client library."""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any

from prometheus_client.parser import text_string_to_metric_families


class StatusError(Exception):
    """The admin server could not be asked (unreachable, refused the token, not Prometheus)."""


@dataclass
class Exporter:
    sent: float = 0.0
    failed: float = 0.0
    dropped: float = 0.0
    retries: float = 0.0
    queue_bytes: float = 0.0
    queue_items: float = 0.0
    queue_capacity_bytes: float = 0.0
    queue_oldest_seconds: float = 0.0  # durable queue: age of the oldest undelivered data


@dataclass
class Receiver:
    accepted: float = 0.0
    refused: float = 0.0
    bad_requests: float = 0.0


@dataclass
class Status:
    admin: str
    ready: bool
    state: str  # ready | degraded | starting or stopping | ...
    components: dict[str, str] = field(default_factory=dict)
    version: str | None = None
    receivers: dict[str, Receiver] = field(default_factory=dict)
    exporters: dict[str, Exporter] = field(default_factory=dict)
    cache_hits: float = 0.0
    cache_misses: float = 0.0
    cache_saved_usd: float = 0.0
    cache_namespaces: dict[str, dict[str, float]] = field(default_factory=dict)
    spend_usd_by_model: dict[str, float] = field(default_factory=dict)  # since start
    # GET /listeners rows: component, transport, address, and tls/auth/mode where they apply
    listeners: list[dict[str, Any]] = field(default_factory=list)
    # GET /spend: {"day": "YYYY-MM-DD", "total_usd": x, "by_model": {model: usd}}; None from
    # a daemon without the endpoint
    spend_today: dict[str, Any] | None = None
    memory_rss_bytes: float | None = None
    event_loop_lag_seconds: float | None = None

    @property
    def cache_hit_ratio(self) -> float | None:
        lookups = self.cache_hits + self.cache_misses
        return self.cache_hits / lookups if lookups else None

    def as_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["cache_hit_ratio"] = self.cache_hit_ratio
        return out


def _context(cafile: str | None, insecure: bool) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=cafile)
    if insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _get(url: str, token: str | None, context: ssl.SSLContext | None,
         timeout: float) -> tuple[int, bytes]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return int(exc.code), bytes(exc.read())
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise StatusError(f"cannot reach the admin server at {url}: {reason}") from exc


def fetch(admin: str, token: str | None = None, cafile: str | None = None,
          insecure: bool = False, timeout: float = 5.0) -> Status:
    base = admin.rstrip("/")
    context = _context(cafile, insecure) if base.startswith("https://") else None
    code, body = _get(f"{base}/readyz", None, context, timeout)
    try:
        ready = json.loads(body)
    except ValueError as exc:
        raise StatusError(f"{base}/readyz answered {code} with no JSON: is this sidecar?") from exc
    status = Status(admin=base, ready=code == 200, state=str(ready.get("status", code)),
                    components={str(k): str(v) for k, v in ready.get("components", {}).items()})
    code, body = _get(f"{base}/metrics", token, context, timeout)
    if code == 401:
        raise StatusError(f"{base}/metrics refused the request (401): give the admin token "
                          "with --token or SIDECAR_ADMIN_TOKEN")
    if code != 200:
        raise StatusError(f"{base}/metrics answered {code}")
    _summarise(status, body.decode("utf-8", "replace"))
    listeners = _json(base, "/listeners", token, context, timeout)
    if listeners is not None:
        rows = listeners.get("listeners")
        status.listeners = [r for r in rows if isinstance(r, dict)] if isinstance(
            rows, list) else []
    status.spend_today = _json(base, "/spend", token, context, timeout)
    return status


def _json(base: str, path: str, token: str | None, context: ssl.SSLContext | None,
          timeout: float) -> dict[str, Any] | None:
    """A JSON object from the admin server, or None from an older daemon (404)."""
    code, body = _get(f"{base}{path}", token, context, timeout)
    if code == 404:
        return None
    if code != 200:
        raise StatusError(f"{base}{path} answered {code}")
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise StatusError(f"{base}{path} answered with no JSON") from exc
    return data if isinstance(data, dict) else None


def _summarise(status: Status, text: str) -> None:
    receivers: dict[str, Receiver] = defaultdict(Receiver)
    exporters: dict[str, Exporter] = defaultdict(Exporter)
    namespaces: dict[str, dict[str, float]] = defaultdict(
        lambda: {"hits": 0.0, "misses": 0.0, "saved_usd": 0.0})
    spend: dict[str, float] = defaultdict(float)
    exporter_fields = {
        "sidecar_exporter_sent_items_total": "sent",
        "sidecar_exporter_send_failed_items_total": "failed",
        "sidecar_exporter_dropped_items_total": "dropped",
        "sidecar_exporter_retries_total": "retries",
        "sidecar_exporter_queue_size_bytes": "queue_bytes",
        "sidecar_exporter_queue_size_items": "queue_items",
        "sidecar_exporter_queue_capacity_bytes": "queue_capacity_bytes",
        "sidecar_queue_oldest_item_age_seconds": "queue_oldest_seconds",
    }
    receiver_fields = {
        "sidecar_receiver_accepted_items_total": "accepted",
        "sidecar_receiver_refused_items_total": "refused",
        "sidecar_receiver_bad_requests_total": "bad_requests",
    }
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name, labels, value = sample.name, sample.labels, float(sample.value)
            if name in exporter_fields:
                row = exporters[labels.get("exporter", "?")]
                attr = exporter_fields[name]
                setattr(row, attr, getattr(row, attr) + value)
            elif name in receiver_fields:
                key = f"{labels.get('receiver', '?')}/{labels.get('transport', '?')}"
                if "signal" in labels:
                    key += f" {labels['signal']}"
                recv = receivers[key]
                attr = receiver_fields[name]
                setattr(recv, attr, getattr(recv, attr) + value)
            elif name == "sidecar_cache_hits_total":
                status.cache_hits += value
                namespaces[labels.get("namespace", "?")]["hits"] += value
            elif name == "sidecar_cache_misses_total":
                status.cache_misses += value
                namespaces[labels.get("namespace", "?")]["misses"] += value
            elif name == "sidecar_cache_saved_usd_total":
                status.cache_saved_usd += value
                namespaces[labels.get("namespace", "?")]["saved_usd"] += value
            elif name == "sidecar_llm_cost_usd_total":
                spend[labels.get("model", "?")] += value
            elif name == "sidecar_build_info":
                status.version = labels.get("version")
            elif name == "sidecar_memory_rss_bytes":
                status.memory_rss_bytes = value
            elif name == "sidecar_event_loop_lag_seconds":
                status.event_loop_lag_seconds = value
    status.receivers = dict(sorted(receivers.items()))
    status.exporters = dict(sorted(exporters.items()))
    status.cache_namespaces = dict(sorted(namespaces.items()))
    status.spend_usd_by_model = dict(sorted(spend.items(), key=lambda kv: -kv[1]))


_CONTROL = dict.fromkeys([*range(0x20), 0x7F], "?")


def _text(value: object) -> str:
    """A server-given name for the terminal: model names come from spans (any client's),
    so control characters (escape sequences) are shown as `?`."""
    return str(value).translate(_CONTROL)


def _count(value: float) -> str:
    return f"{value:,.0f}"


def _usd(value: float) -> str:
    return f"${value:.6f}" if 0 < value < 0.01 else f"${value:.4f}"


def _bytes(value: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"  # pragma: no cover - the loop returns


def render(status: Status) -> str:
    lines = [f"sidecar {_text(status.version or '?')} at {status.admin}: {_text(status.state)}"]
    for component, problem in status.components.items():
        lines.append(f"  {_text(component)}: {_text(problem)}")
    extra = []
    if status.memory_rss_bytes:  # 0 without service.memory (the limiter measures it)
        extra.append(f"rss {_bytes(status.memory_rss_bytes)}")
    if status.event_loop_lag_seconds is not None:
        extra.append(f"event loop lag {status.event_loop_lag_seconds * 1000:.1f} ms")
    if extra:
        lines.append("  " + ", ".join(extra))
    if status.listeners:
        lines.append("listeners:")
    for row in status.listeners:
        address = _text(row.get("address", "?"))
        if "mode" in row:
            address += f" (mode {_text(row['mode'])})"
        security = ", ".join(f"{key} {'on' if row[key] else 'off'}"
                             for key in ("tls", "auth") if key in row)
        lines.append(f"  {_text(row.get('component', '?')):<12} "
                     f"{_text(row.get('transport', '?')):<5} "
                     f"{address}" + (f"  [{security}]" if security else ""))
    lines.append("receivers (since start):")
    if not status.receivers:
        lines.append("  none")
    busy = {k: r for k, r in status.receivers.items() if r.accepted or r.refused or r.bad_requests}
    if status.receivers and not busy:
        lines.append("  nothing received yet")
    for key, recv in busy.items():
        lines.append(f"  {_text(key):<24} accepted {_count(recv.accepted):>12}  refused "
                     f"{_count(recv.refused):>8}" + (f"  bad requests {_count(recv.bad_requests)}"
                                                     if recv.bad_requests else ""))
    lines.append("exporters:")
    if not status.exporters:
        lines.append("  none")
    for name, exp in status.exporters.items():
        fill = (f" ({exp.queue_bytes / exp.queue_capacity_bytes:.0%} of "
                f"{_bytes(exp.queue_capacity_bytes)})" if exp.queue_capacity_bytes else "")
        health = "FAILING" if exp.failed and not exp.sent else "ok"
        age = (f", oldest {exp.queue_oldest_seconds:.0f}s" if exp.queue_oldest_seconds >= 1
               else "")
        lines.append(f"  {_text(name):<16} {health:<8} queue {_count(exp.queue_items)} items, "
                     f"{_bytes(exp.queue_bytes)}{fill}{age}; sent {_count(exp.sent)}, failed "
                     f"{_count(exp.failed)}, retries {_count(exp.retries)}, dropped "
                     f"{_count(exp.dropped)}")
    ratio = status.cache_hit_ratio
    lines.append("cache: " + (f"hit ratio {ratio:.1%} ({_count(status.cache_hits)} hits, "
                              f"{_count(status.cache_misses)} misses), saved "
                              f"{_usd(status.cache_saved_usd)}" if ratio is not None
                              else "no lookups yet"))
    for ns, row in status.cache_namespaces.items():
        lookups = row["hits"] + row["misses"]
        if lookups:
            lines.append(f"  {_text(ns):<20} {row['hits'] / lookups:6.1%} of {_count(lookups)} "
                         f"lookups, saved {_usd(row['saved_usd'])}")
    today = status.spend_today
    if today is not None:
        by_model = today.get("by_model")
        by_model = by_model if isinstance(by_model, dict) else {}
        lines.append(f"LLM spend today ({_text(today.get('day', '?'))} UTC): "
                     f"{_usd(_number(today.get('total_usd')))}"
                     + ("" if by_model else ", nothing priced yet"))
        for model, usd in by_model.items():
            lines.append(f"  {_text(model):<32} {_usd(_number(usd))}")
    elif status.spend_usd_by_model:  # a daemon without /spend
        total = sum(status.spend_usd_by_model.values())
        lines.append(f"LLM spend since start: {_usd(total)}")
        for model, usd in status.spend_usd_by_model.items():
            lines.append(f"  {_text(model):<32} {_usd(usd)}")
    return "\n".join(lines)


def _number(value: object) -> float:
    return float(value) if isinstance(value, int | float) else 0.0
