"""Configuration: the ANP Proxy ``config.toml`` schema, our additions, validation.

An anp-proxy ``config.toml`` loads unchanged: every key of the seed's schema is
accepted with the seed's meaning. Keys the seed had for features anpx does not
have (DID-WBA, the service database) are accepted and listed in
:attr:`Config.ignored` so the driver can log them, except where ignoring one
would weaken security (``did_wba_enabled = true`` is an error).

Everything else that is wrong - an unknown key, a wrong type, an impossible
value, contradicting keys - raises :class:`ConfigError`, whose ``str`` is one
line naming the key with its section and what is expected. Files named by the
config (certificates, keys) are not opened here; the driver does that.

Precedence: option (``overrides``) > file > default. The sections are frozen
dataclasses; built directly in code (``ReceiverConfig(gateway_url=...)``, the
embedding API) they get the same per-key checks. The reference of every key
is ``docs/configuration.md``.
"""

from __future__ import annotations

import difflib
import json
import logging
import math
import os
import random
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import Field, dataclass, field, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from anpx_core.gateway import GatewaySettings
from anpx_core.gateway.tcp import GatewayTcpSettings, TcpListen
from anpx_core.receiver import ReceiverSettings
from anpx_core.tcp import MAX_TCP_STREAM_WINDOW, TcpSettings
from anpx_core.ws_relay import WsSettings

from .tcpsock import parse_hostport

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

__all__ = [
    "MODES",
    "AuthConfig",
    "CommandConfig",
    "Config",
    "ConfigError",
    "GatewayConfig",
    "LoggingConfig",
    "ReceiverConfig",
    "TlsConfig",
    "VisitorConfig",
    "load_config",
    "parse_config",
    "to_gateway_settings",
    "to_receiver_settings",
]

MODES = ("gateway", "receiver", "both")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
VERIFY_MODES = ("none", "optional", "required")
APP_INTERFACES = ("auto", "asgi", "wsgi")
MiB = 1024 * 1024
#: A frame must hold its header, the request id and some body; smaller is useless.
MIN_FRAME_SIZE = 1024
#: Receive limit ceiling: a WebSocket message is buffered whole before decoding.
MAX_FRAME_SIZE = 1024 * MiB
_WILDCARD_HOSTS = ("", "0.0.0.0", "::")
#: The embedding defaults are the single source of every engine default below: a key that
#: maps onto a core setting takes its default from here (tests/test_config.py checks that
#: ``to_*_settings`` of a default section equals the default settings).
_GW = GatewaySettings()
_RX = ReceiverSettings()
_GW_WS = _GW.websocket
_RX_WS = _RX.websocket
_TCP = TcpSettings()


class ConfigError(Exception):
    """A configuration problem; ``str()`` is one line meant for the user as is.

    ``path`` is the dotted key (``"gateway.port"``) when one key is to blame;
    ``from_option`` is true when its value came from ``overrides`` (the command
    line), so the CLI can name the option.
    """

    prefix = "config error"

    def __init__(self, message: str, *, path: str | None = None, from_option: bool = False) -> None:
        # One line, whatever the message quotes.
        self.message = " ".join(str(message).split())
        self.path = path
        self.from_option = from_option
        super().__init__(f"{self.prefix}: {self.message}")


# --- field declarations --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Check:
    kind: str  # bool | int | float | str | choice | size | path | urls
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False  # lo itself is not allowed
    choices: tuple[str, ...] = ()
    unit: str = ""
    nonempty: bool = False
    secret: bool = False  # never echo the value in an error
    # Extra check on a well-typed value: returns None when fine, else what is expected.
    extra: Callable[[Any], str | None] | None = None


def _opt(default: Any, kind: str, **check: Any) -> Any:
    return field(default=default, metadata={"check": _Check(kind, **check)})


_SECTION = {"section": True}


def _network_ok(value: object) -> bool:
    import ipaddress

    if not isinstance(value, str):
        return False
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        return False
    return True


def _service_ok(value: object) -> bool:
    from anpx_core.tcp import check_service

    try:
        check_service(value)  # type: ignore[arg-type]
    except ValueError:
        return False
    return True


def _hostport_ok(value: object) -> bool:
    if not isinstance(value, str):
        return False
    try:
        parse_hostport(value)
    except ValueError:
        return False
    return True


def _claim_ok(value: object) -> bool:
    """A route, or ``tcp:NAME`` / ``tcp:*``: a TCP service the receiver may offer."""
    if isinstance(value, str) and value.startswith("tcp:"):
        return value == "tcp:*" or _service_ok(value[4:])
    return _route_ok(value)


def _tcp_services(value: Any) -> tuple[bool, Any]:
    """``[[receiver.tcp]]``: tables of ``name`` and ``local`` ("HOST:PORT")."""
    if not isinstance(value, (list, tuple)):
        return False, value
    out: list[tuple[str, str]] = []
    for table in value:
        if isinstance(table, tuple) and len(table) == 2:  # normalised already (re-checked)
            table = {"name": table[0], "local": table[1]}
        if not isinstance(table, Mapping) or set(table) != {"name", "local"}:
            return False, value
        if not _service_ok(table["name"]) or not _hostport_ok(table["local"]):
            return False, value
        if any(name == table["name"] for name, _ in out):
            return False, value
        out.append((table["name"], table["local"]))
    return True, tuple(out)


def _tcp_listeners(value: Any) -> tuple[bool, Any]:
    """``[[gateway.tcp]]``: ``port``, ``service``, optional ``host`` and ``allow``."""
    if not isinstance(value, (list, tuple)):
        return False, value
    out: list[tuple[int, str, str | None, tuple[str, ...]]] = []
    for table in value:
        if isinstance(table, tuple) and len(table) == 4:  # normalised already (re-checked)
            table = dict(zip(("port", "service", "host", "allow"), table, strict=True))
            if table["host"] is None:
                del table["host"]
        if not isinstance(table, Mapping) or not {"port", "service"} <= set(table):
            return False, value
        if not set(table) <= {"port", "service", "host", "allow"}:
            return False, value
        port, host, allow = table["port"], table.get("host"), table.get("allow", [])
        if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
            return False, value
        if not _service_ok(table["service"]):
            return False, value
        if host is not None and (not isinstance(host, str) or not host):
            return False, value
        if not isinstance(allow, (list, tuple)) or not all(_network_ok(a) for a in allow):
            return False, value
        out.append((port, table["service"], host, tuple(allow)))
    return True, tuple(out)


def _visitor_connects(value: Any) -> tuple[bool, Any]:
    """``[[visitor.connect]]``: ``service`` and ``listen`` ("HOST:PORT"), each listen once."""
    if not isinstance(value, (list, tuple)):
        return False, value
    out: list[tuple[str, str]] = []
    for table in value:
        if isinstance(table, tuple) and len(table) == 2:  # normalised already (re-checked)
            table = {"service": table[0], "listen": table[1]}
        if not isinstance(table, Mapping) or set(table) != {"service", "listen"}:
            return False, value
        service, listen = table["service"], table["listen"]
        if not _service_ok(service) or not isinstance(listen, str):
            return False, value
        try:
            parse_hostport(listen, any_port=True)
        except ValueError:
            return False, value
        if any(taken == listen for _, taken in out):
            return False, value
        out.append((service, listen))
    return True, tuple(out)


