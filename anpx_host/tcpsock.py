"""Socket options for TCP streams, shared by both drivers: TCP_NODELAY, keepalive, resets."""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import socket
import struct
from typing import Any


def tune(sock: Any, keepalive: float) -> None:
    """TCP_NODELAY (interactive traffic), and keepalive probes after ``keepalive`` idle
    seconds (0: off) so a peer that vanished is noticed; best effort on every platform."""
    if sock is None:
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if keepalive <= 0:
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        idle = max(1, int(keepalive))
        if hasattr(socket, "TCP_KEEPIDLE"):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle)
        if hasattr(socket, "TCP_KEEPINTVL"):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, max(1, idle // 4))
        if hasattr(socket, "TCP_KEEPCNT"):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 4)


@functools.lru_cache(maxsize=256)  # service addresses come from the configuration
def numeric_family(host: str) -> int | None:
    """The address family of a numeric IP address; None for a name (it needs resolving)."""
    try:
        version = ipaddress.ip_address(host).version
    except ValueError:
        return None
    return socket.AF_INET6 if version == 6 else socket.AF_INET


def reset_on_close(sock: Any) -> None:
    """Make the next close send a RST (SO_LINGER 0): a reset stream resets its socket."""
    if sock is None:
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def parse_hostport(text: str, what: str = "address", *, any_port: bool = False) -> tuple[str, int]:
    """``127.0.0.1:5432`` / ``[::1]:22`` -> (host, port); ValueError with the reason.
    ``any_port``: port 0 (a free port, for listeners) is allowed."""
    host, sep, port = text.strip().rpartition(":")
    if not sep or not host:
        raise ValueError(f"{what} must be HOST:PORT, got {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if (
        not port.isascii()
        or not port.isdigit()
        or len(port) > 5
        or not (0 if any_port else 1) <= int(port) <= 65535
    ):
        raise ValueError(f"{what} has a bad port: {text!r}")
    return host, int(port)
