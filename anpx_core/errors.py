"""The one exception the wire codec raises, with a stable machine-readable code."""

from __future__ import annotations

#: Every code a :class:`ProtocolError` may carry, with what it means.
ERROR_CODES: dict[str, str] = {
    "truncated": "the input ended inside a frame",
    "bad_magic": "the frame does not start with b'ANPX'",
    "bad_version": "the frame's version byte is not 1",
    "bad_type": "the frame type is not 0x01, 0x02 or 0xFF",
    "bad_flags": "a reserved flag bit is set",
    "bad_header_crc": "the header CRC-32 does not match bytes 0-11",
    "bad_body_crc": "the body CRC-32 does not match the frame's TLV body",
    "bad_length": "TotalLen is below 24 or disagrees with the message length",
    "bad_tlv": "a TLV runs past the body, repeats, or holds an invalid value",
    "too_large": "a configured limit was exceeded",
    "bad_chunk": "chunk index, total or final marker is inconsistent",
    "bad_meta": "http_meta / resp_meta is not the expected JSON object",
    "missing_field": "a required TLV is absent",
    "bad_record": "a WebSocket stream's record is malformed (docs/protocol.md section 20)",
}


class ProtocolError(Exception):
    """Malformed ANPX input.

    ``code`` is one of :data:`ERROR_CODES`; ``request_id`` names the stream the
    error belongs to when it is known, so a session can fail just that stream.
    """

    def __init__(self, code: str, message: str, request_id: str | None = None) -> None:
        if code not in ERROR_CODES:  # a bug in this package, not bad input
            raise ValueError(f"unknown ProtocolError code {code!r}")
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.request_id = request_id