def _route_ok(value: object) -> bool:
    from anpx_core.routing import parse_route

    if not isinstance(value, str):
        return False
    try:
        parse_route(value)
    except ValueError:
        return False
    return True


def _module_attr(value: str) -> str | None:
    ident = r"[^\W\d]\w*"
    dotted = rf"{ident}(?:\.{ident})*"
    if re.fullmatch(rf"{dotted}:{dotted}", value):
        return None
    return 'expected "module:attribute", e.g. "myapp.main:app"'


def _root_path(value: str) -> str | None:
    if value == "" or (value.startswith("/") and not value.endswith("/")):
        return None
    return 'expected "" or a path starting with "/" and not ending with "/", e.g. "/api"'


def _client_id(value: str) -> str | None:
    # It travels in a handshake header: visible ASCII, inner spaces allowed.
    if value == "" or (len(value) <= 128 and re.fullmatch(r"[!-~](?:[ -~]*[!-~])?", value)):
        return None
    return "expected printable ASCII without leading or trailing spaces, at most 128 characters"


def _did(value: str) -> str | None:
    from anpx_core.didwba import DidError, did_document_url

    try:
        did_document_url(value)
    except DidError:
        return 'expected a did:wba DID, e.g. "did:wba:example.com:agents:alice"'
    return None


def _host_ok(value: object) -> bool:
    return isinstance(value, str) and bool(
        re.fullmatch(r"[A-Za-z0-9.-]{1,253}|\[[0-9A-Fa-f:.]+\]|[0-9A-Fa-f:]+", value)
    )


def _host_pattern_ok(value: object) -> bool:
    # a did:wba host: letters, digits, dots and hyphens (no port, no IPv6); "*" or "*.suffix"
    name = r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?"
    return isinstance(value, str) and bool(re.fullmatch(rf"\*|(?:\*\.)?{name}", value))


def _ws_url(value: str) -> str | None:
    expected = "expected a ws:// or wss:// URL with a host, e.g. ws://127.0.0.1:8765"
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        return expected
    if parts.scheme not in ("ws", "wss") or not parts.hostname or parts.fragment:
        return expected
    return None


MAX_WORKERS = 256


def _redis_url(value: str) -> str | None:
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("redis", "rediss", "unix") or parts.fragment:
        return 'expected a Redis URL, e.g. "redis://127.0.0.1:6379/0" (rediss:// for TLS)'
    return None


def _http_url(value: str) -> str | None:
    expected = 'expected "http://host:port" (a local HTTP service), e.g. "http://127.0.0.1:8000"'
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018
    except ValueError:
        return expected
    if parts.scheme != "http" or not parts.hostname or parts.path not in ("", "/"):
        return expected
    if parts.query or parts.fragment or parts.username or parts.password:
        return expected
    return None


def _log_format(value: str) -> str | None:
    try:
        # validate= checks the syntax only; formatting a record also catches unknown fields
        record = logging.LogRecord("anpx", logging.INFO, __file__, 1, "message", None, None)
        logging.Formatter(value, validate=True).format(record)
    except (ValueError, TypeError, KeyError, AttributeError):
        return 'expected a logging format string such as "%(asctime)s %(levelname)s %(message)s"'
    return None


# --- sections ------------------------------------------------------------------------------


class _Section:
    __slots__ = ()

    def __post_init__(self) -> None:
        # Built directly (the embedding API), a section gets the checks a file gets.
        for f in fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if f.metadata.get("section"):
                expected = type(f.default_factory())  # type: ignore[operator]
                if not isinstance(value, expected):
                    raise ConfigError(
                        f"{type(self).__name__}.{f.name}: expected a {expected.__name__}, "
                        f"got {_type_name(value)}",
                        path=f.name,
                    )
                continue
            check: _Check | None = f.metadata.get("check")
            if check is None or value is f.default:  # a default is valid by construction
                continue
            converted, problem = _check_value(check, value)
            if problem is not None:
                raise ConfigError(f"{type(self).__name__}.{f.name}: {problem}", path=f.name)
            if converted is not value:
                object.__setattr__(self, f.name, converted)


@dataclass(frozen=True, slots=True)
class LoggingConfig(_Section):
    level: str = _opt("INFO", "choice", choices=LOG_LEVELS)
    format: str = _opt(
        "%(asctime)s [%(levelname)s] %(name)s: %(message)s", "str", nonempty=True, extra=_log_format
    )
    file: str | None = _opt(None, "path")
    max_size: int = _opt(10 * MiB, "size")  # bytes; 0: never rotate
    backup_count: int = _opt(5, "int", lo=0, hi=1000)


@dataclass(frozen=True, slots=True)
class TlsConfig(_Section):
    enabled: bool = _opt(False, "bool")
    cert_file: str | None = _opt(None, "path")
    key_file: str | None = _opt(None, "path")
    ca_file: str | None = _opt(None, "path")
    # Gateway: client certificates asked of receivers on the tunnel listener.
    # Receiver: verification of the gateway's certificate and host name.
    verify_mode: str = _opt("required", "choice", choices=VERIFY_MODES)


@dataclass(frozen=True, slots=True)
class AuthConfig(_Section):
    enabled: bool = _opt(False, "bool")
    shared_secret: str | None = _opt(None, "str", nonempty=True, secret=True)
    token_expiry: int = _opt(3600, "int", lo=1, unit="seconds")  # the seed's; no effect here
    max_attempts: int = _opt(3, "int", lo=1)
    # ours: the secret from a file (kept out of argv and of the config file), the allowed
    # difference between the receiver's and the gateway's clocks
    shared_secret_file: str | None = _opt(None, "path")
    clock_skew: float = _opt(300.0, "float", lo=1, unit="seconds")
    # DID-WBA (anpx_core.didwba); the seed's key names, then ours (did_*)
    did_wba_enabled: bool = _opt(False, "bool")
    did: str | None = _opt(None, "str", extra=_did)  # receiver: must match the document's id
    did_document_path: str | None = _opt(None, "path")  # receiver: its DID document
    private_key_path: str | None = _opt(None, "path")  # receiver: its PEM private key
    nonce_window_seconds: int = _opt(300, "int", lo=1, unit="seconds")  # gateway: max age
    allowed_dids: tuple[str, ...] = _opt((), "dids")  # gateway: (): any verified DID
    did_max_future: float = _opt(60.0, "float", lo=0, unit="seconds")
    did_service_domains: tuple[str, ...] = _opt((), "hosts")  # gateway: its public host names
    did_documents_dir: str | None = _opt(None, "path")  # gateway: pinned documents (*.json)
    did_fetch: bool = _opt(True, "bool")  # gateway: fetch unpinned documents over HTTPS
    # gateway: hosts documents may be fetched from; (): allowed_dids' hosts, else public ones
    did_fetch_hosts: tuple[str, ...] = _opt((), "hostpatterns")
    did_fetch_timeout: float = _opt(5.0, "float", lo=0, lo_open=True, hi=60, unit="seconds")
    did_cache_ttl: float = _opt(300.0, "float", lo=1, unit="seconds")
    did_ca_file: str | None = _opt(None, "path")  # gateway: CA bundle for fetching documents
    did_failure_ttl: float = _opt(30.0, "float", lo=1, unit="seconds")
    did_max_pending: int = _opt(64, "int", lo=1)  # documents being fetched at once
    did_max_document_bytes: int = _opt(64 * 1024, "int", lo=256, hi=16 * MiB, unit="bytes")
    did_cache_capacity: int = _opt(10_000, "int", lo=1)  # fetched documents kept
    did_nonce_capacity: int = _opt(100_000, "int", lo=1)  # nonces remembered in the window
    did_header: str = _opt("legacy", "choice", choices=("legacy", "1.1"))  # receiver's form


