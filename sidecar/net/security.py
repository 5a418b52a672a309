"""What every listener shares for who may talk to it: the loopback rule, server TLS (with
optional client certificates and reload on change) and bearer-token auth.

Config models live here (not in config.py) because the cache and the admin server use them
too; `config.py` only puts them on each listener."""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
import ssl
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import grpc
from pydantic import Field, SecretStr, field_validator

from sidecar.configtypes import Duration, Strict, split_endpoint
from sidecar.errors import StartupError

log = logging.getLogger(__name__)

_LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


def is_loopback_host(host: str) -> bool:
    """True for a loopback IP or a name that means loopback everywhere. Any other name
    counts as remote: config is checked without DNS, and a name can resolve anywhere."""
    host = host.strip("[]").lower()
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_local(endpoint: str | None, allow_remote: bool) -> None:
    """The loopback rule, for a config validator: raises ValueError naming the fix."""
    if endpoint is None or allow_remote:
        return
    host, _ = split_endpoint(endpoint)
    if not is_loopback_host(host):
        raise ValueError(
            f"endpoint {endpoint} is not loopback: set allow_remote: true on this listener "
            "to accept connections from other hosts (and consider tls and auth)")


class ServerTlsConfig(Strict):
    """TLS for a listener. With `client_ca_file`, clients must present a certificate that
    CA signed (mTLS). The files are read again when they change (checked every
    `reload_interval`; 0 turns that off), so a rotated certificate needs no restart."""

    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None
    reload_interval: Duration = Field(default=60.0, ge=0)


class AuthConfig(Strict):
    """Bearer-token auth: a request must carry `Authorization: Bearer <token>` (gRPC
    metadata `authorization`) with one of these tokens. Several tokens allow rotation."""

    bearer_tokens: list[SecretStr] = Field(min_length=1)

    @field_validator("bearer_tokens")
    @classmethod
    def _usable(cls, tokens: list[SecretStr]) -> list[SecretStr]:
        for index, token in enumerate(tokens):
            value = token.get_secret_value()
            # an empty token would let `Bearer ` in; the value itself is never echoed
            if not value or any(c.isspace() or not c.isprintable() for c in value):
                raise ValueError(f"token [{index}] is empty or holds spaces or control "
                                 "characters")
        return tokens


class BearerAuth:
    """Checks an Authorization value (`Bearer <token>`; the scheme is case-insensitive, as
    RFC 7235 says) against every configured token in time independent of where they differ
    (hmac.compare_digest) and of which one matched."""

    __slots__ = ("_tokens",)

    def __init__(self, config: AuthConfig) -> None:
        self._tokens = tuple(t.get_secret_value().encode() for t in config.bearer_tokens)

    def check(self, authorization: str | bytes | None) -> bool:
        if not authorization:
            return False
        given = authorization.encode() if isinstance(authorization, str) else authorization
        scheme, _, token = given.partition(b" ")
        if scheme.lower() != b"bearer":
            return False
        token = token.strip(b" ")
        ok = False
        for expected in self._tokens:  # no early exit
            ok |= hmac.compare_digest(token, expected)
        return ok

    def check_metadata(self, metadata: Iterable[tuple[str, str | bytes]] | None) -> bool:
        for key, value in metadata or ():
            if key == "authorization":
                return self.check(value)
        return False


def banner(tls: ServerTlsConfig | None, auth: AuthConfig | None) -> str:
    """How a listener is protected, for the startup banner: e.g. ` [mtls, bearer]`."""
    parts = []
    if tls is not None:
        parts.append("mtls" if tls.client_ca_file is not None else "tls")
    if auth is not None:
        parts.append("bearer")
    return f"  [{', '.join(parts)}]" if parts else ""


