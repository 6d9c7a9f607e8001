"""Plain binary WebSocket frames without wsproto's per-frame machinery: the tunnel's common case.

Every ANPX frame travels as one binary WebSocket message, almost always in one frame:
FIN set, no RSV bit, opcode 2, the length in its shortest encoding, masked exactly when
the client sends it. wsproto builds and parses such a frame through several layers of
objects (event, header tuple, buffer, masker, generator), which cost more per small
request than the ANPX codec itself. This module writes and reads those frames directly;
:mod:`anpx_core.websocket` uses it only while wsproto holds no state of its own (no bytes
buffered, no fragmented message in progress, no extension), and hands anything else --
control frames, fragments, RSV bits, a wrong mask bit, a non-minimal length, a frame cut
short, a message over the size limit -- to wsproto unchanged, so what is accepted and how
a bad frame is refused stays wsproto's decision (tests/test_wsframe.py compares both paths
on hostile input, byte split by byte split).

:func:`wsproto_idle` reads wsproto's private state; :data:`AVAILABLE` is False (and the
callers keep using wsproto for everything) if a wsproto release no longer has it.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from wsproto.connection import Connection, ConnectionState, ConnectionType

from .wsmask import apply_mask

__all__ = ["AVAILABLE", "MaskKeys", "binary_header", "plain_binary", "wsproto_idle"]

#: FIN, no RSV bit, opcode 2 (binary): the first byte of every frame handled here.
FIN_BINARY = 0x82
MASK_BIT = 0x80
_LEN16 = struct.Struct("!BBH")
_LEN64 = struct.Struct("!BBQ")
#: Key bytes drawn from the entropy source at a time (a syscall per 1024 frames, not per frame).
KEY_POOL = 4096


def binary_header(size: int, mask_bit: int) -> bytes:
    """The header of one final binary frame of ``size`` payload bytes, as wsproto writes it
    (the shortest length encoding; ``mask_bit``: 0x80 for a client's frame, which the
    4-byte masking key follows)."""
    if size <= 125:
        return bytes((FIN_BINARY, mask_bit | size))
    if size <= 0xFFFF:
        return _LEN16.pack(FIN_BINARY, mask_bit | 126, size)
    return _LEN64.pack(FIN_BINARY, mask_bit | 127, size)


def plain_binary(data: bytes, pos: int, masked: bool, limit: int) -> tuple[bytes, int] | None:
    """The (unmasked) payload of the frame at ``data[pos:]`` and the offset after it, when
    that frame is a whole plain binary message: FIN, no RSV bit, opcode 2, the mask bit
    equal to ``masked``, the shortest length encoding, at most ``limit`` payload bytes, all
    of it in ``data``. None for anything else (the caller lets wsproto parse it)."""
    end = len(data)
    at = pos + 2
    if at > end or data[pos] != FIN_BINARY:
        return None
    second = data[pos + 1]
    if (second & MASK_BIT) != (MASK_BIT if masked else 0):
        return None
    size = second & 0x7F
    if size == 126:
        if at + 2 > end:
            return None
        size = (data[at] << 8) | data[at + 1]
        at += 2
        if size <= 125:
            return None
    elif size == 127:
        if at + 8 > end:
            return None
        size = int.from_bytes(data[at : at + 8], "big")
        at += 8
        if size <= 0xFFFF or size >> 63:
            return None
    if size > limit:
        return None
    if masked:
        key = data[at : at + 4]
        at += 4
        stop = at + size
        if stop > end:
            return None
        return apply_mask(data[at:stop], key), stop
    stop = at + size
    if stop > end:
        return None
    return data[at:stop], stop


def wsproto_idle(connection: Any) -> bool:
    """True when the open wsproto ``Connection`` holds nothing: no event queued, no byte
    buffered, no frame or fragmented message begun, no extension, nothing sent half-way.
    Only then may a whole plain frame go around it without changing what it would do."""
    if connection is None or connection._state is not ConnectionState.OPEN or connection._events:
        return False
    proto = connection._proto
    decoder = proto._frame_decoder
    return (
        decoder.header is None
        and not decoder.buffer.buffer
        and proto._message_decoder.opcode is None
        and proto._outbound_opcode is None
        and not proto.extensions
    )


def _check_wsproto() -> bool:
    """Does this wsproto have the private state :func:`wsproto_idle` reads, as expected?"""
    try:
        fresh = Connection(ConnectionType.SERVER)
        return wsproto_idle(fresh) and isinstance(
            fresh._proto._frame_decoder.buffer.buffer, bytearray
        )
    except AttributeError:
        return False


#: The fast path may be used with this wsproto.
AVAILABLE = _check_wsproto()


class MaskKeys:
    """Fresh masking keys (RFC 6455 5.3: from a strong entropy source, unpredictable)
    for a client's frames, 4 bytes at a time from ``source(KEY_POOL)`` bytes."""

    __slots__ = ("_at", "_pool", "_source")

    def __init__(self, source: Callable[[int], bytes]) -> None:
        self._source = source
        self._pool = b""
        self._at = 0

    def take(self) -> bytes:
        at = self._at
        if at + 4 > len(self._pool):
            pool = self._source(KEY_POOL)
            if type(pool) is not bytes or len(pool) != KEY_POOL:
                raise ValueError(f"the entropy source must return {KEY_POOL} bytes")
            self._pool, at = pool, 0
        self._at = at + 4
        return self._pool[at : at + 4]