@dataclass(frozen=True, slots=True)
class GatewayWebSocketConfig(_Section):
    """[gateway.websocket]: clients' WebSockets carried through the tunnel (docs/websocket.md)."""

    enabled: bool = _opt(_GW_WS.enabled, "bool")  # offer the ws extension to receivers
    max_per_receiver: int = _opt(_GW_WS.max_open, "int", lo=1)
    max_per_address: int = _opt(_GW_WS.max_per_client, "int", lo=0)  # 0: no cap
    max_message_size: int = _opt(
        _GW_WS.max_message_size, "int", lo=1024, hi=2**31 - 1, unit="bytes"
    )
    idle_timeout: float = _opt(_GW_WS.idle_timeout, "float", lo=0, unit="seconds")  # 0: none
    ping_interval: float = _opt(_GW_WS.ping_interval, "float", lo=0, unit="seconds")  # 0: none
    ping_timeout: float = _opt(_GW_WS.ping_timeout, "float", lo=0, lo_open=True, unit="seconds")
    close_timeout: float = _opt(_GW_WS.close_timeout, "float", lo=0, lo_open=True, unit="seconds")
    open_timeout: float = _opt(_GW_WS.open_timeout, "float", lo=0, lo_open=True, unit="seconds")


@dataclass(frozen=True, slots=True)
class ReceiverWebSocketConfig(_Section):
    """[receiver.websocket]: WebSockets to the app or the local service."""

    enabled: bool = _opt(_RX_WS.enabled, "bool")  # offer the ws extension to gateways
    max_open: int = _opt(_RX_WS.max_open, "int", lo=1)
    max_message_size: int = _opt(
        _RX_WS.max_message_size, "int", lo=1024, hi=2**31 - 1, unit="bytes"
    )
    # forward mode; 0: none
    idle_timeout: float = _opt(_RX_WS.idle_timeout, "float", lo=0, unit="seconds")
    ping_interval: float = _opt(_RX_WS.ping_interval, "float", lo=0, unit="seconds")
    ping_timeout: float = _opt(_RX_WS.ping_timeout, "float", lo=0, lo_open=True, unit="seconds")
    close_timeout: float = _opt(_RX_WS.close_timeout, "float", lo=0, lo_open=True, unit="seconds")
    open_timeout: float = _opt(_RX_WS.open_timeout, "float", lo=0, lo_open=True, unit="seconds")


def to_ws_settings(section: GatewayWebSocketConfig | ReceiverWebSocketConfig) -> WsSettings:
    """The WebSocket units' settings (anpx_core.ws_relay.WsSettings) from a config section."""
    if isinstance(section, GatewayWebSocketConfig):
        max_open, per_client = section.max_per_receiver, section.max_per_address
    else:
        max_open, per_client = section.max_open, 0
    return WsSettings(
        enabled=section.enabled,
        max_open=max_open,
        max_per_client=per_client,
        max_message_size=section.max_message_size,
        idle_timeout=section.idle_timeout,
        ping_interval=section.ping_interval,
        ping_timeout=section.ping_timeout,
        close_timeout=section.close_timeout,
        open_timeout=section.open_timeout,
    )


def _gateway_tls() -> TlsConfig:
    return TlsConfig(verify_mode="none")


@dataclass(frozen=True, slots=True)
class GatewayConfig(_Section):
    # the seed's keys
    host: str = _opt("127.0.0.1", "str", nonempty=True)
    port: int = _opt(8080, "int", lo=0, hi=65535)
    wss_host: str = _opt("127.0.0.1", "str", nonempty=True)
    wss_port: int = _opt(8765, "int", lo=0, hi=65535)
    max_connections: int = _opt(_GW.max_connections, "int", lo=1)
    timeout: float = _opt(_GW.timeout, "float", lo=0, lo_open=True, unit="seconds")
    keepalive_timeout: float = _opt(
        _GW.front.keepalive_timeout, "float", lo=0, lo_open=True, unit="seconds"
    )
    chunk_size: int = _opt(
        _GW.send_frame_size, "int", lo=MIN_FRAME_SIZE, hi=MAX_FRAME_SIZE, unit="bytes"
    )
    ping_interval: float = _opt(_GW.ws.ping_interval, "float", lo=0, unit="seconds")
    tls: TlsConfig = field(default_factory=_gateway_tls, metadata=_SECTION)
    auth: AuthConfig = field(default_factory=AuthConfig, metadata=_SECTION)
    # ours
    websocket: GatewayWebSocketConfig = field(
        default_factory=GatewayWebSocketConfig, metadata=_SECTION
    )
    admin_host: str = _opt("127.0.0.1", "str", nonempty=True)
    admin_port: int = _opt(8081, "int", lo=0, hi=65535)  # 0: no admin listener
    max_streams_per_receiver: int = _opt(_GW.max_streams_per_receiver, "int", lo=1)
    max_header_bytes: int = _opt(
        _GW.front.max_header_bytes, "int", lo=1024, hi=16 * MiB, unit="bytes"
    )
    max_body_bytes: int = _opt(_GW.front.max_body_bytes, "int", lo=0, unit="bytes")
    header_timeout: float = _opt(
        _GW.front.header_timeout, "float", lo=0, lo_open=True, unit="seconds"
    )
    stream_window: int = _opt(_GW.stream_window or 0, "int", lo=0, hi=2**31 - 1, unit="bytes")
    max_frame_size: int = _opt(
        _GW.codec.max_frame_size, "int", lo=MIN_FRAME_SIZE, hi=MAX_FRAME_SIZE, unit="bytes"
    )
    # a v1 receiver sends each response as one frame (docs/protocol.md section 12)
    v1_max_frame_size: int = _opt(
        _GW.codec.v1_max_frame_size, "int", lo=MIN_FRAME_SIZE, unit="bytes"
    )
    insecure: bool = _opt(False, "bool")
    # per-client-address token bucket (anpx_core.ratelimit); 0: off, see docs/security.md
    rate_limit: float = _opt(0.0, "float", lo=0, unit="requests per second")
    rate_burst: int = _opt(100, "int", lo=1)
    shutdown_grace: float = _opt(10.0, "float", lo=0, unit="seconds")
    # receiver id -> routes it may claim; unset: any receiver may claim any route
    route_claims: dict[str, tuple[str, ...]] | None = _opt(None, "claims")  # noqa: RUF009 - default None
    # reverse proxies (e.g. nginx) whose X-Forwarded-For/-Proto/-Host/-Port the gateway believes
    trusted_proxies: tuple[str, ...] = _opt((), "networks")
    # /stats and /metrics need "Authorization: Bearer <token>"; required when admin_host is
    # not loopback (else ANPX_ADMIN_TOKEN, see anpx_host.launch)
    admin_token: str | None = _opt(None, "str", nonempty=True, secret=True)
    admin_token_file: str | None = _opt(None, "path")
    # hostile tunnel peers (docs/security.md): body held before heads, pings, unread output
    max_body_before_head: int = _opt(_GW.codec.max_headless_total, "size")
    max_pings_per_minute: int = _opt(_GW.ws.max_pings_per_minute, "int", lo=0)
    max_tunnel_backlog: int = _opt(_GW.ws.max_backlog, "size")
    # hostile clients (docs/security.md#hostile-http-clients); 0 in a per-address cap: no cap
    max_output_bytes: int = _opt(_GW.max_output_bytes, "int", lo=1024, hi=2**31 - 1, unit="bytes")
    max_connections_per_address: int = _opt(_GW.max_connections_per_address, "int", lo=0)
    max_streams_per_address: int = _opt(_GW.max_streams_per_address, "int", lo=0)
    send_timeout: float = _opt(_GW.send_timeout, "float", lo=0, unit="seconds")
    # every core (docs/operations.md#scaling-from-one-process-to-a-fleet): worker processes
    # sharing the HTTP port, worker i's tunnel on wss_port + i; a dead one is restarted after
    # worker_restart_delay, doubling while it keeps dying young
    workers: int = _opt(1, "int", lo=1, hi=MAX_WORKERS)
    worker_restart_delay: float = _opt(1.0, "float", lo=0, lo_open=True, unit="seconds")
    # a restarted worker opens its public port once a receiver is on its tunnel, or after this
    worker_receiver_wait: float = _opt(10.0, "float", lo=0, hi=3600, unit="seconds")
    # state shared across workers and hosts (replay caches, rate limits); unset: per process
    shared_store: str | None = _opt(None, "str", extra=_redis_url)
    shared_store_timeout: float = _opt(0.5, "float", lo=0, lo_open=True, unit="seconds")
    # TCP services (docs/tcp.md): [[gateway.tcp]] listeners, the visitor credential, limits
    tcp: tuple[tuple[int, str, str | None, tuple[str, ...]], ...] = _opt((), "tcplisteners")
    visitor_secret: str | None = _opt(None, "str", nonempty=True, secret=True)
    visitor_secret_file: str | None = _opt(None, "path")
    tcp_idle_timeout: float = _opt(_TCP.idle_timeout, "float", lo=0, unit="seconds")
    tcp_open_timeout: float = _opt(_TCP.open_timeout, "float", lo=0, lo_open=True, unit="seconds")
    tcp_keepalive: float = _opt(_TCP.keepalive, "float", lo=0, unit="seconds")
    tcp_stream_window: int = _opt(_TCP.window, "int", lo=0, hi=MAX_TCP_STREAM_WINDOW, unit="bytes")


