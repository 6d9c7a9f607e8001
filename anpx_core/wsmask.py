"""WebSocket masking (RFC 6455 section 5.3) at C speed, plugged into wsproto.

Every frame a client (our receiver) sends is masked: XORed with a 4-byte key, and the
server (our gateway) XORs it again to unmask. wsproto does this in Python (four strided
``bytes.translate`` passes per call, about 200 MB/s here), which made response bodies (the
receiver-to-gateway direction) the slowest part of the tunnel: a 64 MiB download spent a
third of both processes' time masking and unmasking.

:class:`Masker` is a drop-in for ``wsproto.frame_protocol.XorMaskerSimple`` (the same
``process(data)`` contract: XOR with the key, and rotate the key so the next call on the
same frame continues where this one stopped) whose XOR is ``websockets.speedups.apply_mask``
(C, tens of GB/s) when installed, else :func:`mask_python`. :func:`install` makes wsproto
use it; wsproto stays the WebSocket state machine, only its XOR loop is replaced. wsproto
looks the class up in its module each time it masks or unmasks a frame, so installing it
is one assignment. The result is byte for byte the same (tests/test_wsmask.py proves it on
arbitrary payloads, keys and chunkings), so other wsproto users in the process are not
affected beyond the speed.
"""

from __future__ import annotations

from collections.abc import Callable

import wsproto.frame_protocol as _frame_protocol

__all__ = ["ACCELERATED", "WSPROTO_MASKER", "Masker", "apply_mask", "install", "mask_python"]

_XOR = [bytes(i ^ k for i in range(256)) for k in range(256)]
#: wsproto's own masker, as imported (before :func:`install`).
WSPROTO_MASKER = _frame_protocol.XorMaskerSimple


def mask_python(data: bytes | bytearray, key: bytes | bytearray) -> bytes:
    """``data`` XOR the 4-byte ``key`` repeated: byte ``i`` with ``key[i % 4]``.

    Each of the four byte lanes (every 4th byte) goes through one ``translate`` table, so
    the loop over bytes stays in C even without the accelerator.
    """
    out = bytearray(data)
    for lane in range(4):
        out[lane::4] = out[lane::4].translate(_XOR[key[lane]])
    return bytes(out)


def _accelerator() -> Callable[[bytes | bytearray, bytes | bytearray], bytes] | None:
    """websockets' C routine, if installed and it agrees with :func:`mask_python`."""
    try:
        from websockets.speedups import apply_mask as c_mask
    except ImportError:  # websockets absent, or built without its C extension
        return None
    sample, key = bytes(range(251)) * 3, b"\x9a\x01\xff\x5c"
    try:
        agrees = c_mask(sample, key) == mask_python(sample, key)
    except (TypeError, ValueError):  # an interface change in a future websockets
        return None
    return c_mask if agrees else None


_C_MASK = _accelerator()
#: True when masking runs in C (``websockets.speedups``).
ACCELERATED = _C_MASK is not None
#: The XOR used by :class:`Masker`: the accelerator when present, else pure Python.
apply_mask: Callable[[bytes | bytearray, bytes | bytearray], bytes] = _C_MASK or mask_python


class Masker:
    """Masks (or unmasks) one frame's payload, possibly in pieces; wsproto's interface."""

    __slots__ = ("_key", "_mask")

    def __init__(
        self,
        masking_key: bytes | bytearray,
        mask: Callable[[bytes | bytearray, bytes | bytearray], bytes] | None = None,
    ) -> None:
        self._key = bytes(masking_key)
        self._mask = mask or apply_mask

    def process(self, data: bytes | bytearray) -> bytes:
        if not data:
            return b""
        key = self._key
        out = self._mask(data, key)
        turn = len(data) % 4  # the next piece of this frame starts at this key byte
        if turn:
            self._key = key[turn:] + key[:turn]
        return out


def install() -> bool:
    """Make wsproto mask and unmask with :class:`Masker` when the accelerator is present
    (without it, wsproto's own pure-Python masker is as fast as ours). Idempotent;
    returns whether wsproto now uses :class:`Masker`."""
    if ACCELERATED and hasattr(_frame_protocol, "XorMaskerSimple"):
        _frame_protocol.XorMaskerSimple = Masker  # type: ignore[misc,assignment]
    return getattr(_frame_protocol, "XorMaskerSimple", None) is Masker
