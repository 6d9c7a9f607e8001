"""What a receiver is told: its settings, the gateways' addresses, the connections it asks for."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from .. import messages as M
from ..auth import ClientAuth, NoAuth
from ..tcp import TcpSettings
from ..tunnel import DEFAULT_HIGH_WATER, DEFAULT_STREAM_WINDOW
from ..websocket import WsLimits
from ..ws_relay import WsSettings

MAX_RECONNECT_DELAY = 60.0


def no_jitter() -> float:
    """The default jitter source: always the middle of [0, 1), i.e. no jitter at all."""
    return 0.5


@dataclass(slots=True)
class GatewayAddress:
    host: str
    port: int
    path: str
    tls: bool

    @classmethod
    def parse(cls, url: str) -> GatewayAddress:
        parts = urlsplit(url)
        if parts.scheme not in ("ws", "wss") or not parts.hostname:
            raise ValueError(f"gateway_url must be ws://host[:port]/path or wss://..., got {url!r}")
        tls = parts.scheme == "wss"
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        return cls(parts.hostname, parts.port or (443 if tls else 80), path, tls)

    @property
    def host_header(self) -> str:
        default = 443 if self.tls else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default else f"{host}:{self.port}"


#: seconds for the tunnel handshake and for a keepalive ping's answer (the seed's `timeout`)
RECEIVER_TIMEOUT = 30.0


@dataclass(slots=True)
class ReceiverSettings:
    gateway_urls: list[str] = field(default_factory=lambda: ["ws://127.0.0.1:8765/"])
    client_id: str = ""
    forward: tuple[str, int] | None = None  # local HTTP service; None: in-process ASGI app
    reconnect_enabled: bool = True
    reconnect_delay: float = 1.0  # first retry; doubles up to MAX_RECONNECT_DELAY, with jitter
    max_reconnect_attempts: int = 0  # 0 = forever
    # A value in [0, 1) per retry: the delay is scaled by 0.5 + jitter() (x0.5 .. x1.5) so
    # receivers cut off together do not all come back at once. The host passes
    # random.random; the default, 0.5, means no jitter (deterministic, for tests).
    jitter: Callable[[], float] = no_jitter
    ws: WsLimits = field(
        default_factory=lambda: WsLimits(
            ping_timeout=RECEIVER_TIMEOUT, handshake_timeout=RECEIVER_TIMEOUT
        )
    )
    stream_window: int | None = DEFAULT_STREAM_WINDOW
    send_frame_size: int = M.DEFAULT_SEND_FRAME_SIZE
    codec: M.Limits = field(default_factory=M.Limits)
    max_buffered_body: int = DEFAULT_STREAM_WINDOW  # request body held for an app not reading
    high_water: int = DEFAULT_HIGH_WATER  # tunnel output backlog at which producers pause
    max_idle_upstreams: int = 8  # forward mode: keep-alive connections kept for reuse
    max_concurrent_requests: int = 1000  # beyond it the receiver itself answers 503
    v1_ping_interval: float = 5.0  # JSON ping period towards a v1 gateway (its window: 20 s)
    auth: ClientAuth = field(default_factory=NoAuth)
    root_path: str = ""
    routes: list[str] = field(
        default_factory=list
    )  # claimed in the handshake; []: the default route
    # WebSockets to the app or the local service ([receiver.websocket], docs/websocket.md)
    websocket: WsSettings = field(default_factory=WsSettings.receiver_defaults)
    # A multi-worker gateway names its workers' tunnel ports in its 101 (anpx-tunnel-ports):
    # hold a tunnel to each of them too, at most this many beyond the configured URLs.
    learn_endpoints: bool = True
    max_learned_endpoints: int = 64
    # TCP services offered in the handshake: name -> local (host, port) (protocol.md §21)
    tcp_services: dict[str, tuple[str, int]] = field(default_factory=dict)
    tcp: TcpSettings = field(default_factory=TcpSettings)
    # n unpredictable bytes (the host passes os.urandom): the masking keys of our WebSocket
    # frames, drawn 4 KiB at a time. None: wsproto draws one key per frame itself.
    mask_source: Callable[[int], bytes] | None = None


@dataclass(slots=True)
class ConnectRequest:
    cid: int
    host: str
    port: int
    tls: bool
    purpose: str  # "gateway", "upstream" or "tcp" (a local TCP service: half-close)