@dataclass(frozen=True, slots=True)
class ReceiverConfig(_Section):
    # the seed's keys
    gateway_url: str = _opt("ws://127.0.0.1:8765", "str", extra=_ws_url)
    local_app_module: str | None = _opt(None, "str", extra=_module_attr)
    local_host: str = _opt("127.0.0.1", "str", nonempty=True)
    local_port: int | None = _opt(None, "int", lo=1, hi=65535)
    timeout: float = _opt(_RX.ws.ping_timeout, "float", lo=0, lo_open=True, unit="seconds")
    keepalive_interval: float = _opt(30.0, "float", lo=0, unit="seconds")
    ping_interval: float = _opt(_RX.ws.ping_interval, "float", lo=0, unit="seconds")
    reconnect_enabled: bool = _opt(_RX.reconnect_enabled, "bool")
    reconnect_delay: float = _opt(_RX.reconnect_delay, "float", lo=0, lo_open=True, unit="seconds")
    max_reconnect_attempts: int = _opt(_RX.max_reconnect_attempts, "int", lo=0)  # 0: forever
    chunk_size: int = _opt(
        _RX.send_frame_size, "int", lo=MIN_FRAME_SIZE, hi=MAX_FRAME_SIZE, unit="bytes"
    )
    tls: TlsConfig = field(default_factory=TlsConfig, metadata=_SECTION)
    auth: AuthConfig = field(default_factory=AuthConfig, metadata=_SECTION)
    # ours
    websocket: ReceiverWebSocketConfig = field(
        default_factory=ReceiverWebSocketConfig, metadata=_SECTION
    )
    local_url: str | None = _opt(None, "str", extra=_http_url)
    client_id: str = _opt("", "str", extra=_client_id)
    gateway_urls: tuple[str, ...] = _opt((), "urls")
    stream_window: int = _opt(_RX.stream_window or 0, "int", lo=0, hi=2**31 - 1, unit="bytes")
    max_frame_size: int = _opt(
        _RX.codec.max_frame_size, "int", lo=MIN_FRAME_SIZE, hi=MAX_FRAME_SIZE, unit="bytes"
    )
    v1_max_frame_size: int = _opt(
        _RX.codec.v1_max_frame_size, "int", lo=MIN_FRAME_SIZE, unit="bytes"
    )
    # JSON ping period towards a v1 gateway, which drops receivers silent for 2 x its interval
    v1_ping_interval: float = _opt(_RX.v1_ping_interval, "float", lo=0, unit="seconds")
    app_factory: bool = _opt(False, "bool")
    interface: str = _opt("auto", "choice", choices=APP_INTERFACES)  # how to call the app
    routes: tuple[str, ...] = _opt((), "routes")  # claimed in the handshake; (): the default route
    max_concurrent_requests: int = _opt(_RX.max_concurrent_requests, "int", lo=1)
    root_path: str = _opt("", "str", extra=_root_path)
    shutdown_grace: float = _opt(10.0, "float", lo=0, unit="seconds")
    # a hostile gateway (docs/security.md): body held before heads, pings, unread output
    max_body_before_head: int = _opt(_RX.codec.max_headless_total, "size")
    max_pings_per_minute: int = _opt(_RX.ws.max_pings_per_minute, "int", lo=0)
    max_tunnel_backlog: int = _opt(_RX.ws.max_backlog, "size")
    # a multi-worker gateway's 101 names its other tunnel endpoints: hold a tunnel to each
    learn_endpoints: bool = _opt(_RX.learn_endpoints, "bool")
    max_learned_endpoints: int = _opt(_RX.max_learned_endpoints, "int", lo=0, hi=1024)
    # TCP services offered through the gateway (docs/tcp.md): [[receiver.tcp]] tables, and
    # the one-service case of AgentX's command line (--local-addr/--local-port, named by
    # the client id)
    tcp: tuple[tuple[str, str], ...] = _opt((), "tcpservices")
    tcp_local_addr: str = _opt("127.0.0.1", "str", nonempty=True)
    tcp_local_port: int | None = _opt(None, "int", lo=1, hi=65535)
    tcp_idle_timeout: float = _opt(_TCP.idle_timeout, "float", lo=0, unit="seconds")
    tcp_keepalive: float = _opt(_TCP.keepalive, "float", lo=0, unit="seconds")
    tcp_stream_window: int = _opt(_TCP.window, "int", lo=0, hi=MAX_TCP_STREAM_WINDOW, unit="bytes")

    @property
    def urls(self) -> tuple[str, ...]:
        """Every gateway to hold a tunnel to."""
        return self.gateway_urls or (self.gateway_url,)

    @property
    def forward(self) -> tuple[str, int] | None:
        """The local HTTP service in forward mode, else None."""
        if self.local_app_module is not None:
            return None
        if self.local_url is not None:
            parts = urlsplit(self.local_url)
            return (parts.hostname or "", parts.port or 80)
        if self.local_port is not None:
            return (self.local_host, self.local_port)
        return None

    @property
    def backend(self) -> str:
        """``"app"`` (local_app_module), ``"forward"`` (an HTTP service) or ``"demo"``."""
        if self.local_app_module is not None:
            return "app"
        return "forward" if self.forward is not None else "demo"


