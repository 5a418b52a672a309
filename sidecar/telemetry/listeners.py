"""What the daemon listens on right now, for `GET /listeners` and `sidecar status`.

One row per endpoint actually bound: TCP with the port the kernel gave (the config may say
0), unix sockets with their mode, tailed file globs; each with whether TLS and auth are on
(None where that does not apply: a unix socket's protection is its mode, files have none).
Built from the running components and the config they run with (`Daemon.config` follows a
reload, including a receiver that fell back to its previous settings)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

from sidecar.admin import AdminServer
from sidecar.cache.server import CacheService
from sidecar.component import ReceiverComponent
from sidecar.config import Config, ListenerConfig
from sidecar.configtypes import split_endpoint
from sidecar.receivers.ndjson import LogsReceiver
from sidecar.receivers.otlp import OtlpReceiver
from sidecar.receivers.otlp_grpc import OtlpGrpcReceiver
from sidecar.receivers.otlp_http import OtlpHttpReceiver


@dataclass(frozen=True, slots=True)
class Listener:
    component: str  # e.g. otlp/grpc, logs/unix, cache, admin
    transport: str  # tcp | unix | files
    address: str  # host:port, a socket path, or the include globs
    tls: bool | None = None
    auth: bool | None = None
    mode: str | None = None  # unix sockets: the file mode, e.g. "0660"

    def as_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


def _tcp(endpoint: str, port: int | None) -> str:
    host, configured = split_endpoint(endpoint)
    host = f"[{host}]" if ":" in host else host
    return f"{host}:{configured if port is None else port}"


def _otlp(name: str, transport: str, section: ListenerConfig,
          port: int | None) -> Iterable[Listener]:
    component = f"{name}/{transport}"
    if section.endpoint is not None:
        yield Listener(component, "tcp", _tcp(section.endpoint, port),
                       section.tls is not None, section.auth is not None)
    if section.unix is not None:
        yield Listener(component, "unix", section.unix, section.tls is not None,
                       section.auth is not None, f"{section.unix_mode:04o}")


def _port(listener: OtlpGrpcReceiver | OtlpHttpReceiver) -> int | None:
    try:
        return listener.bound_port
    except RuntimeError:  # not started (or a unix socket only)
        return None


def collect(config: Config, receivers: Iterable[ReceiverComponent],
            cache: CacheService | None, admin: AdminServer | None) -> list[Listener]:
    rows: list[Listener] = []
    for receiver in receivers:
        if isinstance(receiver, OtlpReceiver):
            section = config.receivers.otlp
            if receiver.grpc is not None and section.grpc is not None:
                rows.extend(_otlp(receiver.name, "grpc", section.grpc, _port(receiver.grpc)))
            if receiver.http is not None and section.http is not None:
                rows.extend(_otlp(receiver.name, "http", section.http, _port(receiver.http)))
        elif isinstance(receiver, LogsReceiver):
            logs = receiver.config
            if receiver.unix is not None and logs.unix is not None:
                rows.append(Listener(f"{receiver.name}/unix", "unix", logs.unix,
                                     mode=f"{logs.unix_mode:04o}"))
            if receiver.tcp is not None:  # its address has the bound port once started
                rows.append(Listener(f"{receiver.name}/tcp", "tcp", receiver.tcp.address,
                                     tls=False, auth=False))
            if logs.files is not None:
                rows.append(Listener(f"{receiver.name}/files", "files",
                                     " ".join(logs.files.include)))
    if cache is not None:
        settings = cache.config
        if settings.unix is not None:
            rows.append(Listener("cache", "unix", settings.unix,
                                 mode=f"{settings.unix_mode:04o}"))
        if settings.tcp is not None:
            rows.append(Listener("cache", "tcp", _tcp(settings.tcp.endpoint, cache.tcp_port),
                                 tls=False, auth=settings.tcp.password is not None))
    if admin is not None:
        rows.append(Listener("admin", "tcp", _tcp(admin.endpoint, admin.bound_port),
                             tls=config.admin.tls is not None,
                             auth=config.admin.auth is not None))
    return rows