def _read(path: Path, setting: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise StartupError(f"{setting}: {path}: {exc.strerror or exc}") from exc


@dataclass(frozen=True, slots=True)
class _Stamp:
    """What tells a changed file: its mtime, size and inode (an atomic rename changes it)."""

    files: tuple[tuple[int, int, int], ...]

    @classmethod
    def of(cls, paths: Iterable[Path]) -> _Stamp | None:
        try:
            stats = [os.stat(p) for p in paths]
        except OSError:
            return None  # mid-rotation: keep what we have and look again later
        return cls(tuple((s.st_mtime_ns, s.st_size, s.st_ino) for s in stats))


class _Reloadable:
    """Files plus the moment they were last looked at; `due()` says when to look again."""

    def __init__(self, config: ServerTlsConfig, setting: str) -> None:
        self.config = config
        self.setting = setting
        paths = [config.cert_file, config.key_file]
        if config.client_ca_file is not None:
            paths.append(config.client_ca_file)
        self._paths = tuple(paths)
        self._stamp = _Stamp.of(self._paths)
        self._checked = time.monotonic()

    def changed(self) -> bool:
        """True once per change of any file, at most once per reload_interval."""
        interval = self.config.reload_interval
        now = time.monotonic()
        if interval <= 0 or now - self._checked < interval:
            return False
        self._checked = now
        stamp = _Stamp.of(self._paths)
        if stamp is None or stamp == self._stamp:
            return False
        self._stamp = stamp
        return True


class ServerTls(_Reloadable):
    """TLS for an asyncio/aiohttp server. Every handshake goes through the SNI callback of
    the listener's context, which hands the connection the newest context, so a reload
    (new certificate, key or client CA) applies to new connections at once; connections
    already open keep theirs. A reload that fails (a half-written file) keeps the old one."""

    def __init__(self, config: ServerTlsConfig, setting: str) -> None:
        super().__init__(config, setting)
        self._current = self._build()
        self.listener_context = self._build()
        self.listener_context.sni_callback = self._pick

    def _build(self) -> ssl.SSLContext:
        config = self.config
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            context.load_cert_chain(config.cert_file, config.key_file)
        except (OSError, ssl.SSLError) as exc:
            raise StartupError(f"{self.setting}.cert_file: {config.cert_file}: cannot load "
                               f"the certificate and key ({exc})") from exc
        if config.client_ca_file is not None:
            try:
                context.load_verify_locations(cafile=config.client_ca_file)
            except (OSError, ssl.SSLError) as exc:
                raise StartupError(f"{self.setting}.client_ca_file: {config.client_ca_file}: "
                                   f"cannot load ({exc})") from exc
            context.verify_mode = ssl.CERT_REQUIRED
        return context

    def _pick(self, connection: ssl.SSLObject, _name: str | None,
              _context: ssl.SSLContext) -> None:
        self.maybe_reload()
        connection.context = self._current

    def maybe_reload(self) -> None:
        if not self.changed():
            return
        try:
            self._current = self._build()
        except StartupError as exc:
            log.warning("%s: keeping the previous certificate: %s", self.setting, exc)
            return
        log.info("%s: certificate reloaded", self.setting)


class GrpcServerTls(_Reloadable):
    """TLS for the grpc.aio server: gRPC asks for the certificate configuration on each
    new connection and we answer a new one only when the files changed."""

    def __init__(self, config: ServerTlsConfig, setting: str) -> None:
        super().__init__(config, setting)
        self._initial = self._configuration()

    def _configuration(self) -> grpc.ServerCertificateConfiguration:
        config = self.config
        key = _read(config.key_file, f"{self.setting}.key_file")
        cert = _read(config.cert_file, f"{self.setting}.cert_file")
        ca = (_read(config.client_ca_file, f"{self.setting}.client_ca_file")
              if config.client_ca_file is not None else None)
        # also a parse check: grpc only reports a bad PEM on the first handshake
        probe = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            probe.load_cert_chain(config.cert_file, config.key_file)
            if config.client_ca_file is not None:
                probe.load_verify_locations(cafile=config.client_ca_file)
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise StartupError(f"{self.setting}.cert_file: {config.cert_file}: cannot load "
                               f"the certificate and key ({exc})") from exc
        return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=ca)

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        if not self.changed():
            return None
        try:
            configuration = self._configuration()
        except StartupError as exc:
            log.warning("%s: keeping the previous certificate: %s", self.setting, exc)
            return None
        log.info("%s: certificate reloaded", self.setting)
        return configuration

    def credentials(self) -> grpc.ServerCredentials:
        # grpc documents that the fetcher returns None for "no change"; grpc-stubs says not
        return grpc.dynamic_ssl_server_credentials(
            self._initial, self._fetch,  # type: ignore[arg-type]
            require_client_authentication=self.config.client_ca_file is not None)