def _executor_name(value: str) -> str | None:
    if re.fullmatch(r"[a-z][a-z0-9_-]{0,31}", value):
        return None
    return "expected a name of lowercase letters, digits, - and _"


_DEFAULT_ENV_ALLOW = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "LC_CTYPE", "TERM", "TZ")


@dataclass(frozen=True, slots=True)
class VisitorConfig(_Section):
    """``[visitor]``: what ``connect`` reads with ``--config`` (docs/tcp.md#visitors)."""

    gateway_url: str | None = _opt(None, "str", extra=_ws_url)
    client_id: str = _opt("", "str", extra=_client_id)  # "": a random visitor-xxxxxxxx
    visitor_secret_file: str | None = _opt(None, "path")
    ca_file: str | None = _opt(None, "path")
    idle_timeout: float = _opt(_TCP.idle_timeout, "float", lo=0, unit="seconds")
    window: int = _opt(_TCP.window, "int", lo=0, hi=MAX_TCP_STREAM_WINDOW, unit="bytes")
    connect: tuple[tuple[str, str], ...] = _opt((), "visitorconnects")


@dataclass(frozen=True, slots=True)
class CommandConfig(_Section):
    """``[command]``: the command-mode app (anpx_command) the receiver serves; off by default."""

    enabled: bool = _opt(False, "bool")
    # the API credential: inline, from a file, or from ANPX_COMMAND_TOKEN (see launch.py)
    token: str | None = _opt(None, "str", nonempty=True, secret=True)
    token_file: str | None = _opt(None, "path")
    roots: tuple[str, ...] = _opt((), "strs")  # project_path must lie under one of these
    max_sessions: int = _opt(4, "int", lo=1, hi=1000)  # running at once
    max_retained: int = _opt(32, "int", lo=1, hi=100_000)  # kept, finished ones included
    time_limit: float = _opt(3600.0, "float", lo=0, lo_open=True, unit="seconds")
    cancel_grace: float = _opt(5.0, "float", lo=0, unit="seconds")  # SIGTERM, then SIGKILL
    max_output_bytes: int = _opt(8 * MiB, "size")  # per session; the process is stopped beyond
    max_prompt_bytes: int = _opt(256 * 1024, "int", lo=1, hi=64 * MiB, unit="bytes")
    env_allow: tuple[str, ...] = _opt(_DEFAULT_ENV_ALLOW, "strs")  # variables executors inherit
    # executables of the built-in executors, and user-defined executors (name = argv template)
    claude_path: str = _opt("claude", "str", nonempty=True)
    codex_path: str = _opt("codex", "str", nonempty=True)
    gemini_path: str = _opt("gemini", "str", nonempty=True)
    executors: dict[str, tuple[str, ...]] | None = _opt(None, "argvs")  # noqa: RUF009
    claude_home: str = _opt("~/.claude", "str", nonempty=True)  # Claude Code's own store
    # failed authentications per client address: a token bucket
    auth_failure_rate: float = _opt(0.1, "float", lo=0, lo_open=True, unit="per second")
    auth_failure_burst: int = _opt(5, "int", lo=1)
    allowed_hosts: tuple[str, ...] = _opt((), "strs")  # Host header values; (): any
    allowed_origins: tuple[str, ...] = _opt((), "strs")  # browser Origins; (): none
    enable_mcp: bool = _opt(False, "bool")
    mcp_path: str = _opt("/mcp", "str", nonempty=True, extra=_root_path)
    mcp_port: int = _opt(0, "int", lo=0, hi=65535)  # 0: no loopback listener of its own
    audit_log: str | None = _opt(None, "path")  # also a file of its own (else the log only)


#: Event loops the asyncio driver can run on (the trio driver runs on trio).
LOOPS = ("asyncio", "uvloop")


@dataclass(frozen=True, slots=True)
class Config(_Section):
    mode: str = _opt("gateway", "choice", choices=MODES)
    debug: bool = _opt(False, "bool")
    loop: str = _opt("asyncio", "choice", choices=LOOPS)  # the asyncio driver's event loop
    logging: LoggingConfig = field(default_factory=LoggingConfig, metadata=_SECTION)
    gateway: GatewayConfig = field(default_factory=GatewayConfig, metadata=_SECTION)
    receiver: ReceiverConfig = field(default_factory=ReceiverConfig, metadata=_SECTION)
    command: CommandConfig = field(default_factory=CommandConfig, metadata=_SECTION)
    visitor: VisitorConfig = field(default_factory=VisitorConfig, metadata=_SECTION)
    #: Seed keys accepted but without effect in anpx, e.g. "[gateway.auth] did_document_path".
    ignored: tuple[str, ...] = field(default=(), metadata={"internal": True})


# Seed keys of features anpx does not have: accepted, reported in Config.ignored.
_SEED_AUTH_EXTRAS = frozenset(
    {
        "resolver_base_url",
        "jwt_private_key_path",
        "jwt_public_key_path",
    }
)
_IGNORED: dict[tuple[str, ...], frozenset[str]] = {
    ("gateway",): frozenset({"database", "enable_smart_routing", "service_cache_ttl"}),
    ("gateway", "auth"): _SEED_AUTH_EXTRAS,
    ("receiver", "auth"): _SEED_AUTH_EXTRAS,
}


# --- rendering -----------------------------------------------------------------------------


def _key_name(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)


def _where(section: tuple[str, ...], key: str | None = None) -> str:
    head = "[" + ".".join(_key_name(s) for s in section) + "]" if section else ""
    if key is None:
        return head
    return f"{head} {_key_name(key)}" if head else _key_name(key)


def _type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "an empty string" if value == "" else "a string"
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, (list, tuple)):
        return "an array"
    return "a date/time" if hasattr(value, "isoformat") else type(value).__name__


