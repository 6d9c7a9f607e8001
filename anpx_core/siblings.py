"""Sibling tunnel endpoints: a gateway of several worker processes names them all in its 101.

A multi-worker gateway (``[gateway] workers = N``) has one tunnel listener per worker. Each
worker's ``101`` carries ``anpx-tunnel-ports: 8765, 8766, ...``: every worker's tunnel port,
on the host name, scheme and path the receiver dialled (docs/protocol.md §15.1). A receiver
configured with one URL learns the others and holds a tunnel to each, so whichever worker
accepts a client's request has a receiver to send it to.

The value is hostile input: ports are ASCII digits in 1..65535, at most ``limit`` of them;
anything else makes the whole header unusable (the receiver then keeps what it has).
"""

from __future__ import annotations

from .strict import MAX_PORT, StrictError, parse_uint

__all__ = ["MAX_HEADER_LENGTH", "TUNNEL_PORTS_HEADER", "format_tunnel_ports", "parse_tunnel_ports"]

TUNNEL_PORTS_HEADER = "anpx-tunnel-ports"
MAX_HEADER_LENGTH = 4096  # longer values are refused before splitting


def format_tunnel_ports(ports: list[int]) -> list[tuple[str, str]]:
    """The 101 header naming ``ports`` (none for a single-process gateway)."""
    if not ports:
        return []
    return [(TUNNEL_PORTS_HEADER, ", ".join(str(p) for p in ports))]


def parse_tunnel_ports(value: str, limit: int) -> list[int]:
    """The ports named by one ``anpx-tunnel-ports`` value, in order, duplicates dropped.

    Raises StrictError for an empty or over-long value, an item that is not a port, or more
    than ``limit`` distinct ports.
    """
    if len(value) > MAX_HEADER_LENGTH:
        raise StrictError(f"{TUNNEL_PORTS_HEADER} longer than {MAX_HEADER_LENGTH} characters")
    ports: list[int] = []
    for item in value.split(","):
        port = parse_uint(item.strip(" \t"), MAX_PORT, "tunnel port", minimum=1)
        if port in ports:
            continue
        if len(ports) >= limit:
            raise StrictError(f"{TUNNEL_PORTS_HEADER} names more than {limit} ports")
        ports.append(port)
    return ports
