"""ANPX v1 frames: a 24-byte header and a TLV body (standard library only).

Header layout (big-endian)::

    0-3   magic b"ANPX"        12-15 HeaderCRC = CRC-32 of bytes 0-11
    4     version 0x01         16-19 BodyCRC   = CRC-32 of this frame's TLV body
    5     type                 20-23 reserved, zero
    6     flags (bit 0 chunked)
    7     reserved, zero
    8-11  TotalLen = 24 + len(body)

TLV: tag u8, length u32, value.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from zlib import crc32

from .errors import ProtocolError

MAGIC = b"ANPX"
VERSION = 1
HEADER_SIZE = 24
TLV_HEADER_SIZE = 5

TYPE_REQUEST = 0x01
TYPE_RESPONSE = 0x02
TYPE_ERROR = 0xFF
FRAME_TYPES = frozenset({TYPE_REQUEST, TYPE_RESPONSE, TYPE_ERROR})

FLAG_CHUNKED = 0x01

TAG_REQUEST_ID = 0x01
TAG_HTTP_META = 0x02
TAG_HTTP_BODY = 0x03
TAG_RESP_META = 0x04
TAG_CHUNK_IDX = 0x0A
TAG_CHUNK_TOT = 0x0B
TAG_FINAL_CHUNK = 0x0C

#: Default largest frame accepted, header included. v1 peers may send whole
#: bodies in one frame, so the receive default is generous; what we send is
#: bounded separately by the encoder's ``max_frame_size``.
DEFAULT_MAX_FRAME_SIZE = 16 * 1024 * 1024

_PREFIX = struct.Struct(">4sBBBBI")  # bytes 0-11
_CRCS = struct.Struct(">III")  # bytes 12-23
_TLV = struct.Struct(">BI")
_U32 = struct.Struct(">I")


@dataclass(slots=True)
class Frame:
    """One decoded frame: its type, flags and TLVs in wire order."""

    type: int
    flags: int = 0
    tlvs: list[tuple[int, bytes]] = field(default_factory=list)

    @property
    def chunked(self) -> bool:
        return bool(self.flags & FLAG_CHUNKED)


def tlv_header(tag: int, length: int) -> bytes:
    return _TLV.pack(tag, length)


def u32(value: int) -> bytes:
    return _U32.pack(value)


def encode_frame(frame_type: int, flags: int, tlvs: list[tuple[int, bytes]]) -> bytes:
    """Serialize one frame. Values may be bytes, bytearray or memoryview."""
    pieces: list[bytes | memoryview] = [b""]
    pack = _TLV.pack
    for tag, value in tlvs:
        pieces.append(pack(tag, len(value)))
        pieces.append(value)
    return assemble(frame_type, flags, pieces)


def assemble(frame_type: int, flags: int, pieces: list[bytes | memoryview]) -> bytes:
    """A frame from its TLV body given as consecutive buffers after an empty ``pieces[0]``.

    ``pieces[0]`` is replaced by the header. The CRC runs over the pieces in
    place, so a large body part is copied once, into the frame.
    """
    body_crc = 0
    body_len = 0
    for piece in pieces:
        body_crc = crc32(piece, body_crc)
        body_len += len(piece)
    prefix = _PREFIX.pack(MAGIC, VERSION, frame_type, flags, 0, HEADER_SIZE + body_len)
    pieces[0] = prefix + _CRCS.pack(crc32(prefix), body_crc, 0)
    return b"".join(pieces)


def _check_header(header: bytes | memoryview, max_frame_size: int) -> tuple[int, int, int, int]:
    """Validate a 24-byte header; return (type, flags, total_len, body_crc)."""
    magic, version, ftype, flags, _reserved, total = _PREFIX.unpack_from(header)
    if magic != MAGIC:
        raise ProtocolError("bad_magic", f"expected b'ANPX', got {bytes(magic)!r}")
    if version != VERSION:
        raise ProtocolError("bad_version", f"version {version} is not supported (only 1)")
    header_crc, body_crc, _zero = _CRCS.unpack_from(header, 12)
    if crc32(header[:12]) != header_crc:
        raise ProtocolError("bad_header_crc", "header CRC-32 mismatch")
    if total < HEADER_SIZE:
        raise ProtocolError("bad_length", f"TotalLen {total} is below the 24-byte header")
    if total > max_frame_size:
        raise ProtocolError("too_large", f"frame of {total} bytes exceeds {max_frame_size}")
    if ftype not in FRAME_TYPES:
        raise ProtocolError("bad_type", f"unknown frame type 0x{ftype:02x}")
    if flags & ~FLAG_CHUNKED:
        raise ProtocolError("bad_flags", f"reserved flag bits set in 0x{flags:02x}")
    return ftype, flags, total, body_crc


def _parse_body(
    buf: bytes | memoryview, start: int, end: int, ftype: int, flags: int, body_crc: int
) -> Frame:
    """TLVs of the body ``buf[start:end]``; ``buf`` is bytes or a memoryview of the frame."""
    # Slicing bytes copies: cheaper than a memoryview for small bodies only.
    small = end - start < 2048 or type(buf) is not bytes
    if crc32(buf[start:end] if small else memoryview(buf)[start:end]) != body_crc:
        raise ProtocolError("bad_body_crc", "body CRC-32 mismatch")
    tlvs: list[tuple[int, bytes]] = []
    pos = start
    unpack = _TLV.unpack_from
    while pos < end:
        if end - pos < TLV_HEADER_SIZE:
            raise ProtocolError("bad_tlv", f"{end - pos} stray bytes after the last TLV")
        tag, length = unpack(buf, pos)
        pos += TLV_HEADER_SIZE
        if length > end - pos:
            raise ProtocolError(
                "bad_tlv", f"TLV 0x{tag:02x} claims {length} bytes, {end - pos} remain"
            )
        tlvs.append((tag, bytes(buf[pos : pos + length])))
        pos += length
    return Frame(ftype, flags, tlvs)


_WHOLE_HEADER = struct.Struct(">4sBBBBIII4x")  # the header, for whole_message()
_META_TAG = {TYPE_REQUEST: TAG_HTTP_META, TYPE_RESPONSE: TAG_RESP_META}


def whole_message(
    data: bytes, max_frame_size: int, max_request_id: int
) -> tuple[int, str, bytes, bytes] | None:
    """(type, request_id, meta, body) of a valid unchunked request or response frame whose
    TLVs are exactly request_id, its type's meta and an optional body, in that order: the
    one frame every sender makes of a small message. None for any other frame, valid or
    not (:func:`decode_frame` and the message decoder then take it and find any fault), so
    a frame read here is one they accept with the same result, without building a
    :class:`Frame` and its TLV list."""
    size = len(data)
    if size < HEADER_SIZE + 2 * TLV_HEADER_SIZE + 1 or size > max_frame_size:
        return None
    magic, version, ftype, flags, _reserved, total, header_crc, body_crc = (
        _WHOLE_HEADER.unpack_from(data)
    )
    meta_tag = _META_TAG.get(ftype)
    if magic != MAGIC or version != VERSION or flags or total != size or meta_tag is None:
        return None
    body = data[HEADER_SIZE:] if size < 2048 else memoryview(data)[HEADER_SIZE:]
    if crc32(data[:12]) != header_crc or crc32(body) != body_crc:
        return None
    unpack = _TLV.unpack_from
    tag, length = unpack(data, HEADER_SIZE)
    pos = HEADER_SIZE + TLV_HEADER_SIZE
    end = pos + length
    if tag != TAG_REQUEST_ID or not 0 < length <= max_request_id or end + TLV_HEADER_SIZE > size:
        return None
    try:
        request_id = data[pos:end].decode("utf-8")
    except UnicodeDecodeError:
        return None
    tag, length = unpack(data, end)
    pos = end + TLV_HEADER_SIZE
    end = pos + length
    if tag != meta_tag or end > size:
        return None
    meta = data[pos:end]
    if end == size:
        return ftype, request_id, meta, b""
    if end + TLV_HEADER_SIZE > size:
        return None
    tag, length = unpack(data, end)
    pos = end + TLV_HEADER_SIZE
    if tag != TAG_HTTP_BODY or pos + length != size:
        return None
    return ftype, request_id, meta, data[pos:]


def decode_frame(
    data: bytes | bytearray | memoryview, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE
) -> Frame:
    """Decode exactly one frame, e.g. one binary WebSocket message."""
    if type(data) is not bytes:
        data = memoryview(data).cast("B")  # a view of any buffer, indexed by byte
    size = len(data)
    if size < HEADER_SIZE:
        raise ProtocolError("truncated", f"{size} bytes is shorter than a frame header")
    ftype, flags, total, body_crc = _check_header(data, max_frame_size)
    if total != size:
        if total > size:
            raise ProtocolError("truncated", f"TotalLen {total}, only {size} bytes")
        raise ProtocolError("bad_length", f"TotalLen {total}, message holds {size} bytes")
    return _parse_body(data, HEADER_SIZE, size, ftype, flags, body_crc)


class FrameDecoder:
    """Incremental decoder for a byte stream of concatenated frames.

    ``feed`` accepts any split of the stream and returns the frames it
    completed; a partial frame stays buffered (never more than one frame,
    bounded by ``max_frame_size``). Call ``close`` at end of stream: it raises
    ``truncated`` if a partial frame is left. After an error the decoder is
    unusable: the stream has lost framing and cannot be resynchronised.
    """

    def __init__(self, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> None:
        if max_frame_size < HEADER_SIZE:
            raise ValueError(f"max_frame_size must be at least {HEADER_SIZE}")
        self.max_frame_size = max_frame_size
        self._buf = bytearray()
        self._header: tuple[int, int, int, int] | None = None
        self._error: ProtocolError | None = None

    @property
    def buffered(self) -> int:
        """Bytes held for a frame not yet complete."""
        return len(self._buf)

    def feed(self, data: bytes | bytearray | memoryview) -> list[Frame]:
        if self._error is not None:
            raise self._error
        self._buf += data
        frames: list[Frame] = []
        buf = self._buf
        try:
            while True:
                if self._header is None:
                    if len(buf) < HEADER_SIZE:
                        break
                    self._header = _check_header(bytes(buf[:HEADER_SIZE]), self.max_frame_size)
                ftype, flags, total, body_crc = self._header
                if len(buf) < total:
                    break
                with memoryview(buf) as view:  # released before buf is resized
                    frames.append(_parse_body(view, HEADER_SIZE, total, ftype, flags, body_crc))
                del buf[:total]
                self._header = None
        except ProtocolError as exc:
            self._error = exc
            raise
        return frames

    def close(self) -> None:
        """Declare end of stream; raise ``truncated`` if a frame was cut short."""
        if self._error is None and self._buf:
            self._error = ProtocolError(
                "truncated", f"stream ended with {len(self._buf)} bytes of a frame"
            )
        if self._error is not None:
            raise self._error