def _show(value: Any, secret: bool = False) -> str:
    if secret or isinstance(value, Mapping):
        return _type_name(value)
    try:
        text = json.dumps(value, ensure_ascii=False, default=str)
    except ValueError:  # a circular structure, from Python callers only
        return _type_name(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _expected(check: _Check) -> str:
    if check.kind == "bool":
        return "expected true or false"
    if check.kind == "choice":
        return "expected one of " + ", ".join(f'"{c}"' for c in check.choices)
    if check.kind == "size":
        return 'expected a size in bytes: an integer >= 0 or a string like "10MB"'
    if check.kind == "path":
        return "expected a file path (a string)"
    if check.kind == "urls":
        return "expected a non-empty array of ws:// or wss:// URLs"
    if check.kind == "networks":
        return 'expected an array of IP addresses or networks, e.g. ["127.0.0.1", "10.0.0.0/8"]'
    if check.kind == "routes":
        return 'expected an array of routes like "api.example.com/", "/agents/bob"'
    if check.kind == "strs":
        return "expected an array of non-empty strings"
    if check.kind == "argvs":
        return 'expected a table of name = argv array, e.g. {aider = ["aider", "--message", "{prompt}"]}'
    if check.kind == "tcpservices":
        return 'expected [[receiver.tcp]] tables of name = "db" and local = "127.0.0.1:5432"'
    if check.kind == "visitorconnects":
        return (
            'expected [[visitor.connect]] tables of service = "db" and listen = '
            '"127.0.0.1:15432", each listen address once'
        )
    if check.kind == "tcplisteners":
        return (
            'expected [[gateway.tcp]] tables of port = 15432, service = "db", optional '
            'host = "0.0.0.0" and allow = ["10.0.0.0/8"]'
        )
    if check.kind == "claims":
        return 'expected a table of receiver id = array of routes, e.g. {"rc-1" = ["api.example.com/"]}'
    if check.kind == "dids":
        return 'expected an array of did:wba DIDs, e.g. ["did:wba:example.com:agents:alice"]'
    if check.kind == "hosts":
        return 'expected an array of host names without port, e.g. ["gw.example.com"]'
    if check.kind == "hostpatterns":
        return 'expected an array of host names or "*.domain" patterns, e.g. ["*.example.org"]'
    if check.kind == "str":
        return "expected a non-empty string" if check.nonempty else "expected a string"
    noun = "an integer" if check.kind == "int" else "a number"
    if check.unit:
        noun += f" of {check.unit}"

    def num(x: float) -> str:
        return str(int(x)) if float(x).is_integer() else str(x)

    if check.lo is not None and check.hi is not None:
        return f"expected {noun} from {num(check.lo)} to {num(check.hi)}"
    if check.lo is not None:
        return f"expected {noun} {'>' if check.lo_open else '>='} {num(check.lo)}"
    return f"expected {noun}"


# --- value checks --------------------------------------------------------------------------

_SIZE = re.compile(r"\s*(\d+)\s*(?:([kmgt])i?)?b?\s*", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def _parse_size(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    if isinstance(value, str):
        m = _SIZE.fullmatch(value)
        if m:
            return int(m.group(1)) * _SIZE_UNITS[(m.group(2) or "").lower()]
    return None


def _check_value(check: _Check, value: Any) -> tuple[Any, str | None]:
    """(normalised value, None) or (value, "expected ..., got ...") for one key."""
    ok, converted = _convert(check, value)
    problem = None if ok else _expected(check)
    if ok and check.extra is not None and converted is not None:
        problem = check.extra(converted)
    if problem is not None:
        return value, f"{problem}, got {_show(value, check.secret)}"
    return converted, None


def _convert(check: _Check, value: Any) -> tuple[bool, Any]:
    """(ok, normalised value) for one key's raw value."""
    kind = check.kind
    if kind == "bool":
        return isinstance(value, bool), value
    if kind == "int":
        ok = isinstance(value, int) and not isinstance(value, bool)
        ok = (
            ok
            and (check.lo is None or value >= check.lo)
            and (check.hi is None or value <= check.hi)
        )
        return ok, value
    if kind == "float":
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        ok = ok and math.isfinite(value)
        if ok and check.lo is not None:
            ok = value > check.lo if check.lo_open else value >= check.lo
        if ok and check.hi is not None:
            ok = value <= check.hi
        return ok, float(value) if ok else value
    if kind == "choice":
        if not isinstance(value, str):
            return False, value
        # Log levels are matched without regard to case, like the seed did.
        folded = value.upper() if check.choices == LOG_LEVELS else value
        return folded in check.choices, folded
    if kind == "size":
        size = _parse_size(value)
        return size is not None, size
    if kind == "path":
        if not isinstance(value, str):
            return False, value
        return True, value or None  # "" is "not set", as a commented-out key
    if kind == "urls":
        ok = isinstance(value, (list, tuple)) and len(value) > 0
        ok = ok and all(isinstance(u, str) and _ws_url(u) is None for u in value)
        return ok, tuple(value) if ok else value
    if kind == "networks":
        ok = isinstance(value, (list, tuple)) and all(_network_ok(v) for v in value)
        return ok, tuple(value) if ok else value
    if kind == "routes":
        ok = isinstance(value, (list, tuple)) and all(_route_ok(r) for r in value)
        return ok, tuple(value) if ok else value
    if kind == "strs":
        ok = isinstance(value, (list, tuple)) and all(isinstance(v, str) and v for v in value)
        return ok, tuple(value) if ok else value
    if kind == "argvs":
        ok = isinstance(value, dict) and all(
            isinstance(k, str)
            and _executor_name(k) is None
            and isinstance(v, (list, tuple))
            and len(v) > 0
            and all(isinstance(a, str) and a for a in v)
            for k, v in value.items()
        )
        return ok, {k: tuple(v) for k, v in value.items()} if ok else value
    if kind == "claims":
        ok = isinstance(value, dict) and all(
            isinstance(k, str)
            and k
            and isinstance(v, (list, tuple))
            and all(_claim_ok(r) for r in v)
            for k, v in value.items()
        )
        return ok, {k: tuple(v) for k, v in value.items()} if ok else value
    if kind == "tcpservices":
        return _tcp_services(value)
    if kind == "tcplisteners":
        return _tcp_listeners(value)
    if kind == "visitorconnects":
        return _visitor_connects(value)
    if kind == "dids":
        ok = isinstance(value, (list, tuple)) and all(
            isinstance(v, str) and _did(v) is None for v in value
        )
        return ok, tuple(value) if ok else value
    if kind == "hosts":
        ok = isinstance(value, (list, tuple)) and all(_host_ok(v) for v in value)
        return ok, tuple(v.lower() for v in value) if ok else value
    if kind == "hostpatterns":
        ok = isinstance(value, (list, tuple)) and all(_host_pattern_ok(v) for v in value)
        return ok, tuple(v.lower() for v in value) if ok else value
    if kind == "str":
        ok = isinstance(value, str) and (not check.nonempty or value != "")
        return ok, value
    raise AssertionError(f"unknown kind {kind}")  # pragma: no cover


# --- parsing -------------------------------------------------------------------------------


def _fields_of(cls: type) -> dict[str, Field[Any]]:
    return {f.name: f for f in fields(cls) if not f.metadata.get("internal")}


class _Parser:
    def __init__(self, option_paths: frozenset[str]) -> None:
        self.option_paths = option_paths
        self.ignored: list[str] = []

    def fail(self, section: tuple[str, ...], key: str | None, problem: str) -> ConfigError:
        path = ".".join((*section, key) if key is not None else section)
        return ConfigError(
            f"{_where(section, key)}: {problem}", path=path, from_option=path in self.option_paths
        )

    def section(
        self, cls: type, default: Any, data: Mapping[str, Any], path: tuple[str, ...]
    ) -> Any:
        known = _fields_of(cls)
        ignorable = _IGNORED.get(path, frozenset())
        given: dict[str, Any] = {}
        for key, value in data.items():
            spec = known.get(key)
            if spec is None:
                given_key = str(key)
                if given_key in ignorable:
                    self.ignored.append(_where(path, given_key))
                    continue
                raise self._unknown(known, given_key, value, path)
            if spec.metadata.get("section"):
                if not isinstance(value, Mapping):
                    sub = "[" + ".".join((*path, key)) + "]"
                    raise self.fail(path, key, f"expected a table {sub}, got {_show(value)}")
                given[key] = self.section(
                    type(getattr(default, key)), getattr(default, key), value, (*path, key)
                )
                continue
            converted, problem = _check_value(spec.metadata["check"], value)
            if problem is not None:
                raise self.fail(path, key, problem)
            given[key] = converted
        return replace(default, **given)

    def _unknown(
        self, known: dict[str, Field[Any]], key: str, value: Any, path: tuple[str, ...]
    ) -> ConfigError:
        table = isinstance(value, Mapping)
        names = [n for n, f in known.items() if bool(f.metadata.get("section")) == table]
        close = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
        if not table:
            return self.fail(
                path, key, "unknown key" + (f" (did you mean {close[0]}?)" if close else "")
            )
        if close:
            hint = f" (did you mean {_where((*path, close[0]))}?)"
        elif not path:
            hint = " (sections are [logging], [gateway], [receiver], [command] and [visitor])"
        else:
            hint = ""
        dotted = ".".join((*path, key))
        return ConfigError(
            f"{_where((*path, key))}: unknown section{hint}",
            path=dotted,
            from_option=any(p.startswith(dotted + ".") for p in self.option_paths),
        )


def _set_path(data: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = data
    for i, name in enumerate(parents):
        child = node.get(name)
        if child is None:
            child = node[name] = {}
        elif not isinstance(child, dict):
            where = _where(tuple(parents[:i]), name)
            raise ConfigError(f"{where}: expected a table, got {_show(child)}", path=name)
        node = child
    node[leaf] = value


def _has_path(data: Mapping[str, Any], dotted: str) -> bool:
    node: Any = data
    for name in dotted.split("."):
        if not isinstance(node, Mapping) or name not in node:
            return False
        node = node[name]
    return True


def _drop_path(data: dict[str, Any], dotted: str) -> None:
    *parents, leaf = dotted.split(".")
    node: Any = data
    for name in parents:
        node = node.get(name) if isinstance(node, dict) else None
    if isinstance(node, dict):
        node.pop(leaf, None)


# Keys that say the same thing in different ways: an option setting one of them
# replaces whatever the file said with the others (option > file).
_ALTERNATIVES = (
    (
        "receiver.local_app_module",
        "receiver.local_url",
        "receiver.local_port",
        "receiver.local_host",
    ),
    ("receiver.gateway_url", "receiver.gateway_urls"),
)


def _deep_copy(data: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, Mapping) else v for k, v in data.items()}


def parse_config(data: Mapping[str, Any], overrides: Mapping[str, Any] | None = None) -> Config:
    """A validated :class:`Config` from parsed TOML ``data`` and dotted-key ``overrides``.

    ``overrides`` maps dotted keys (``"gateway.port"``, ``"mode"``) to values
    and wins over ``data``. Raises :class:`ConfigError`.
    """
    merged = _deep_copy(data)
    overrides = dict(overrides or {})
    for group in _ALTERNATIVES:
        if any(k in overrides for k in group):
            for k in group:
                if k not in overrides:
                    _drop_path(merged, k)
    for dotted, value in overrides.items():
        _set_path(merged, dotted, value)
    parser = _Parser(frozenset(overrides))
    cfg: Config = parser.section(Config, Config(), merged, ())
    explicit_url = any(_has_path(merged, k) for k in _ALTERNATIVES[1])
    if cfg.mode == "both" and not explicit_url:
        # The receiver of `both` talks to this very gateway.
        cfg = replace(
            cfg, receiver=replace(cfg.receiver, gateway_url=_local_tunnel_url(cfg.gateway))
        )
    cfg = replace(cfg, ignored=tuple(parser.ignored))
    _cross_check(cfg, merged, parser)
    return cfg


def _local_tunnel_url(g: GatewayConfig) -> str:
    host = g.wss_host
    if host in _WILDCARD_HOSTS:
        host = "::1" if host == "::" else "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"{'wss' if g.tls.enabled else 'ws'}://{host}:{g.wss_port}"


def _cross_check(cfg: Config, merged: Mapping[str, Any], parser: _Parser) -> None:
    g, r = cfg.gateway, cfg.receiver
    fail = parser.fail
    for side, tls in ((("gateway", "tls"), g.tls), (("receiver", "tls"), r.tls)):
        if tls.key_file and not tls.cert_file:
            raise fail(side, "key_file", "needs cert_file as well")
    if g.tls.enabled and not g.tls.cert_file:
        raise fail(("gateway", "tls"), "cert_file", "required when enabled = true")
    if g.tls.cert_file and not g.tls.enabled and not _has_path(merged, "gateway.tls.enabled"):
        # anp-proxy's default was enabled = true: never serve plaintext by an omission
        raise fail(
            ("gateway", "tls"),
            "enabled",
            "cert_file is set but enabled is not: set enabled = true to serve HTTPS and wss://"
            " (or false for plain HTTP)",
        )
    for side, auth in ((("gateway", "auth"), g.auth), (("receiver", "auth"), r.auth)):
        if auth.shared_secret and auth.shared_secret_file:
            raise fail(side, "shared_secret_file", "conflicts with shared_secret; set only one")
    if g.admin_token and g.admin_token_file:
        raise fail(("gateway",), "admin_token_file", "conflicts with admin_token; set only one")
    _cross_check_did(cfg, fail)
    if g.chunk_size > g.max_frame_size:
        raise fail(
            ("gateway",), "chunk_size", f"must not exceed max_frame_size ({g.max_frame_size})"
        )
    if r.chunk_size > r.max_frame_size:
        raise fail(
            ("receiver",), "chunk_size", f"must not exceed max_frame_size ({r.max_frame_size})"
        )
    listeners = [("port", g.host, g.port), ("wss_port", g.wss_host, g.wss_port)]
    if g.admin_port:
        listeners.append(("admin_port", g.admin_host, g.admin_port))
    for i, (name, host, port) in enumerate(listeners):
        for other, other_host, other_port in listeners[:i]:
            overlap = host == other_host or host in _WILDCARD_HOSTS or other_host in _WILDCARD_HOSTS
            if port and port == other_port and overlap:
                raise fail(("gateway",), name, f"{port} is already taken by {other}")
    _check_command(cfg.command, fail)
    if r.local_app_module is not None and r.local_url is not None:
        raise fail(("receiver",), "local_url", "conflicts with local_app_module; set only one")
    if r.local_url is not None and _has_path(merged, "receiver.local_port"):
        raise fail(("receiver",), "local_url", "conflicts with local_port; set only one")
    if _has_path(merged, "receiver.gateway_url") and _has_path(merged, "receiver.gateway_urls"):
        raise fail(("receiver",), "gateway_urls", "conflicts with gateway_url; set only one")
    for url in r.urls:
        if r.tls.enabled and urlsplit(url).scheme != "wss":
            key = "gateway_urls" if r.gateway_urls else "gateway_url"
            raise fail(
                ("receiver",),
                key,
                f"must be wss:// when [receiver.tls] enabled = true, got {_show(url)}",
            )


def _cross_check_did(cfg: Config, fail: Callable[..., ConfigError]) -> None:
    g, r = cfg.gateway.auth, cfg.receiver.auth
    if cfg.mode in ("gateway", "both") and g.did_wba_enabled:
        if not g.did_fetch and not g.did_documents_dir:
            raise fail(("gateway", "auth"), "did_fetch", "false needs did_documents_dir")
        if not g.did_service_domains and cfg.gateway.wss_host in _WILDCARD_HOSTS:
            raise fail(
                ("gateway", "auth"),
                "did_service_domains",
                "required with did_wba_enabled when wss_host is a wildcard: "
                "the gateway's public host name(s), which receivers sign",
            )
    if cfg.mode == "both" and g.did_wba_enabled and not r.did_wba_enabled:
        # the built-in receiver would be refused by its own gateway, one 4003 after another
        raise fail(
            ("receiver", "auth"),
            "did_wba_enabled",
            'must be true in mode "both" when [gateway.auth] did_wba_enabled = true: the '
            "built-in receiver signs with a DID (did_document_path, private_key_path)",
        )
    if cfg.mode in ("receiver", "both") and r.did_wba_enabled:
        for key in ("did_document_path", "private_key_path"):
            if not getattr(r, key):
                raise fail(("receiver", "auth"), key, "required when did_wba_enabled = true")
    both_did = cfg.mode == "both" and g.did_wba_enabled
    if both_did and g.allowed_dids and r.did and r.did not in g.allowed_dids:
        raise fail(("receiver", "auth"), "did", "is not in [gateway.auth] allowed_dids")


def _check_command(c: CommandConfig, fail: Callable[..., ConfigError]) -> None:
    section = ("command",)
    if c.token and c.token_file:
        raise fail(section, "token_file", "conflicts with token; set only one")
    for root in c.roots:
        if not Path(root).expanduser().is_absolute():
            raise fail(section, "roots", f"expected absolute paths, got {_show(root)}")
    if c.enabled and not c.roots:
        raise fail(
            section, "roots", "required when enabled = true: the directories sessions may use"
        )
    if c.max_sessions > c.max_retained:
        raise fail(section, "max_sessions", f"must not exceed max_retained ({c.max_retained})")
    if c.max_output_bytes < 1024:
        raise fail(section, "max_output_bytes", "expected at least 1024 bytes")
    taken = {"claude", "codex", "gemini"} & set(c.executors or {})
    if taken:
        raise fail(section, "executors", f"{sorted(taken)[0]} is a built-in executor")


def load_config(
    path: str | Path | None = None, overrides: Mapping[str, Any] | None = None
) -> Config:
    """Read ``path`` (TOML; None: defaults only) and apply ``overrides`` (see :func:`parse_config`)."""
    data: dict[str, Any] = {}
    if path is not None:
        name = str(path)
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except OSError as exc:
            raise ConfigError(f"cannot read {name}: {exc.strerror or exc}") from exc
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{name}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{name}: invalid TOML: {exc}") from exc
    return parse_config(data, overrides)


# --- engine settings -----------------------------------------------------------------------


def uuid4_text() -> str:
    """``str(uuid.uuid4())`` at half the cost (one per request): 16 random bytes with the
    version 4 and RFC 4122 variant bits set, as 8-4-4-4-12 lower-case hex."""
    raw = bytearray(os.urandom(16))
    raw[6] = raw[6] & 0x0F | 0x40
    raw[8] = raw[8] & 0x3F | 0x80
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def to_gateway_settings(cfg: Config | GatewayConfig) -> GatewaySettings:
    """The gateway core's limits from ``cfg`` (authentication is the driver's to attach)."""
    import ipaddress

    from anpx_core import messages as M
    from anpx_core.http1 import FrontLimits
    from anpx_core.ratelimit import make_limiter
    from anpx_core.routing import parse_route
    from anpx_core.websocket import WsLimits

    g = cfg.gateway if isinstance(cfg, Config) else cfg
    return GatewaySettings(
        timeout=g.timeout,
        max_streams_per_receiver=g.max_streams_per_receiver,
        max_connections=g.max_connections,
        front=FrontLimits(
            max_header_bytes=g.max_header_bytes,
            max_body_bytes=g.max_body_bytes,
            header_timeout=g.header_timeout,
            keepalive_timeout=g.keepalive_timeout,
        ),
        # One ANPX frame travels in one WebSocket message.
        ws=WsLimits(
            max_message_size=g.max_frame_size,
            ping_interval=g.ping_interval,
            max_pings_per_minute=g.max_pings_per_minute,
            max_backlog=g.max_tunnel_backlog,
        ),
        stream_window=g.stream_window or None,
        send_frame_size=g.chunk_size,
        codec=M.Limits(
            max_frame_size=g.max_frame_size,
            max_headless_total=g.max_body_before_head,
            v1_max_frame_size=g.v1_max_frame_size,
        ),
        trusted_proxies=[ipaddress.ip_network(n, strict=False) for n in g.trusted_proxies],
        route_claims=None
        if g.route_claims is None
        else {
            rid: [parse_route(r) for r in routes if not r.startswith("tcp:")]
            for rid, routes in g.route_claims.items()
        },
        rate_limit=make_limiter(g.rate_limit, g.rate_burst),
        max_output_bytes=g.max_output_bytes,
        max_connections_per_address=g.max_connections_per_address,
        max_streams_per_address=g.max_streams_per_address,
        send_timeout=g.send_timeout,
        websocket=to_ws_settings(g.websocket),
        new_request_id=uuid4_text,
        tcp=GatewayTcpSettings(
            limits=TcpSettings(
                g.tcp_idle_timeout, g.tcp_open_timeout, g.tcp_keepalive, g.tcp_stream_window
            ),
            listeners=[
                TcpListen(
                    port,
                    service,
                    host or g.host,
                    [ipaddress.ip_network(a, strict=False) for a in allow],
                )
                for port, service, host, allow in g.tcp
            ],
            service_claims=None
            if g.route_claims is None
            else {
                rid: [r[4:] for r in routes if r.startswith("tcp:")]
                for rid, routes in g.route_claims.items()
            },
        ),
    )


def to_receiver_settings(cfg: Config | ReceiverConfig) -> ReceiverSettings:
    """The receiver core's settings from ``cfg`` (authentication is the driver's to attach)."""

    from anpx_core import messages as M
    from anpx_core.tunnel import DEFAULT_STREAM_WINDOW
    from anpx_core.websocket import WsLimits

    r = cfg.receiver if isinstance(cfg, Config) else cfg
    return ReceiverSettings(
        gateway_urls=list(r.urls),
        client_id=r.client_id,
        forward=r.forward,
        reconnect_enabled=r.reconnect_enabled,
        reconnect_delay=r.reconnect_delay,
        max_reconnect_attempts=r.max_reconnect_attempts,
        jitter=random.random,
        mask_source=os.urandom,  # WebSocket masking keys (RFC 6455: unpredictable)
        # The seed used `timeout` for the keepalive ping's answer and the handshake alike.
        ws=WsLimits(
            max_message_size=r.max_frame_size,
            ping_interval=r.ping_interval,
            ping_timeout=r.timeout,
            handshake_timeout=r.timeout,
            max_pings_per_minute=r.max_pings_per_minute,
            max_backlog=r.max_tunnel_backlog,
        ),
        stream_window=r.stream_window or None,
        send_frame_size=r.chunk_size,
        codec=M.Limits(
            max_frame_size=r.max_frame_size,
            max_headless_total=r.max_body_before_head,
            v1_max_frame_size=r.v1_max_frame_size,
        ),
        v1_ping_interval=r.v1_ping_interval,
        # With flow control the gateway may send a whole window before the app reads.
        max_buffered_body=max(r.stream_window, DEFAULT_STREAM_WINDOW),
        root_path=r.root_path,
        routes=list(r.routes),
        max_concurrent_requests=r.max_concurrent_requests,
        websocket=to_ws_settings(r.websocket),
        learn_endpoints=r.learn_endpoints,
        max_learned_endpoints=r.max_learned_endpoints,
        tcp_services={name: parse_hostport(local) for name, local in r.tcp},
        tcp=TcpSettings(
            idle_timeout=r.tcp_idle_timeout,
            keepalive=r.tcp_keepalive,
            window=r.tcp_stream_window,
        ),
    )
