#!/usr/bin/env python3
"""Generate conformance/vectors/*.json from first principles.

Standard library only and deliberately independent of anpx_core: every frame
is assembled here with struct, zlib.crc32 and json.dumps, and every meta JSON
is written out by hand, so the vectors check a codec instead of echoing one.
The worked example is asserted against the 203 bytes quoted from the reference.

    python conformance/make_vectors.py            # rewrite conformance/vectors/
    python conformance/make_vectors.py --out DIR  # write elsewhere
"""

from __future__ import annotations

import argparse
import itertools
import json
import struct
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

REQ, RESP, ERR = 0x01, 0x02, 0xFF
T_RID, T_META, T_BODY, T_RESP_META = 0x01, 0x02, 0x03, 0x04
T_IDX, T_TOT, T_FINAL = 0x0A, 0x0B, 0x0C
FINAL = b"\x01"

RID = "550e8400-e29b-41d4-a716-446655440000"
RID2 = "6fa459ea-ee8a-4ca4-894e-db77e160355e"
RIDB = RID.encode()
MAX = 65536  # max_frame_size of the encode vectors that stay in one frame

# The spec's worked example as the reference encoder writes it (issue 2).
WORKED_EXAMPLE_HEX = (
    "414e505801010000000000cb42d87a2d5faf0dcd00000000010000002435353065383430302d653239622d343164342d"
    "613731362d34343636353534343030303002000000727b226d6574686f64223a2022504f5354222c202270617468223a"
    "20222f6170692f76312f72756e222c202268656164657273223a207b22636f6e74656e742d74797065223a2022617070"
    "6c69636174696f6e2f6a736f6e227d2c20227175657279223a207b2271223a202274657374227d7d030000000e7b2266"
    "6f6f223a2022626172227d"
)

Tlvs = list[tuple[int, bytes]]


# --- wire bytes -----------------------------------------------------------------------------


def u32(n: int) -> bytes:
    return struct.pack(">I", n)


def tlv(tag: int, value: bytes) -> bytes:
    return struct.pack(">BI", tag, len(value)) + value


def frame(
    ftype: int,
    tlvs: Iterable[tuple[int, bytes]] = (),
    flags: int = 0,
    *,
    body: bytes | None = None,
    magic: bytes = b"ANPX",
    version: int = 1,
    reserved: int = 0,
    total: int | None = None,
    header_crc: int | None = None,
    body_crc: int | None = None,
    tail: bytes = bytes(4),
) -> bytes:
    """One frame; keyword overrides build malformed ones (CRCs follow the overrides)."""
    if body is None:
        body = b"".join(tlv(tag, value) for tag, value in tlvs)
    if total is None:
        total = 24 + len(body)
    prefix = magic + bytes([version, ftype, flags, reserved]) + u32(total)
    hcrc = zlib.crc32(prefix) if header_crc is None else header_crc
    bcrc = zlib.crc32(body) if body_crc is None else body_crc
    return prefix + u32(hcrc) + u32(bcrc) + tail + body


def req_meta(
    method: str,
    path: str,
    headers: dict[str, str] | None = None,
    query: dict[str, str] | None = None,
    *,
    target: str | None = None,
    header_pairs: list[tuple[str, str]] | None = None,
) -> bytes:
    """http_meta as the reference writes it, plus our extension keys when given."""
    meta: dict[str, Any] = {
        "method": method,
        "path": path,
        "headers": headers or {},
        "query": query or {},
    }
    if target is not None:
        meta["anpx_target"] = target
    if header_pairs is not None:
        meta["anpx_headers"] = [list(p) for p in header_pairs]
    return json.dumps(meta).encode("ascii")


def resp_meta(
    status: int,
    reason: str,
    headers: dict[str, str] | None = None,
    *,
    header_pairs: list[tuple[str, str]] | None = None,
) -> bytes:
    meta: dict[str, Any] = {"status": status, "reason": reason, "headers": headers or {}}
    if header_pairs is not None:
        meta["anpx_headers"] = [list(p) for p in header_pairs]
    return json.dumps(meta).encode("ascii")


def single(ftype: int, meta: bytes, body: bytes = b"", rid: bytes = RIDB) -> bytes:
    """Reference single-frame layout: request_id, meta, http_body (absent when empty)."""
    meta_tag = T_META if ftype == REQ else T_RESP_META
    tlvs = [(T_RID, rid), (meta_tag, meta)]
    if body:
        tlvs.append((T_BODY, body))
    return frame(ftype, tlvs)


def err_frame(text: str, rid: str | None = RID) -> bytes:
    tlvs = [] if rid is None else [(T_RID, rid.encode())]
    return frame(ERR, [*tlvs, (T_BODY, text.encode("utf-8"))])


def chunk_frames(ftype: int, meta: bytes, parts: list[bytes], total: bool = True) -> list[bytes]:
    """Our layout: request_id, chunk_idx, [chunk_tot], meta in chunk 0, body, final_chunk."""
    meta_tag = T_META if ftype == REQ else T_RESP_META
    out = []
    for i, part in enumerate(parts):
        tlvs = [(T_RID, RIDB), (T_IDX, u32(i))]
        if total:
            tlvs.append((T_TOT, u32(len(parts))))
        if i == 0:
            tlvs.append((meta_tag, meta))
        if part:
            tlvs.append((T_BODY, part))
        if i == len(parts) - 1:
            tlvs.append((T_FINAL, FINAL))
        out.append(frame(ftype, tlvs, 1))
    return out


def greedy_parts(meta: bytes, body: bytes, max_size: int) -> list[bytes]:
    """Body split of a whole message sent chunked: every frame is filled to max_size.

    Chunk 0 also holds the meta; a chunk is the last one once the rest of the
    body plus the 6-byte final_chunk TLV fits; otherwise it takes as much body
    as fits (none when not even the 5-byte http_body TLV header does).
    """
    fixed = 24 + 5 + len(RIDB) + 9 + 9  # header, request_id, chunk_idx, chunk_tot
    parts: list[bytes] = []
    pos = 0
    while True:
        over = fixed + (5 + len(meta) if not parts else 0)
        rest = len(body) - pos
        if over + (5 + rest if rest else 0) + 6 <= max_size:
            parts.append(body[pos:])
            return parts
        take = max(0, min(rest, max_size - over - 5))
        parts.append(body[pos : pos + take])
        pos += take
        assert len(parts) < 10_000


def single_size(meta: bytes, body: bytes) -> int:
    return 24 + 5 + len(RIDB) + 5 + len(meta) + (5 + len(body) if body else 0)


# --- adapter JSON ---------------------------------------------------------------------------


def request(
    target: str,
    method: str = "GET",
    headers: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
    rid: str = RID,
) -> dict:
    return {
        "type": "request",
        "request_id": rid,
        "method": method,
        "target": target,
        "headers": [list(h) for h in headers],
        "body": body.hex(),
    }


def response(
    status: int,
    reason: str,
    headers: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
    rid: str = RID,
) -> dict:
    return {
        "type": "response",
        "request_id": rid,
        "status": status,
        "reason": reason,
        "headers": [list(h) for h in headers],
        "body": body.hex(),
    }


def error(text: str, rid: str | None = RID) -> dict:
    return {"type": "error", "request_id": rid, "text": text}


def frame_json(ftype: int, flags: int, tlvs: Tlvs) -> dict:
    return {"type": ftype, "flags": flags, "tlvs": [[tag, value.hex()] for tag, value in tlvs]}


class VectorFile:
    def __init__(self, filename: str, description: str) -> None:
        self.filename = filename
        self.description = description
        self.vectors: list[dict] = []

    def add(self, name: str, description: str, request: dict, expect: dict) -> None:
        self.vectors.append(
            {"name": name, "description": description, "request": request, "expect": expect}
        )

    def encode_frame(self, name: str, desc: str, ftype: int, flags: int, tlvs: Tlvs) -> None:
        req = {"op": "encode_frame", "frame": frame_json(ftype, flags, tlvs)}
        self.add(name, desc, req, {"wire": frame(ftype, tlvs, flags).hex()})

    def decode_frames(
        self,
        name: str,
        desc: str,
        wire: bytes,
        frames: list[tuple[int, int, Tlvs]] | None = None,
        error: str | None = None,
    ) -> None:
        req = {"op": "decode_frames", "wire": wire.hex()}
        if error is not None:
            self.add(name, desc, req, {"error": error})
        else:
            assert frames is not None
            self.add(name, desc, req, {"frames": [frame_json(*f) for f in frames]})

    def encode_message(
        self,
        name: str,
        desc: str,
        message: dict,
        wire: list[bytes] | None = None,
        max_frame_size: int = MAX,
        error: str | None = None,
    ) -> None:
        req = {"op": "encode_message", "message": message, "max_frame_size": max_frame_size}
        if error is not None:
            self.add(name, desc, req, {"error": error})
        else:
            assert wire is not None and all(len(w) <= max_frame_size for w in wire)
            self.add(name, desc, req, {"wire": [w.hex() for w in wire]})

    def decode_message(
        self,
        name: str,
        desc: str,
        wire: list[bytes],
        message: dict | None = None,
        error: str | None = None,
    ) -> None:
        req = {"op": "decode_message", "wire": [w.hex() for w in wire]}
        if error is not None:
            self.add(name, desc, req, {"error": error})
        else:
            assert message is not None
            self.add(name, desc, req, {"message": message})

    def both(
        self, name: str, desc: str, message: dict, wire: list[bytes], max_frame_size: int = MAX
    ) -> None:
        """The message encodes to exactly these frames, and they decode back to it."""
        self.encode_message(f"{name}_encode", desc, message, wire, max_frame_size)
        self.decode_message(f"{name}_decode", desc, wire, message)


# --- the worked example ---------------------------------------------------------------------

WORKED_META = req_meta("POST", "/api/v1/run", {"content-type": "application/json"}, {"q": "test"})
WORKED_BODY = b'{"foo": "bar"}'
WORKED_TLVS: Tlvs = [(T_RID, RIDB), (T_META, WORKED_META), (T_BODY, WORKED_BODY)]
WORKED = frame(REQ, WORKED_TLVS)
WORKED_MSG = request(
    "/api/v1/run?q=test", "POST", [("content-type", "application/json")], WORKED_BODY
)
assert WORKED.hex() == WORKED_EXAMPLE_HEX and len(WORKED) == 203, "worked example drifted"

BINARY = bytes(range(256))


# --- frames.json ----------------------------------------------------------------------------


def frames_file() -> VectorFile:
    f = VectorFile(
        "frames.json",
        "Single frames and byte streams: every header field and the TLV layer "
        "(encode_frame, decode_frames).",
    )
    f.encode_frame(
        "frame_encode_header_only",
        "A frame with no TLVs is just the 24-byte header: TotalLen 24 and BodyCRC 0 (CRC-32 of nothing).",
        REQ,
        0,
        [],
    )
    f.encode_frame(
        "frame_encode_type_request",
        "Type byte 5 is 0x01 for an HTTP request; magic, version 1, TotalLen and both CRCs follow the header layout.",
        REQ,
        0,
        [(T_RID, RIDB)],
    )
    f.encode_frame(
        "frame_encode_type_response",
        "Type byte 5 is 0x02 for an HTTP response.",
        RESP,
        0,
        [(T_RID, RIDB)],
    )
    f.encode_frame(
        "frame_encode_type_error",
        "Type byte 5 is 0xFF for an error frame.",
        ERR,
        0,
        [(T_RID, RIDB), (T_BODY, b"upstream timed out")],
    )
    f.encode_frame(
        "frame_encode_chunked_flag",
        "Flag bit 0 (byte 6 = 0x01) marks a chunked frame and is covered by HeaderCRC.",
        RESP,
        1,
        [(T_RID, RIDB), (T_IDX, u32(0)), (T_BODY, b"part")],
    )
    f.encode_frame(
        "frame_encode_tlvs_in_given_order",
        "TLVs are written in the given order as tag, u32 big-endian length, value; unknown and extension tags too.",
        REQ,
        0,
        [(0xF0, b"ext"), (T_RID, RIDB), (0x20, b""), (0xFF, bytes(range(8)))],
    )
    f.encode_frame(
        "frame_encode_empty_tlv_value",
        "A zero-length TLV value is written as its 5-byte tag and length only.",
        RESP,
        0,
        [(T_BODY, b"")],
    )
    f.encode_frame(
        "frame_encode_long_tlv_length",
        "TLV lengths are u32 big-endian: a 300-byte value has length 00 00 01 2c.",
        RESP,
        0,
        [(T_BODY, bytes(i % 7 for i in range(300)))],
    )
    f.encode_frame(
        "frame_encode_worked_example",
        "The spec's worked example TLVs encode to the reference's 203 bytes.",
        REQ,
        0,
        WORKED_TLVS,
    )
    f.decode_frames(
        "frame_decode_worked_example",
        "The reference's 203-byte worked example decodes to its three TLVs.",
        WORKED,
        [(REQ, 0, WORKED_TLVS)],
    )
    f.decode_frames(
        "frame_decode_header_only",
        "A 24-byte frame with no TLVs decodes to an empty TLV list.",
        frame(RESP),
        [(RESP, 0, [])],
    )
    f.decode_frames(
        "frame_decode_empty_stream",
        "An empty byte stream holds zero frames.",
        b"",
        [],
    )
    three = [
        (REQ, 0, [(T_RID, RIDB)]),
        (RESP, 1, [(T_RID, RIDB), (T_IDX, u32(0))]),
        (ERR, 0, [(T_BODY, b"boom")]),
    ]
    f.decode_frames(
        "frame_decode_every_type_concatenated",
        "Concatenated frames of type 0x01, 0x02 and 0xFF decode in order, with their flags.",
        b"".join(frame(t, tl, fl) for t, fl, tl in three),
        three,
    )
    ext = [(0x00, b"zero"), (0x20, b""), (0xF0, b"\x01\x02"), (0xFF, b"last"), (0xF0, b"again")]
    f.decode_frames(
        "frame_decode_unknown_tags_listed",
        "The frame layer reports unknown and extension TLVs (0x00, 0x20, 0xF0-0xFF) as they are, repeats included.",
        frame(REQ, ext),
        [(REQ, 0, ext)],
    )
    f.decode_frames(
        "frame_decode_binary_value",
        "TLV values are opaque bytes: all 256 byte values survive.",
        frame(RESP, [(T_BODY, BINARY)]),
        [(RESP, 0, [(T_BODY, BINARY)])],
    )
    f.decode_frames(
        "frame_decode_reserved_bytes_ignored",
        "Byte 7 and bytes 20-23 are reserved: a receiver ignores their values.",
        frame(RESP, [(T_RID, RIDB)], reserved=0x5A, tail=b"\xde\xad\xbe\xef"),
        [(RESP, 0, [(T_RID, RIDB)])],
    )
    spec = spec_three_chunks()
    f.decode_frames(
        "frame_decode_three_chunk_stream",
        "The spec's three-chunk response as one stream: BodyCRC covers each frame's own TLV body.",
        b"".join(spec),
        [(RESP, 1, tl) for tl in SPEC_CHUNK_TLVS],
    )
    return f


# --- requests.json / responses.json ----------------------------------------------------------


def requests_file() -> VectorFile:
    f = VectorFile(
        "requests.json",
        "Whole requests in one frame, in the reference layout (encode_message, decode_message).",
    )
    f.both(
        "request_worked_example",
        "The spec's worked example is byte for byte the reference's 203-byte frame.",
        WORKED_MSG,
        [WORKED],
    )
    f.both(
        "request_get_empty_body",
        "An empty body sends no http_body TLV; query and headers are empty objects.",
        request("/health"),
        [single(REQ, req_meta("GET", "/health"))],
    )
    f.decode_message(
        "request_decode_empty_body_tlv",
        "A zero-length http_body TLV is an empty body.",
        [frame(REQ, [(T_RID, RIDB), (T_META, req_meta("GET", "/x")), (T_BODY, b"")])],
        request("/x"),
    )
    hdrs = [("host", "example.com"), ("accept", "*/*"), ("x-trace", "abc")]
    f.both(
        "request_headers_in_order",
        "Distinct header names go into the v1 headers object in order, and come back in that order.",
        request("/items", "GET", hdrs),
        [single(REQ, req_meta("GET", "/items", dict(hdrs)))],
    )
    f.both(
        "request_binary_body",
        "A body holding every byte value 0x00-0xFF is carried verbatim.",
        request("/upload", "PUT", [("content-type", "application/octet-stream")], BINARY),
        [
            single(
                REQ,
                req_meta("PUT", "/upload", {"content-type": "application/octet-stream"}),
                BINARY,
            )
        ],
    )
    f.both(
        "request_query_order_kept",
        "Query keys keep their order in the v1 query object without needing an extension key.",
        request("/s?b=2&a=1&c="),
        [single(REQ, req_meta("GET", "/s", query={"b": "2", "a": "1", "c": ""}))],
    )
    f.both(
        "request_percent_encoded_utf8_path",
        "A percent-encoded UTF-8 path goes as the decoded, ASCII-escaped path and rebuilds exactly.",
        request("/caf%C3%A9/%E6%97%A5"),
        [single(REQ, req_meta("GET", "/caf\u00e9/\u65e5"))],
    )
    f.both(
        "request_percent_encoded_space_and_plus",
        "%20 in the path and + in the query decode to spaces in v1 fields and rebuild exactly.",
        request("/a%20b?q=x+y"),
        [single(REQ, req_meta("GET", "/a b", query={"q": "x y"}))],
    )
    f.both(
        "request_encoded_query_value",
        "An encoded '&' and UTF-8 in a query value are decoded in the v1 query and rebuild exactly.",
        request("/s?a=x%26y&n=%C3%A9"),
        [single(REQ, req_meta("GET", "/s", query={"a": "x&y", "n": "\u00e9"}))],
    )
    f.both(
        "request_non_ascii_header_value",
        "A header value with Latin-1 characters is JSON-escaped and comes back unchanged.",
        request("/me", "GET", [("x-user", "Jos\u00e9 M\u00fcller")]),
        [single(REQ, req_meta("GET", "/me", {"x-user": "Jos\u00e9 M\u00fcller"}))],
    )
    f.both(
        "request_custom_method",
        "Any method token is carried as is.",
        request("/dav/file", "PROPFIND", [("depth", "1")]),
        [single(REQ, req_meta("PROPFIND", "/dav/file", {"depth": "1"}))],
    )
    f.both(
        "request_other_request_id",
        "The request_id TLV carries the message's own id.",
        request("/", "DELETE", rid=RID2),
        [single(REQ, req_meta("DELETE", "/"), rid=RID2.encode())],
    )
    f.decode_message(
        "request_decode_spec_compact_json",
        "http_meta written compactly (as in the spec's table) decodes like the reference's spacing.",
        [
            frame(
                REQ,
                [
                    (T_RID, RIDB),
                    (
                        T_META,
                        b'{"method":"POST","path":"/api/v1/run",'
                        b'"headers":{"content-type":"application/json"},"query":{"q":"test"}}',
                    ),
                    (T_BODY, WORKED_BODY),
                ],
            )
        ],
        WORKED_MSG,
    )
    f.decode_message(
        "request_decode_v1_path_needs_escaping",
        "A v1 path with a space and non-ASCII text and a query value with a space rebuild as an escaped target.",
        [single(REQ, req_meta("GET", "/my docs/\u00e9t\u00e9", query={"q": "a b"}))],
        request("/my%20docs/%C3%A9t%C3%A9?q=a+b"),
    )
    f.decode_message(
        "request_decode_uppercase_header_names",
        "Header names from a v1 peer are lower-cased.",
        [single(REQ, req_meta("GET", "/", {"Content-Type": "text/plain", "X-A": "1"}))],
        request("/", "GET", [("content-type", "text/plain"), ("x-a", "1")]),
    )
    f.decode_message(
        "request_decode_meta_key_order_free",
        "http_meta keys may come in any order and unknown JSON keys are ignored.",
        [
            single(
                REQ,
                json.dumps(
                    {
                        "query": {},
                        "x_future": [1],
                        "headers": {"a": "b"},
                        "path": "/p",
                        "method": "GET",
                    }
                ).encode(),
            )
        ],
        request("/p", "GET", [("a", "b")]),
    )
    f.decode_message(
        "request_decode_optional_headers_query",
        "http_meta without headers and query means none.",
        [single(REQ, b'{"method": "GET", "path": "/bare"}')],
        request("/bare"),
    )
    return f


def responses_file() -> VectorFile:
    f = VectorFile(
        "responses.json",
        "Whole responses and error frames in one frame (encode_message, decode_message).",
    )
    hdrs = [("content-type", "application/json"), ("content-length", "11")]
    f.both(
        "response_ok_with_body",
        "request_id, resp_meta {status, reason, headers}, http_body, in that order.",
        response(200, "OK", hdrs, b'{"ok": true}'),
        [single(RESP, resp_meta(200, "OK", dict(hdrs)), b'{"ok": true}')],
    )
    f.both(
        "response_no_content",
        "A 204 with an empty body sends no http_body TLV.",
        response(204, "No Content"),
        [single(RESP, resp_meta(204, "No Content"))],
    )
    f.both(
        "response_not_found",
        "A 404 status and reason phrase survive.",
        response(404, "Not Found", [("content-type", "text/plain")], b"nope"),
        [single(RESP, resp_meta(404, "Not Found", {"content-type": "text/plain"}), b"nope")],
    )
    f.both(
        "response_empty_reason",
        "An empty reason phrase is sent as an empty string.",
        response(599, ""),
        [single(RESP, resp_meta(599, ""))],
    )
    f.both(
        "response_binary_body",
        "A body holding every byte value is carried verbatim.",
        response(200, "OK", [("content-type", "image/png")], BINARY),
        [single(RESP, resp_meta(200, "OK", {"content-type": "image/png"}), BINARY)],
    )
    f.both(
        "response_non_ascii_header_value",
        "A header value with Latin-1 characters is JSON-escaped and comes back unchanged.",
        response(200, "OK", [("content-disposition", "attachment; filename=\u00e9t\u00e9.txt")]),
        [
            single(
                RESP,
                resp_meta(
                    200, "OK", {"content-disposition": "attachment; filename=\u00e9t\u00e9.txt"}
                ),
            )
        ],
    )
    f.decode_message(
        "response_decode_spec_minimal_meta",
        "resp_meta as in the spec ({status, reason} only, compact) means no headers.",
        [single(RESP, b'{"status":200,"reason":"OK"}', b"hi")],
        response(200, "OK", [], b"hi"),
    )
    f.decode_message(
        "response_decode_missing_reason",
        "resp_meta without a reason decodes with an empty reason.",
        [single(RESP, b'{"status": 503}')],
        response(503, ""),
    )
    f.both(
        "error_with_request_id",
        "An error frame (type 0xFF) is request_id then http_body holding the UTF-8 text.",
        error("upstream unavailable"),
        [err_frame("upstream unavailable")],
    )
    f.both(
        "error_without_request_id",
        "An error not tied to a request has only the http_body TLV.",
        error("bad frame", None),
        [err_frame("bad frame", None)],
    )
    f.both(
        "error_non_ascii_text",
        "Error text is UTF-8 encoded.",
        error("\u00e9chec \u2014 \u65e5\u672c"),
        [err_frame("\u00e9chec \u2014 \u65e5\u672c")],
    )
    f.both(
        "error_empty_text",
        "An empty error text is an empty http_body TLV.",
        error(""),
        [err_frame("")],
    )
    f.decode_message(
        "error_decode_without_body",
        "An error frame with no http_body has empty text.",
        [frame(ERR, [(T_RID, RIDB)])],
        error(""),
    )
    return f


# --- chunking.json --------------------------------------------------------------------------

SPEC_PARTS = [b"Hello, ", b"chunked ", b"world!"]
SPEC_CHUNK_TLVS: list[Tlvs] = [
    [(T_RID, RIDB), (T_IDX, u32(0)), (T_BODY, SPEC_PARTS[0])],
    [(T_RID, RIDB), (T_IDX, u32(1)), (T_BODY, SPEC_PARTS[1])],
    [
        (T_RID, RIDB),
        (T_IDX, u32(2)),
        (T_BODY, SPEC_PARTS[2]),
        (T_FINAL, FINAL),
        (T_RESP_META, b'{"status":200,"reason":"OK"}'),
    ],
]


def spec_three_chunks() -> list[bytes]:
    return [frame(RESP, tl, 1) for tl in SPEC_CHUNK_TLVS]


def chunking_file() -> VectorFile:
    f = VectorFile(
        "chunking.json",
        "Chunked messages: the spec's example, the reference layouts, our streaming layout "
        "and how whole messages are split.",
    )
    f.decode_message(
        "chunked_spec_three_chunk_response",
        "The spec's section 6 response: no chunk_tot, resp_meta after final_chunk in the last of three chunks.",
        spec_three_chunks(),
        response(200, "OK", [], b"".join(SPEC_PARTS)),
    )

    # Reference chunked response: request_id, chunk_idx, chunk_tot; the last chunk adds
    # resp_meta and final_chunk before its body part.
    meta = resp_meta(200, "OK", {"content-type": "text/plain"})
    parts = [b"a" * 40, b"b" * 40, b"c" * 13]
    ref_resp = []
    for i, part in enumerate(parts):
        tlvs = [(T_RID, RIDB), (T_IDX, u32(i)), (T_TOT, u32(3))]
        if i == 2:
            tlvs += [(T_RESP_META, meta), (T_FINAL, FINAL)]
        ref_resp.append(frame(RESP, [*tlvs, (T_BODY, part)], 1))
    f.decode_message(
        "chunked_reference_response",
        "The reference's chunked response: resp_meta and final_chunk in the last chunk, before its body part.",
        ref_resp,
        response(200, "OK", [("content-type", "text/plain")], b"".join(parts)),
    )
    last_empty = [
        frame(RESP, [(T_RID, RIDB), (T_IDX, u32(0)), (T_TOT, u32(2)), (T_BODY, b"x" * 50)], 1),
        frame(
            RESP,
            [
                (T_RID, RIDB),
                (T_IDX, u32(1)),
                (T_TOT, u32(2)),
                (T_RESP_META, meta),
                (T_FINAL, FINAL),
            ],
            1,
        ),
    ]
    f.decode_message(
        "chunked_reference_response_empty_last",
        "A reference chunked response whose last chunk carries only resp_meta and final_chunk.",
        last_empty,
        response(200, "OK", [("content-type", "text/plain")], b"x" * 50),
    )

    # Reference chunked request: http_meta only in chunk 0, final_chunk last.
    rmeta = req_meta("POST", "/upload", {"content-type": "application/octet-stream"})
    rparts = [BINARY[:100], BINARY[100:200], BINARY[200:]]
    ref_req = []
    for i, part in enumerate(rparts):
        tlvs = [(T_RID, RIDB), (T_IDX, u32(i)), (T_TOT, u32(3))]
        if i == 0:
            tlvs.append((T_META, rmeta))
        tlvs.append((T_BODY, part))
        if i == 2:
            tlvs.append((T_FINAL, FINAL))
        ref_req.append(frame(REQ, tlvs, 1))
    upload = request("/upload", "POST", [("content-type", "application/octet-stream")], BINARY)
    f.decode_message(
        "chunked_reference_request",
        "The reference's chunked request: request_id, chunk_idx, chunk_tot, http_meta in chunk 0, body, final_chunk last.",
        ref_req,
        upload,
    )

    # What we send for a whole message: the reference request order, frames filled greedily.
    size = 256
    body = bytes((i * 7) % 256 for i in range(600))
    big = request("/upload", "POST", [("content-type", "application/octet-stream")], body)
    split = greedy_parts(rmeta, body, size)
    wire = chunk_frames(REQ, rmeta, split)
    assert len(wire) >= 3 and all(len(w) == size for w in wire[:-1])
    f.both(
        "chunked_request_split",
        "A request too big for one frame is chunked in the reference order with chunk_tot; every frame but the last is exactly max_frame_size.",
        big,
        wire,
        size,
    )
    rsp_meta = resp_meta(200, "OK", {"content-type": "application/octet-stream"})
    rsp = response(200, "OK", [("content-type", "application/octet-stream")], body)
    split = greedy_parts(rsp_meta, body, size)
    wire = chunk_frames(RESP, rsp_meta, split)
    assert len(wire) >= 3 and all(len(w) == size for w in wire[:-1])
    f.both(
        "chunked_response_meta_first",
        "A response we chunk puts resp_meta in chunk 0 (status and headers first), then body parts, chunk_tot in every frame, final_chunk last.",
        rsp,
        wire,
        size,
    )

    # The single-frame / chunked boundary.
    bmeta = req_meta("POST", "/b", {"content-type": "text/plain"})
    bbody = b"z" * 100
    bmsg = request("/b", "POST", [("content-type", "text/plain")], bbody)
    exact = single_size(bmeta, bbody)
    f.encode_message(
        "chunked_boundary_exact_fit_single",
        "A message whose single frame is exactly max_frame_size bytes is sent unchunked.",
        bmsg,
        [single(REQ, bmeta, bbody)],
        exact,
    )
    split = greedy_parts(bmeta, bbody, exact - 1)
    assert len(split) == 2
    f.encode_message(
        "chunked_boundary_one_byte_over",
        "One byte less of max_frame_size and the same message goes chunked.",
        bmsg,
        chunk_frames(REQ, bmeta, split),
        exact - 1,
    )

    # Chunk 0 holds only the head when the head exactly fills a frame.
    head_only = 24 + 5 + len(RIDB) + 18 + 5 + len(bmeta)
    split = greedy_parts(bmeta, bbody, head_only)
    assert split[0] == b"" and len(split) >= 2
    f.encode_message(
        "chunked_head_fills_chunk_zero",
        "When the head exactly fills max_frame_size, chunk 0 carries no body part.",
        bmsg,
        chunk_frames(REQ, bmeta, split),
        head_only,
    )

    # The rest of the body fits a chunk, but not with final_chunk: the last chunk is empty.
    size = 200
    fixed = 24 + 5 + len(RIDB) + 18
    room0 = size - fixed - 5 - len(bmeta) - 5
    room = size - fixed - 5
    ebody = b"e" * (room0 + room - 2)
    split = greedy_parts(bmeta, ebody, size)
    assert len(split) == 3 and split[2] == b"", [len(p) for p in split]
    f.both(
        "chunked_empty_final_chunk",
        "When the last body part leaves no room for final_chunk, a last chunk with no body carries it.",
        request("/b", "POST", [("content-type", "text/plain")], ebody),
        chunk_frames(REQ, bmeta, split),
        size,
    )

    # Our streaming layout: resp_meta in chunk 0, no chunk_tot, final_chunk on the last.
    smeta = resp_meta(200, "OK", {"content-type": "text/event-stream"})
    events = [b"data: one\n\n", b"data: two\n\n", b"data: three\n\n"]
    sse = response(200, "OK", [("content-type", "text/event-stream")], b"".join(events))
    f.decode_message(
        "chunked_streaming_response",
        "Our streaming layout: resp_meta in chunk 0, no chunk_tot, final_chunk on the last chunk.",
        chunk_frames(RESP, smeta, events, total=False),
        sse,
    )
    f.decode_message(
        "chunked_streaming_head_then_empty_final",
        "A streamed response flushed head-first: chunk 0 has only resp_meta, the last only final_chunk.",
        chunk_frames(RESP, smeta, [b"", *events, b""], total=False),
        sse,
    )
    f.decode_message(
        "chunked_streaming_request",
        "A streamed request upload: http_meta in chunk 0, no chunk_tot, final_chunk on the last.",
        chunk_frames(REQ, rmeta, rparts, total=False),
        upload,
    )
    f.decode_message(
        "chunked_single_chunk",
        "A chunked message may be one chunk with chunk_idx 0 and final_chunk.",
        chunk_frames(RESP, smeta, [b"only"], total=False),
        response(200, "OK", [("content-type", "text/event-stream")], b"only"),
    )
    by_total = [
        frame(RESP, [(T_RID, RIDB), (T_IDX, u32(0)), (T_TOT, u32(2)), (T_RESP_META, smeta)], 1),
        frame(RESP, [(T_RID, RIDB), (T_IDX, u32(1)), (T_TOT, u32(2)), (T_BODY, b"tail")], 1),
    ]
    f.decode_message(
        "chunked_complete_by_chunk_tot",
        "A chunked message is complete once chunk_tot chunks have arrived, even without final_chunk.",
        by_total,
        response(200, "OK", [("content-type", "text/event-stream")], b"tail"),
    )
    f.decode_message(
        "chunked_chunk_tot_only_on_first",
        "chunk_tot may be given in some chunks only; final_chunk then ends the message.",
        [
            frame(RESP, [(T_RID, RIDB), (T_IDX, u32(0)), (T_TOT, u32(2)), (T_RESP_META, smeta)], 1),
            frame(RESP, [(T_RID, RIDB), (T_IDX, u32(1)), (T_BODY, b"end"), (T_FINAL, FINAL)], 1),
        ],
        response(200, "OK", [("content-type", "text/event-stream")], b"end"),
    )
    return f


# --- extensions.json ------------------------------------------------------------------------


def extensions_file() -> VectorFile:
    f = VectorFile(
        "extensions.json",
        "What v1 fields cannot say (anpx_target, anpx_headers) and unknown TLV tags, which are skipped.",
    )
    cookies = [("set-cookie", "a=1; Path=/"), ("content-type", "text/html"), ("set-cookie", "b=2")]
    f.both(
        "ext_response_duplicate_headers",
        "Two Set-Cookie fields stay two: v1 headers get the comma-joined value, anpx_headers the exact list.",
        response(200, "OK", cookies),
        [
            single(
                RESP,
                resp_meta(
                    200,
                    "OK",
                    {"set-cookie": "a=1; Path=/, b=2", "content-type": "text/html"},
                    header_pairs=cookies,
                ),
            )
        ],
    )
    accepts = [("accept", "text/html"), ("x-a", "1"), ("accept", "application/json")]
    f.both(
        "ext_request_duplicate_headers",
        "Repeated request header fields are kept in order in anpx_headers.",
        request("/", "GET", accepts),
        [
            single(
                REQ,
                req_meta(
                    "GET",
                    "/",
                    {"accept": "text/html, application/json", "x-a": "1"},
                    header_pairs=accepts,
                ),
            )
        ],
    )
    f.both(
        "ext_repeated_query_keys",
        "Repeated query keys: v1 query keeps the last value, anpx_target keeps the exact target.",
        request("/search?tag=a&tag=b&q=x"),
        [
            single(
                REQ,
                req_meta(
                    "GET", "/search", query={"tag": "b", "q": "x"}, target="/search?tag=a&tag=b&q=x"
                ),
            )
        ],
    )
    f.both(
        "ext_encoded_slash",
        "An encoded slash (%2F) differs from '/' once decoded, so anpx_target carries it.",
        request("/files/a%2Fb.txt"),
        [single(REQ, req_meta("GET", "/files/a/b.txt", target="/files/a%2Fb.txt"))],
    )
    f.both(
        "ext_lowercase_percent_encoding",
        "Lower-case percent-escapes would come back upper-case from v1 fields, so anpx_target keeps them.",
        request("/caf%c3%a9"),
        [single(REQ, req_meta("GET", "/caf\u00e9", target="/caf%c3%a9"))],
    )
    f.both(
        "ext_raw_non_ascii_target",
        "A target with raw non-ASCII characters is kept as is in anpx_target.",
        request("/\u00e9t\u00e9"),
        [single(REQ, req_meta("GET", "/\u00e9t\u00e9", target="/\u00e9t\u00e9"))],
    )
    f.both(
        "ext_query_key_without_value",
        "A query key without '=' becomes an empty value in v1, so anpx_target keeps the exact form.",
        request("/p?flag&x=1"),
        [single(REQ, req_meta("GET", "/p", query={"flag": "", "x": "1"}, target="/p?flag&x=1"))],
    )
    f.both(
        "ext_empty_query",
        "A bare '?' is lost in v1 fields, so anpx_target keeps it.",
        request("/p?"),
        [single(REQ, req_meta("GET", "/p", target="/p?"))],
    )
    f.both(
        "ext_space_as_percent20_in_query",
        "A query space written %20 would come back as '+', so anpx_target keeps it.",
        request("/s?q=a%20b"),
        [single(REQ, req_meta("GET", "/s", query={"q": "a b"}, target="/s?q=a%20b"))],
    )
    both_hdrs = [("cookie", "a=1"), ("cookie", "b=2")]
    f.both(
        "ext_target_and_headers_together",
        "anpx_target and anpx_headers appear together, in that order, after the v1 keys.",
        request("/a%2Fb?k=1&k=2", "POST", both_hdrs, b"x"),
        [
            single(
                REQ,
                req_meta(
                    "POST",
                    "/a/b",
                    {"cookie": "a=1, b=2"},
                    {"k": "2"},
                    target="/a%2Fb?k=1&k=2",
                    header_pairs=both_hdrs,
                ),
                b"x",
            )
        ],
    )
    f.decode_message(
        "ext_decode_target_wins",
        "When anpx_target is present it is the target, whatever path and query say.",
        [single(REQ, req_meta("GET", "/ignored", query={"z": "9"}, target="/real%2Fone?z=9&z=8"))],
        request("/real%2Fone?z=9&z=8"),
    )
    f.decode_message(
        "ext_decode_headers_win",
        "When anpx_headers is present it is the header list, whatever headers says.",
        [
            single(
                RESP,
                resp_meta(200, "OK", {"x": "merged"}, header_pairs=[("x", "1"), ("x", "2")]),
            )
        ],
        response(200, "OK", [("x", "1"), ("x", "2")]),
    )

    # Unknown tags are skipped by the message layer.
    f.decode_message(
        "unknown_tags_skipped_single",
        "Unknown tags (0x00, 0x05, 0x20) between the known ones are skipped.",
        [
            frame(
                REQ,
                [
                    (0x00, b""),
                    (T_RID, RIDB),
                    (0x05, b"future"),
                    (T_META, WORKED_META),
                    (0x20, b"\xff" * 3),
                    (T_BODY, WORKED_BODY),
                ],
            )
        ],
        WORKED_MSG,
    )
    f.decode_message(
        "unknown_tags_extension_range",
        "Extension tags 0xF0-0xFF are skipped, even when repeated.",
        [
            frame(
                RESP,
                [
                    (0xF0, b"trace=1"),
                    (T_RID, RIDB),
                    (T_RESP_META, resp_meta(200, "OK")),
                    (0xFF, b""),
                    (0xF0, b"again"),
                    (T_BODY, b"ok"),
                    (0xFE, BINARY),
                ],
            )
        ],
        response(200, "OK", [], b"ok"),
    )
    f.decode_message(
        "unknown_tags_in_chunks",
        "Unknown tags in chunked frames are skipped too.",
        [
            frame(
                RESP,
                [
                    (T_RID, RIDB),
                    (0xF1, b"x"),
                    (T_IDX, u32(0)),
                    (T_RESP_META, resp_meta(201, "Created")),
                ],
                1,
            ),
            frame(
                RESP,
                [(T_RID, RIDB), (T_IDX, u32(1)), (T_BODY, b"b"), (0x0D, b""), (T_FINAL, FINAL)],
                1,
            ),
        ],
        response(201, "Created", [], b"b"),
    )
    f.decode_message(
        "unknown_tags_in_error",
        "Unknown tags in an error frame are skipped.",
        [frame(ERR, [(0xF0, b"code=7"), (T_RID, RIDB), (T_BODY, b"failed")])],
        error("failed"),
    )
    return f


# --- invalid.json ---------------------------------------------------------------------------


def invalid_file() -> VectorFile:
    f = VectorFile(
        "invalid.json",
        "Malformed input: each vector has one defect and expects its ProtocolError code.",
    )
    body = WORKED[24:]
    good_meta = resp_meta(200, "OK")

    # truncated
    f.decode_frames(
        "truncated_header",
        "A stream that ends inside the 24-byte header is truncated.",
        WORKED[:23],
        error="truncated",
    )
    f.decode_frames(
        "truncated_body",
        "A stream that ends before TotalLen bytes is truncated.",
        WORKED[:-1],
        error="truncated",
    )
    f.decode_frames(
        "truncated_second_frame",
        "A complete frame followed by part of another is truncated.",
        WORKED + WORKED[:30],
        error="truncated",
    )
    f.decode_message(
        "truncated_wire_entry",
        "A frame cut short inside a decode_message entry is truncated.",
        [WORKED[:100]],
        error="truncated",
    )
    f.decode_message(
        "truncated_no_frames",
        "No frames at all is not a message.",
        [],
        error="truncated",
    )
    f.decode_message(
        "truncated_missing_last_chunk",
        "Chunks that stop before final_chunk (or chunk_tot) leave the message incomplete.",
        spec_three_chunks()[:2],
        error="truncated",
    )

    # bad_magic / bad_version / bad_type / bad_flags (CRCs recomputed: one defect each)
    f.decode_frames(
        "bad_magic_anpy",
        "Bytes 0-3 must be 'ANPX'.",
        frame(REQ, body=body, magic=b"ANPY"),
        error="bad_magic",
    )
    f.decode_frames(
        "bad_magic_lowercase",
        "The magic is case-sensitive.",
        frame(REQ, body=body, magic=b"anpx"),
        error="bad_magic",
    )
    f.decode_frames(
        "bad_magic_zeros",
        "24 zero bytes are not a frame.",
        bytes(24),
        error="bad_magic",
    )
    f.decode_frames(
        "bad_version_2",
        "Byte 4 must be version 0x01.",
        frame(REQ, body=body, version=2),
        error="bad_version",
    )
    f.decode_frames(
        "bad_version_0",
        "Version 0x00 is not supported either.",
        frame(REQ, body=body, version=0),
        error="bad_version",
    )
    f.decode_frames(
        "bad_type_3",
        "Byte 5 must be 0x01, 0x02 or 0xFF.",
        frame(0x03, body=body),
        error="bad_type",
    )
    f.decode_frames(
        "bad_type_0",
        "Type 0x00 is not a frame type.",
        frame(0x00, body=body),
        error="bad_type",
    )
    f.decode_frames(
        "bad_flags_bit1",
        "Flag bits other than bit 0 must be zero.",
        frame(REQ, body=body, flags=0x02),
        error="bad_flags",
    )
    f.decode_frames(
        "bad_flags_high_bit_with_chunked",
        "A reserved flag bit is an error even alongside the chunked bit.",
        frame(REQ, body=body, flags=0x81),
        error="bad_flags",
    )

    # bad_header_crc
    good_crc = struct.unpack(">I", WORKED[12:16])[0]
    f.decode_frames(
        "bad_header_crc_flipped",
        "HeaderCRC must equal CRC-32 of bytes 0-11.",
        frame(REQ, body=body, header_crc=good_crc ^ 1),
        error="bad_header_crc",
    )
    f.decode_frames(
        "bad_header_crc_covers_type",
        "Changing the type byte without updating HeaderCRC is detected.",
        WORKED[:5] + b"\x02" + WORKED[6:],
        error="bad_header_crc",
    )
    f.decode_frames(
        "bad_header_crc_covers_flags",
        "Changing the flags byte without updating HeaderCRC is detected.",
        WORKED[:6] + b"\x01" + WORKED[7:],
        error="bad_header_crc",
    )

    # bad_body_crc
    f.decode_frames(
        "bad_body_crc_flipped_body_byte",
        "A flipped byte in the TLV body fails BodyCRC.",
        WORKED[:-2] + b"X" + WORKED[-1:],
        error="bad_body_crc",
    )
    f.decode_frames(
        "bad_body_crc_zero",
        "BodyCRC 0 is only right for an empty body.",
        frame(REQ, body=body, body_crc=0),
        error="bad_body_crc",
    )
    whole = b"".join(SPEC_PARTS)
    f.decode_message(
        "bad_body_crc_reassembled",
        "BodyCRC covers each frame's own TLV body, not the reassembled body the spec prose describes.",
        [frame(RESP, tl, 1, body_crc=zlib.crc32(whole)) for tl in SPEC_CHUNK_TLVS],
        error="bad_body_crc",
    )

    # bad_length
    f.decode_frames(
        "bad_length_below_header",
        "TotalLen 23 is shorter than the header itself.",
        frame(REQ, body=b"", total=23),
        error="bad_length",
    )
    f.decode_frames(
        "bad_length_zero",
        "TotalLen 0 is invalid.",
        frame(REQ, body=b"", total=0),
        error="bad_length",
    )
    f.decode_message(
        "bad_length_trailing_bytes",
        "A decode_message entry is exactly one frame: bytes after TotalLen are an error.",
        [WORKED + b"\x00"],
        error="bad_length",
    )
    f.decode_message(
        "bad_length_two_frames_in_entry",
        "Two frames in one decode_message entry disagree with the first TotalLen.",
        [WORKED + WORKED],
        error="bad_length",
    )

    # bad_tlv
    f.decode_frames(
        "bad_tlv_value_past_end",
        "A TLV whose length runs past the frame body is an error.",
        frame(REQ, body=struct.pack(">BI", T_BODY, 100) + b"abcd"),
        error="bad_tlv",
    )
    f.decode_frames(
        "bad_tlv_stray_bytes",
        "Fewer than 5 bytes left after the last TLV cannot be a TLV header.",
        frame(REQ, body=tlv(T_RID, RIDB) + b"\x03\x00\x00"),
        error="bad_tlv",
    )
    f.decode_message(
        "bad_tlv_duplicate_request_id",
        "A known tag may appear only once per frame.",
        [frame(REQ, [(T_RID, RIDB), (T_RID, RIDB), (T_META, WORKED_META)])],
        error="bad_tlv",
    )
    f.decode_message(
        "bad_tlv_duplicate_body",
        "Two http_body TLVs in one frame are an error.",
        [frame(REQ, [(T_RID, RIDB), (T_META, WORKED_META), (T_BODY, b"a"), (T_BODY, b"b")])],
        error="bad_tlv",
    )
    f.decode_message(
        "bad_tlv_empty_request_id",
        "request_id must not be empty.",
        [frame(REQ, [(T_RID, b""), (T_META, WORKED_META)])],
        error="bad_tlv",
    )
    f.decode_message(
        "bad_tlv_request_id_not_utf8",
        "request_id must be UTF-8.",
        [frame(REQ, [(T_RID, b"\xff\xfe"), (T_META, WORKED_META)])],
        error="bad_tlv",
    )
    f.decode_message(
        "bad_tlv_chunk_idx_short",
        "chunk_idx must be a 4-byte u32.",
        [
            frame(
                RESP,
                [(T_RID, RIDB), (T_IDX, b"\x00\x00"), (T_RESP_META, good_meta), (T_FINAL, FINAL)],
                1,
            )
        ],
        error="bad_tlv",
    )
    f.decode_message(
        "bad_tlv_chunk_tot_long",
        "chunk_tot must be a 4-byte u32.",
        [
            frame(
                RESP,
                [
                    (T_RID, RIDB),
                    (T_IDX, u32(0)),
                    (T_TOT, b"\x00" * 4 + b"\x01"),
                    (T_RESP_META, good_meta),
                ],
                1,
            )
        ],
        error="bad_tlv",
    )
    f.decode_message(
        "bad_tlv_final_chunk_zero",
        "final_chunk must be the single byte 0x01.",
        [
            frame(
                RESP,
                [(T_RID, RIDB), (T_IDX, u32(0)), (T_RESP_META, good_meta), (T_FINAL, b"\x00")],
                1,
            )
        ],
        error="bad_tlv",
    )
    f.decode_message(
        "bad_tlv_final_chunk_two_bytes",
        "final_chunk longer than one byte is an error.",
        [
            frame(
                RESP,
                [(T_RID, RIDB), (T_IDX, u32(0)), (T_RESP_META, good_meta), (T_FINAL, b"\x01\x01")],
                1,
            )
        ],
        error="bad_tlv",
    )
    f.decode_message(
        "bad_tlv_resp_meta_in_request",
        "A request frame must not carry resp_meta.",
        [frame(REQ, [(T_RID, RIDB), (T_META, WORKED_META), (T_RESP_META, good_meta)])],
        error="bad_tlv",
    )
    f.decode_message(
        "bad_tlv_http_meta_in_response",
        "A response frame must not carry http_meta.",
        [frame(RESP, [(T_RID, RIDB), (T_RESP_META, good_meta), (T_META, WORKED_META)])],
        error="bad_tlv",
    )

    # too_large
    f.decode_frames(
        "too_large_total_len",
        "A TotalLen of 4 GiB exceeds any frame-size limit and is refused from the header alone.",
        frame(REQ, body=b"", total=0xFFFFFFFF),
        error="too_large",
    )
    f.encode_message(
        "too_large_head",
        "A head that cannot fit in one frame of max_frame_size cannot be sent.",
        WORKED_MSG,
        max_frame_size=100,
        error="too_large",
    )
    f.encode_message(
        "too_large_error_frame",
        "An error frame is never chunked, so one longer than max_frame_size cannot be sent.",
        error("x" * 200),
        max_frame_size=100,
        error="too_large",
    )
    # The head fits a single frame but not a chunk (chunk_idx and chunk_tot need 18 more bytes).
    hmeta = req_meta("GET", "/h")
    head_single = single_size(hmeta, b"")
    f.encode_message(
        "too_large_head_fits_only_unchunked",
        "A head that fits only in an unchunked frame cannot be sent with a body that does not fit too.",
        request("/h", "GET", body=b"0123456789"),
        max_frame_size=head_single + 5,
        error="too_large",
    )
    f.encode_message(
        "head_fits_only_unchunked_without_body",
        "The same head with no body is sent unchunked in a frame of exactly max_frame_size bytes.",
        request("/h"),
        [single(REQ, hmeta)],
        head_single,
    )

    # bad_chunk
    sp = spec_three_chunks()
    f.decode_message(
        "bad_chunk_starts_at_one",
        "A chunked message must start at chunk_idx 0.",
        sp[1:],
        error="bad_chunk",
    )
    f.decode_message(
        "bad_chunk_gap",
        "Chunk indexes must follow each other: 0 then 2 is an error.",
        [sp[0], sp[2]],
        error="bad_chunk",
    )
    f.decode_message(
        "bad_chunk_repeated",
        "The same chunk_idx twice is an error.",
        [sp[0], sp[0], sp[1], sp[2]],
        error="bad_chunk",
    )

    def rchunk(i: int, extra: Tlvs, ftype: int = RESP, flags: int = 1) -> bytes:
        return frame(ftype, [(T_RID, RIDB), (T_IDX, u32(i)), *extra], flags)

    f.decode_message(
        "bad_chunk_total_changes",
        "chunk_tot must be the same in every chunk that carries it.",
        [
            rchunk(0, [(T_TOT, u32(3)), (T_RESP_META, good_meta)]),
            rchunk(1, [(T_TOT, u32(4))]),
        ],
        error="bad_chunk",
    )
    f.decode_message(
        "bad_chunk_index_beyond_total",
        "chunk_idx must be below chunk_tot.",
        [rchunk(0, [(T_TOT, u32(0)), (T_RESP_META, good_meta)])],
        error="bad_chunk",
    )
    f.decode_message(
        "bad_chunk_final_before_total",
        "final_chunk on chunk 0 of a 3-chunk message is inconsistent.",
        [rchunk(0, [(T_TOT, u32(3)), (T_RESP_META, good_meta), (T_FINAL, FINAL)])],
        error="bad_chunk",
    )
    f.decode_message(
        "bad_chunk_error_frame_chunked",
        "Error frames are never chunked.",
        [frame(ERR, [(T_RID, RIDB), (T_IDX, u32(0)), (T_BODY, b"x"), (T_FINAL, FINAL)], 1)],
        error="bad_chunk",
    )
    f.decode_message(
        "bad_chunk_tlvs_without_flag",
        "chunk_idx in a frame without the chunked flag is inconsistent.",
        [frame(RESP, [(T_RID, RIDB), (T_IDX, u32(0)), (T_RESP_META, good_meta)])],
        error="bad_chunk",
    )
    f.decode_message(
        "bad_chunk_unchunked_frame_mid_message",
        "An unchunked frame for a message whose chunks are still arriving is an error.",
        [rchunk(0, [(T_RESP_META, good_meta)]), single(RESP, good_meta)],
        error="bad_chunk",
    )
    f.decode_message(
        "bad_chunk_type_changes",
        "All chunks of one message have the same frame type.",
        [rchunk(0, [(T_RESP_META, good_meta)]), rchunk(1, [(T_FINAL, FINAL)], ftype=REQ)],
        error="bad_chunk",
    )
    f.decode_message(
        "bad_chunk_meta_twice",
        "resp_meta may be sent once per message.",
        [
            rchunk(0, [(T_RESP_META, good_meta)]),
            rchunk(1, [(T_RESP_META, good_meta), (T_FINAL, FINAL)]),
        ],
        error="bad_chunk",
    )
    f.decode_message(
        "bad_chunk_frames_after_end",
        "decode_message takes exactly one message: frames after it are an error.",
        [single(RESP, good_meta), single(RESP, good_meta, rid=RID2.encode())],
        error="bad_chunk",
    )
    f.decode_message(
        "bad_chunk_two_request_ids",
        "Chunks of another request_id are not part of the message.",
        [
            rchunk(0, [(T_RESP_META, good_meta)]),
            frame(RESP, [(T_RID, RID2.encode()), (T_IDX, u32(1)), (T_FINAL, FINAL)], 1),
        ],
        error="bad_chunk",
    )

    # bad_meta
    def rq(meta: bytes) -> list[bytes]:
        return [single(REQ, meta)]

    def rs(meta: bytes) -> list[bytes]:
        return [single(RESP, meta)]

    f.decode_message(
        "bad_meta_not_json", "http_meta must be JSON.", rq(b"{method: GET}"), error="bad_meta"
    )
    f.decode_message(
        "bad_meta_not_utf8",
        "http_meta must be UTF-8.",
        rq(b'{"method": "G\xffT"}'),
        error="bad_meta",
    )
    f.decode_message(
        "bad_meta_array", "http_meta must be a JSON object.", rq(b"[]"), error="bad_meta"
    )
    f.decode_message(
        "bad_meta_missing_method",
        "http_meta needs a method.",
        rq(b'{"path": "/", "headers": {}, "query": {}}'),
        error="bad_meta",
    )
    f.decode_message(
        "bad_meta_empty_method",
        "The method must not be empty.",
        rq(req_meta("", "/")),
        error="bad_meta",
    )
    f.decode_message(
        "bad_meta_missing_path",
        "Without anpx_target, http_meta needs a path.",
        rq(b'{"method": "GET", "headers": {}, "query": {}}'),
        error="bad_meta",
    )
    f.decode_message(
        "bad_meta_empty_target",
        "An empty path and no query give no request-target.",
        rq(req_meta("GET", "")),
        error="bad_meta",
    )
    f.decode_message(
        "bad_meta_headers_not_object",
        "headers must be an object.",
        rq(b'{"method": "GET", "path": "/", "headers": [["a", "b"]], "query": {}}'),
        error="bad_meta",
    )
    f.decode_message(
        "bad_meta_header_value_number",
        "Header values must be strings.",
        rq(b'{"method": "GET", "path": "/", "headers": {"content-length": 5}, "query": {}}'),
        error="bad_meta",
    )
    f.decode_message(
        "bad_meta_query_value_number",
        "Query values must be strings.",
        rq(b'{"method": "GET", "path": "/", "headers": {}, "query": {"a": 1}}'),
        error="bad_meta",
    )
    f.decode_message(
        "bad_meta_target_not_string",
        "anpx_target must be a string.",
        rq(b'{"method": "GET", "path": "/", "headers": {}, "query": {}, "anpx_target": 7}'),
        error="bad_meta",
    )
    f.decode_message(
        "bad_meta_anpx_headers_malformed",
        "anpx_headers must be a list of [name, value] string pairs.",
        rs(b'{"status": 200, "reason": "OK", "headers": {}, "anpx_headers": [["a"]]}'),
        error="bad_meta",
    )
    f.decode_message(
        "bad_meta_status_string",
        "status must be an integer.",
        rs(b'{"status": "200", "reason": "OK", "headers": {}}'),
        error="bad_meta",
    )
    f.decode_message(
        "bad_meta_status_out_of_range",
        "status must be from 100 to 999.",
        rs(b'{"status": 99, "reason": "OK", "headers": {}}'),
        error="bad_meta",
    )
    f.decode_message(
        "bad_meta_status_missing",
        "resp_meta needs a status.",
        rs(b'{"reason": "OK", "headers": {}}'),
        error="bad_meta",
    )
    f.decode_message(
        "bad_meta_reason_not_string",
        "reason must be a string.",
        rs(b'{"status": 200, "reason": 1, "headers": {}}'),
        error="bad_meta",
    )

    # missing_field
    f.decode_message(
        "missing_request_id",
        "A request frame needs a request_id.",
        [frame(REQ, [(T_META, WORKED_META), (T_BODY, WORKED_BODY)])],
        error="missing_field",
    )
    f.decode_message(
        "missing_request_id_in_chunk",
        "Every chunk needs a request_id.",
        [frame(RESP, [(T_IDX, u32(0)), (T_RESP_META, good_meta), (T_FINAL, FINAL)], 1)],
        error="missing_field",
    )
    f.decode_message(
        "missing_http_meta",
        "An unchunked request needs http_meta.",
        [frame(REQ, [(T_RID, RIDB), (T_BODY, b"x")])],
        error="missing_field",
    )
    f.decode_message(
        "missing_resp_meta",
        "An unchunked response needs resp_meta.",
        [frame(RESP, [(T_RID, RIDB), (T_BODY, b"x")])],
        error="missing_field",
    )
    f.decode_message(
        "missing_chunk_idx",
        "A chunked frame needs chunk_idx.",
        [frame(RESP, [(T_RID, RIDB), (T_RESP_META, good_meta), (T_FINAL, FINAL)], 1)],
        error="missing_field",
    )
    f.decode_message(
        "missing_meta_in_chunked_message",
        "A chunked message that ends without ever sending its meta is an error.",
        [rchunk(0, [(T_BODY, b"a")]), rchunk(1, [(T_BODY, b"b"), (T_FINAL, FINAL)])],
        error="missing_field",
    )
    return f


# --- the reference's actual bytes ------------------------------------------------------------
# Printed by tests/v1ref_capture.py from anp-proxy at 62776d6 (ANPXEncoder with
# chunk_size=300, request_id RID, the body every byte value twice). reference_file() rebuilds
# each frame from first principles and asserts it equals these bytes.

REFERENCE_CHUNKED_REQUEST = [
    "414e50580101010000000147749157c2a63f772700000000010000002435353065383430302d653239622d343164342d613731362d3434363635353434303030300a00000004000000000b0000000400000003020000006b7b226d6574686f64223a2022504f5354222c202270617468223a20222f75706c6f6164222c202268656164657273223a207b22636f6e74656e742d74797065223a20226170706c69636174696f6e2f6f637465742d73747265616d227d2c20227175657279223a207b7d7d030000007f000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f404142434445464748494a4b4c4d4e4f505152535455565758595a5b5c5d5e5f606162636465666768696a6b6c6d6e6f707172737475767778797a7b7c7d7e",
    "414e50580101010000000147749157c29244d08600000000010000002435353065383430302d653239622d343164342d613731362d3434363635353434303030300a00000004000000010b000000040000000303000000ef7f808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9fa0a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5b6b7b8b9babbbcbdbebfc0c1c2c3c4c5c6c7c8c9cacbcccdcecfd0d1d2d3d4d5d6d7d8d9dadbdcdddedfe0e1e2e3e4e5e6e7e8e9eaebecedeeeff0f1f2f3f4f5f6f7f8f9fafbfcfdfeff000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f404142434445464748494a4b4c4d4e4f505152535455565758595a5b5c5d5e5f606162636465666768696a6b6c6d",
    "414e505801010100000000f3a1861116ff91051a00000000010000002435353065383430302d653239622d343164342d613731362d3434363635353434303030300a00000004000000020b000000040000000303000000926e6f707172737475767778797a7b7c7d7e7f808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9fa0a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5b6b7b8b9babbbcbdbebfc0c1c2c3c4c5c6c7c8c9cacbcccdcecfd0d1d2d3d4d5d6d7d8d9dadbdcdddedfe0e1e2e3e4e5e6e7e8e9eaebecedeeeff0f1f2f3f4f5f6f7f8f9fafbfcfdfeff0c0000000400000001",
]
REFERENCE_CHUNKED_RESPONSE = [
    "414e5058010201000000014cd2ab94d7a550f1dd00000000010000002435353065383430302d653239622d343164342d613731362d3434363635353434303030300a00000004000000000b000000040000000303000000f4000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f404142434445464748494a4b4c4d4e4f505152535455565758595a5b5c5d5e5f606162636465666768696a6b6c6d6e6f707172737475767778797a7b7c7d7e7f808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9fa0a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5b6b7b8b9babbbcbdbebfc0c1c2c3c4c5c6c7c8c9cacbcccdcecfd0d1d2d3d4d5d6d7d8d9dadbdcdddedfe0e1e2e3e4e5e6e7e8e9eaebecedeeeff0f1f2f3",
    "414e5058010201000000014cd2ab94d70a15f34400000000010000002435353065383430302d653239622d343164342d613731362d3434363635353434303030300a00000004000000010b000000040000000303000000f4f4f5f6f7f8f9fafbfcfdfeff000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f404142434445464748494a4b4c4d4e4f505152535455565758595a5b5c5d5e5f606162636465666768696a6b6c6d6e6f707172737475767778797a7b7c7d7e7f808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9fa0a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5b6b7b8b9babbbcbdbebfc0c1c2c3c4c5c6c7c8c9cacbcccdcecfd0d1d2d3d4d5d6d7d8d9dadbdcdddedfe0e1e2e3e4e5e6e7",
    "414e505801020100000000d6db6adfcc0952c07700000000010000002435353065383430302d653239622d343164342d613731362d3434363635353434303030300a00000004000000020b000000040000000304000000587b22737461747573223a203230302c2022726561736f6e223a20224f4b222c202268656164657273223a207b22636f6e74656e742d74797065223a20226170706c69636174696f6e2f6f637465742d73747265616d227d7d0c00000004000000010300000018e8e9eaebecedeeeff0f1f2f3f4f5f6f7f8f9fafbfcfdfeff",
]
REFERENCE_CHUNKED_ERROR = [
    "414e505801ff00000000003bcb24c9b57372077a00000000030000001e4661696c656420746f206465636f6465206d6573736167653a20626f6f6d",
]

REF_BODY = bytes(range(256)) * 2
REF_FINAL = u32(1)  # the reference packs final_chunk through its u32 helper (fixed at HEAD)


def ref_request_frames(split: list[int]) -> list[bytes]:
    """The reference's chunked request: meta in chunk 0, chunk_tot everywhere, 4-byte final."""
    meta = req_meta("POST", "/upload", {"content-type": "application/octet-stream"})
    bounds = [0, *split, len(REF_BODY)]
    parts = [REF_BODY[a:b] for a, b in itertools.pairwise(bounds)]
    out = []
    for i, part in enumerate(parts):
        tlvs = [(T_RID, RIDB), (T_IDX, u32(i)), (T_TOT, u32(len(parts)))]
        if i == 0:
            tlvs.append((T_META, meta))
        tlvs.append((T_BODY, part))
        if i == len(parts) - 1:
            tlvs.append((T_FINAL, REF_FINAL))
        out.append(frame(REQ, tlvs, 1))
    return out


def ref_response_frames(split: list[int]) -> list[bytes]:
    """The reference's chunked response: resp_meta and a 4-byte final_chunk in the last chunk."""
    meta = resp_meta(200, "OK", {"content-type": "application/octet-stream"})
    bounds = [0, *split, len(REF_BODY)]
    parts = [REF_BODY[a:b] for a, b in itertools.pairwise(bounds)]
    out = []
    for i, part in enumerate(parts):
        tlvs = [(T_RID, RIDB), (T_IDX, u32(i)), (T_TOT, u32(len(parts)))]
        if i == len(parts) - 1:
            tlvs += [(T_RESP_META, meta), (T_FINAL, REF_FINAL)]
        tlvs.append((T_BODY, part))
        out.append(frame(RESP, tlvs, 1))
    return out


def reference_file() -> VectorFile:
    f = VectorFile(
        "reference.json",
        "Bytes the v1 reference (anp-proxy 62776d6) actually sends, quirks included "
        "(docs/protocol.md section 12).",
    )
    ref_req = [bytes.fromhex(h) for h in REFERENCE_CHUNKED_REQUEST]
    assert ref_request_frames(_split(ref_req)) == ref_req, "reference request drifted"
    f.decode_message(
        "reference_chunked_request_u32_final_chunk",
        "The reference gateway's chunked request: final_chunk is the 4-byte u32 00000001, "
        "not the single byte 01 (accepted; never sent).",
        ref_req,
        request("/upload", "POST", [("content-type", "application/octet-stream")], REF_BODY),
    )
    ref_rsp = [bytes.fromhex(h) for h in REFERENCE_CHUNKED_RESPONSE]
    assert ref_response_frames(_split(ref_rsp)) == ref_rsp, "reference response drifted"
    f.decode_message(
        "reference_chunked_response_meta_last_u32_final_chunk",
        "The reference's chunked response: resp_meta and a 4-byte final_chunk in the last "
        "chunk, body held until the meta arrives.",
        ref_rsp,
        response(200, "OK", [("content-type", "application/octet-stream")], REF_BODY),
    )
    ref_err = [bytes.fromhex(h) for h in REFERENCE_CHUNKED_ERROR]
    text = "Failed to decode message: boom"
    assert ref_err == [err_frame(text, None)], "reference error drifted"
    f.decode_message(
        "reference_error_without_request_id",
        "The reference gateway's answer to a frame it cannot decode: an ERROR frame with no "
        "request_id (a tunnel-level complaint, no stream is reset).",
        ref_err,
        error(text, None),
    )
    for name, value in (("u32_two", u32(2)), ("u32_zero", u32(0)), ("two_bytes", b"\x00\x01")):
        tlvs = [(T_RID, RIDB), (T_IDX, u32(0)), (T_TOT, u32(1))]
        meta = req_meta("POST", "/upload", {})
        bad = [frame(REQ, [*tlvs, (T_META, meta), (T_FINAL, value)], 1)]
        f.decode_message(
            f"reference_final_chunk_{name}_rejected",
            "Only 01 and the reference's 00000001 mean final_chunk; any other value is bad_tlv.",
            bad,
            error="bad_tlv",
        )
    return f


def _split(wire: list[bytes]) -> list[int]:
    """Where the reference cut the body: the end offset of every part but the last."""
    sizes = [len(_body_of(w)) for w in wire]
    return [sum(sizes[: i + 1]) for i in range(len(sizes) - 1)]


def _body_of(wire: bytes) -> bytes:
    """The http_body value of one frame built by frame()."""
    pos, end = 24, len(wire)
    while pos < end:
        tag, length = struct.unpack(">BI", wire[pos : pos + 5])
        if tag == T_BODY:
            return wire[pos + 5 : pos + 5 + length]
        pos += 5 + length
    return b""


# --- websocket.json (section 20) ------------------------------------------------------------

WS_TEXT, WS_BINARY, WS_CLOSE, WS_TEXT_MORE, WS_BINARY_MORE = 0x01, 0x02, 0x08, 0x81, 0x82


def rec(kind: int, payload: bytes) -> bytes:
    """One record: kind u8, length u32, payload (the TLV shape)."""
    return struct.pack(">BI", kind, len(payload)) + payload


def close_rec(code: int | None, reason: str = "") -> bytes:
    return rec(WS_CLOSE, b"" if code is None else struct.pack(">H", code) + reason.encode())


def r_text(data: str, fin: bool = True) -> dict:
    return {"kind": "text", "data": data, "fin": fin}


def r_binary(data: bytes, fin: bool = True) -> dict:
    return {"kind": "binary", "data": data.hex(), "fin": fin}


def r_close(code: int | None, reason: str = "") -> dict:
    return {"kind": "close", "code": code, "reason": reason}


def websocket_file() -> VectorFile:
    f = VectorFile(
        "websocket.json",
        "The ws extension (docs/protocol.md section 20): negotiation, stream heads, records.",
    )

    def records(
        name: str, desc: str, recs: list[dict], body: bytes, max_size: int = 1 << 24
    ) -> None:
        f.add(
            f"{name}_encode",
            desc,
            {"op": "ws_encode_records", "records": recs},
            {"body": body.hex()},
        )
        req = {"op": "ws_decode_records", "body": body.hex(), "max_message_size": max_size}
        f.add(f"{name}_decode", desc, req, {"records": recs})

    def bad(
        name: str, desc: str, body: bytes, code: str = "bad_record", max_size: int = 1 << 24
    ) -> None:
        req = {"op": "ws_decode_records", "body": body.hex(), "max_message_size": max_size}
        f.add(name, desc, req, {"error": code})

    def ext(name: str, desc: str, value: str | None, flow: int | None, ws: int | None) -> None:
        headers = [] if value is None else [["anpx-extensions", value]]
        f.add(name, desc, {"op": "ws_extensions", "headers": headers}, {"flow": flow, "ws": ws})

    ext(
        "ws_ext_offer",
        "A receiver or gateway offering flow control and WebSocket streams.",
        "flow=1048576, ws=1",
        1048576,
        1,
    )
    ext(
        "ws_ext_flow_only",
        "A peer without WebSocket streams (ws absent).",
        "flow=1048576",
        1048576,
        None,
    )
    ext("ws_ext_v1", "A v1 peer sends no anpx-extensions at all.", None, None, None)
    ext(
        "ws_ext_unknown_version",
        "ws=2 is not a version this spec defines: as if absent.",
        "ws=2, flow=262144",
        262144,
        None,
    )
    ext(
        "ws_ext_not_digits",
        "A version that is not ASCII digits is ignored.",
        "flow=262144, ws=x",
        262144,
        None,
    )

    records("ws_rec_text", "One whole text message.", [r_text("hello")], rec(WS_TEXT, b"hello"))
    records(
        "ws_rec_binary", "One whole binary message.", [r_binary(BINARY)], rec(WS_BINARY, BINARY)
    )
    records(
        "ws_rec_empty_messages",
        "Empty text and binary messages are one record each, of length 0.",
        [r_text(""), r_binary(b"")],
        rec(WS_TEXT, b"") + rec(WS_BINARY, b""),
    )
    records(
        "ws_rec_fragmented",
        "A text message in three pieces (0x81, 0x81, 0x01) then a binary one in two (0x82, 0x02).",
        [
            r_text("frag", False),
            r_text("men", False),
            r_text("ted!"),
            r_binary(b"ab", False),
            r_binary(b"c"),
        ],
        rec(WS_TEXT_MORE, b"frag")
        + rec(WS_TEXT_MORE, b"men")
        + rec(WS_TEXT, b"ted!")
        + rec(WS_BINARY_MORE, b"ab")
        + rec(WS_BINARY, b"c"),
    )
    records(
        "ws_rec_non_ascii_text",
        "Text is UTF-8.",
        [r_text("caf\u00e9 \u2713")],
        rec(WS_TEXT, "caf\u00e9 \u2713".encode()),
    )
    records(
        "ws_rec_close",
        "CLOSE: code u16 then the UTF-8 reason.",
        [r_close(1000, "bye")],
        close_rec(1000, "bye"),
    )
    records(
        "ws_rec_close_no_status",
        "An empty CLOSE: the Close frame had no status code (1005).",
        [r_close(None)],
        close_rec(None),
    )
    records(
        "ws_rec_close_abnormal",
        "1006 in a CLOSE: the sender's WebSocket ended without a Close frame.",
        [r_close(1006, "client vanished")],
        close_rec(1006, "client vanished"),
    )
    records(
        "ws_rec_close_app_code",
        "Application close codes 3000-4999 are carried as they are.",
        [r_text("last"), r_close(4321, "custom")],
        rec(WS_TEXT, b"last") + close_rec(4321, "custom"),
    )
    f.add(
        "ws_rec_split_character_decode",
        "A piece may end inside a UTF-8 character: each piece's text is what incremental decoding yields.",
        {
            "op": "ws_decode_records",
            "body": (rec(WS_TEXT_MORE, b"a\xc3") + rec(WS_TEXT, b"\xa9")).hex(),
            "max_message_size": 100,
        },
        {"records": [r_text("a", False), r_text("\u00e9")]},
    )
    f.add(
        "ws_rec_extension_skipped_decode",
        "Records of kinds 0xF0-0xFF are reserved for extensions and skipped.",
        {
            "op": "ws_decode_records",
            "body": (rec(0xF0, b"??") + rec(WS_BINARY, b"x")).hex(),
            "max_message_size": 100,
        },
        {"records": [r_binary(b"x")]},
    )
    big = bytes(65536) + b"\x01"
    records(
        "ws_rec_long_message_split",
        "A message over 65,536 bytes is sent as 65,536-byte pieces.",
        [r_binary(bytes(65536), False), r_binary(b"\x01")],
        rec(WS_BINARY_MORE, big[:65536]) + rec(WS_BINARY, big[65536:]),
    )
    f.add(
        "ws_rec_message_at_limit_decode",
        "A message of exactly max_message_size bytes passes (pieces add up).",
        {
            "op": "ws_decode_records",
            "body": (rec(WS_BINARY_MORE, b"ab") + rec(WS_BINARY, b"cd")).hex(),
            "max_message_size": 4,
        },
        {"records": [r_binary(b"ab", False), r_binary(b"cd")]},
    )

    bad("ws_bad_unknown_kind", "Kind 0x03 is not defined.", rec(0x03, b"x"))
    bad("ws_bad_piece_too_long", "A data record over 65,536 bytes.", rec(WS_BINARY, bytes(65537)))
    bad("ws_bad_close_too_long", "A CLOSE payload over 125 bytes.", close_rec(1000, "r" * 124))
    bad("ws_bad_close_one_byte", "A CLOSE payload of one byte.", rec(WS_CLOSE, b"\x03"))
    bad("ws_bad_close_code_1005", "1005 is never carried: an empty CLOSE says it.", close_rec(1005))
    bad("ws_bad_close_code_1015", "1015 (TLS failure) is not carried.", close_rec(1015))
    bad("ws_bad_close_code_2999", "Codes 1016-2999 are not carried.", close_rec(2999))
    bad("ws_bad_close_code_5000", "Codes over 4999 are not carried.", close_rec(5000))
    bad(
        "ws_bad_close_reason_utf8",
        "A CLOSE reason that is not UTF-8.",
        rec(WS_CLOSE, b"\x03\xe8\xff"),
    )
    bad("ws_bad_text_utf8", "Text that is not UTF-8.", rec(WS_TEXT, b"\xc3\x28"))
    bad("ws_bad_text_cut", "A text message ending inside a character.", rec(WS_TEXT, b"\xc3"))
    bad(
        "ws_bad_type_change",
        "A binary piece inside a text message.",
        rec(WS_TEXT_MORE, b"a") + rec(WS_BINARY, b"b"),
    )
    bad("ws_bad_after_close", "A record after CLOSE.", close_rec(1000) + rec(WS_TEXT, b"late"))
    bad("ws_bad_truncated", "The body ends inside a record.", rec(WS_BINARY, b"abc")[:-1])
    bad(
        "ws_bad_message_too_large",
        "A message over max_message_size, counted across pieces.",
        rec(WS_BINARY_MORE, b"ab") + rec(WS_BINARY, b"cde"),
        "too_large",
        4,
    )

    # Whole ANPX messages of a WebSocket stream, with the ordinary message ops.
    sec_protocol = ("sec-websocket-protocol", "chat, superchat")
    open_headers = [
        ("host", "app.test"),
        ("connection", "upgrade"),
        ("upgrade", "websocket"),
        ("sec-websocket-version", "13"),
        sec_protocol,
    ]
    open_body = rec(WS_TEXT, b"hello") + close_rec(1000, "bye")
    f.both(
        "ws_open_stream",
        "The gateway's side of a session in one frame: the open head (GET, upgrade: websocket, "
        "offered subprotocols), a text message and CLOSE.",
        request("/chat?room=1", "GET", open_headers, open_body),
        [single(REQ, req_meta("GET", "/chat", dict(open_headers), {"room": "1"}), open_body)],
    )
    accept_body = rec(WS_BINARY, b"\x00\x01") + close_rec(1000)
    f.both(
        "ws_accept_stream",
        "The receiver's side: 101 naming the chosen subprotocol, a binary message, CLOSE echoed.",
        response(101, "Switching Protocols", [("sec-websocket-protocol", "chat")], accept_body),
        [
            single(
                RESP,
                resp_meta(101, "Switching Protocols", {"sec-websocket-protocol": "chat"}),
                accept_body,
            )
        ],
    )
    deny = [("content-type", "text/plain; charset=utf-8"), ("content-length", "10")]
    f.both(
        "ws_deny_stream",
        "A denial is an ordinary response (status 200-999) whose body goes to the client as is.",
        response(403, "Forbidden", deny, b"Forbidden\n"),
        [single(RESP, resp_meta(403, "Forbidden", dict(deny)), b"Forbidden\n")],
    )
    return f


# --- handshake.json -------------------------------------------------------------------------


def handshake_file() -> VectorFile:
    f = VectorFile(
        "handshake.json",
        "Values of the tunnel handshake's headers (protocol.md section 15): anpx-tunnel-ports, "
        "the 101 header naming every worker's tunnel port.",
    )

    def ports(name: str, desc: str, value: str, limit: int, expect: list[int] | None) -> None:
        req = {"op": "parse_tunnel_ports", "value": value, "limit": limit}
        f.add(
            name,
            desc,
            req,
            {"ports": expect} if expect is not None else {"error": "bad_tunnel_ports"},
        )

    ports("tunnel_ports_one", "A single port.", "8765", 64, [8765])
    ports(
        "tunnel_ports_list",
        "Comma-separated, optional spaces and tabs around items, order kept.",
        "8767, 8765,\t8766",
        64,
        [8767, 8765, 8766],
    )
    ports("tunnel_ports_duplicates", "A repeated port counts once.", "8765, 8765, 1", 2, [8765, 1])
    ports("tunnel_ports_bounds", "1 and 65535 are ports.", "1,65535", 64, [1, 65535])
    for name, value, why in (
        ("empty", "", "an empty value"),
        ("zero", "0", "port 0"),
        ("too_big", "65536", "a number above 65535"),
        ("sign", "+8765", "a sign"),
        ("empty_item", "8765,,8766", "an empty item"),
        ("trailing_comma", "8765,", "a trailing comma"),
        ("semicolon", "8765;8766", "another separator"),
        ("non_ascii_digits", "\uff18\uff17\uff16\uff15", "non-ASCII digits"),
        ("underscore", "87_65", "an underscore"),
        ("leading_zeros_too_long", "000008765", "more digits than 65535 has"),
    ):
        ports(f"tunnel_ports_refuse_{name}", f"Refused whole: {why}.", value, 64, None)
    ports(
        "tunnel_ports_over_limit",
        "More distinct ports than the receiver's limit: refused whole.",
        "1, 2, 3",
        2,
        None,
    )
    return f


# --- tcp.json -------------------------------------------------------------------------------

TCP_PEER = ("anpx-tcp-peer", "203.0.113.9:51234")


def stream_frames(ftype: int, meta: bytes, parts: list[bytes]) -> list[bytes]:
    """How a TCP stream is sent: chunk 0 carries the meta (and any early bytes), no
    chunk_tot, one frame per socket read, final_chunk alone on the last (the EOF)."""
    return chunk_frames(ftype, meta, [*parts, b""], total=False)


def tcp_file() -> VectorFile:
    f = VectorFile(
        "tcp.json",
        "TCP streams (protocol.md section 21): the open head, the answer, the data and EOF "
        "of each direction, resets, and the handshake headers (op tcp_handshake) and open "
        "heads (op tcp_service) an implementation must parse the same way.",
    )
    open_meta = req_meta("ANPX-TCP", "db", {TCP_PEER[0]: TCP_PEER[1]})
    f.both(
        "tcp_open",
        "Opening a stream to service db: method ANPX-TCP, the service as the target, the "
        "client's address for the receiver's log; nothing sent yet.",
        request("db", "ANPX-TCP", [TCP_PEER]),
        [single(REQ, open_meta)],
    )
    f.both(
        "tcp_open_early_data_and_eof",
        "A client that wrote its bytes and half-closed before the stream opened: head, data "
        "and EOF travel as one unchunked frame.",
        request("db", "ANPX-TCP", [TCP_PEER], b"SELECT 1;\n"),
        [single(REQ, open_meta, b"SELECT 1;\n")],
    )
    connected = resp_meta(200, "connected")
    f.decode_message(
        "tcp_answer_data_then_eof_decode",
        "The receiver's direction: 200 connected in chunk 0, a frame per read, then the "
        "service's EOF as a final chunk without body (the other direction keeps flowing).",
        stream_frames(RESP, connected, [b"", b"hello ", b"world"]),
        response(200, "connected", [], b"hello world"),
    )
    f.decode_message(
        "tcp_client_data_then_eof_decode",
        "The opener's direction sent as a stream: the head alone in chunk 0, then data, "
        "then the EOF.",
        stream_frames(REQ, open_meta, [b"", BINARY, b"\x00"]),
        request("db", "ANPX-TCP", [TCP_PEER], BINARY + b"\x00"),
    )
    for name, text, why in (
        ("tcp_connect_refused", "connect failed: refused", "the service refused the connection"),
        ("tcp_connect_timed_out", "connect failed: timed out", "the service did not answer"),
        ("tcp_no_such_service", "no such service", "the receiver offers no such service"),
        ("tcp_reset", "connection reset", "a socket was reset: the stream is reset both ways"),
        ("tcp_idle", "idle timeout", "no byte either way for tcp_idle_timeout"),
    ):
        f.both(name, f"An ERROR frame: {why}.", error(text), [err_frame(text)])

    def handshake(name: str, desc: str, headers: list[tuple[str, str]], expect: dict) -> None:
        req = {"op": "tcp_handshake", "headers": [list(h) for h in headers]}
        f.add(name, desc, req, expect)

    handshake(
        "tcp_handshake_offer",
        "A receiver offering two services (names in order, duplicates dropped).",
        [("anpx-extensions", "flow=1048576"), ("anpx-extensions", "tcp=1"),
         ("anpx-tcp-services", "db, ssh,db")],
        {"tcp": True, "visitor": False, "services": ["db", "ssh"]},
    )  # fmt: skip
    handshake(
        "tcp_handshake_one_line",
        "tcp=1 may share the anpx-extensions line with flow; service lists may repeat.",
        [("anpx-extensions", "flow=65536, tcp=1"), ("anpx-tcp-services", "a"),
         ("anpx-tcp-services", "b.c_d-e")],
        {"tcp": True, "visitor": False, "services": ["a", "b.c_d-e"]},
    )  # fmt: skip
    handshake(
        "tcp_handshake_services_without_tcp",
        "A service list without tcp=1 offers nothing.",
        [("anpx-extensions", "flow=65536"), ("anpx-tcp-services", "db")],
        {"tcp": False, "visitor": False, "services": []},
    )
    handshake(
        "tcp_handshake_tcp_2",
        "Only tcp=1 announces the extension.",
        [("anpx-extensions", "tcp=2"), ("anpx-tcp-services", "db")],
        {"tcp": False, "visitor": False, "services": []},
    )
    handshake(
        "tcp_handshake_visitor",
        "A visitor: anpx-role: visitor, flow and tcp=1, no services.",
        [("anpx-role", "visitor"), ("anpx-extensions", "flow=1048576"),
         ("anpx-extensions", "tcp=1")],
        {"tcp": True, "visitor": True, "services": []},
    )  # fmt: skip
    for name, value in (
        ("space", "my db"),
        ("leading_dot", ".db"),
        ("too_long", "a" * 65),
        ("non_ascii", "d\u00e9"),
        ("slash", "db/1"),
    ):
        handshake(
            f"tcp_handshake_bad_name_{name}",
            "A malformed service name refuses the handshake (HTTP 400).",
            [("anpx-extensions", "tcp=1"), ("anpx-tcp-services", value)],
            {"error": "bad_services"},
        )
    handshake(
        "tcp_handshake_too_many",
        "At most 64 services.",
        [("anpx-extensions", "tcp=1"),
         ("anpx-tcp-services", ", ".join(f"s{i}" for i in range(65)))],
        {"error": "bad_services"},
    )  # fmt: skip
    handshake(
        "tcp_handshake_64",
        "64 services are fine.",
        [("anpx-extensions", "tcp=1"),
         ("anpx-tcp-services", ", ".join(f"s{i}" for i in range(64)))],
        {"tcp": True, "visitor": False, "services": [f"s{i}" for i in range(64)]},
    )  # fmt: skip

    def service(name: str, desc: str, message: dict, expect: str | None) -> None:
        f.add(name, desc, {"op": "tcp_service", "message": message}, {"service": expect})

    service("tcp_service_open", "An open head names its service.", request("db", "ANPX-TCP"), "db")
    service("tcp_service_http", "An HTTP request is no TCP open.", request("/db", "GET"), None)
    service(
        "tcp_service_case",
        "The method is case-sensitive: anpx-tcp is an HTTP method like any other.",
        request("db", "anpx-tcp"),
        None,
    )
    service(
        "tcp_service_bad_name",
        "An open head naming no valid service is refused (no such service).",
        request("/db", "ANPX-TCP"),
        None,
    )
    return f


FILES = (
    frames_file,
    requests_file,
    responses_file,
    chunking_file,
    extensions_file,
    invalid_file,
    reference_file,
    websocket_file,
    handshake_file,
    tcp_file,
)


def render(vf: VectorFile) -> str:
    return json.dumps({"description": vf.description, "vectors": vf.vectors}, indent=1) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default = Path(__file__).resolve().parent / "vectors"
    parser.add_argument("--out", type=Path, default=default, help="output directory")
    args = parser.parse_args()
    files = [build() for build in FILES]
    names = [v["name"] for vf in files for v in vf.vectors]
    dupes = sorted({n for n in names if names.count(n) > 1})
    assert not dupes, f"duplicate vector names: {dupes}"
    args.out.mkdir(parents=True, exist_ok=True)
    for vf in files:
        (args.out / vf.filename).write_text(render(vf), encoding="utf-8")
    print(f"wrote {len(names)} vectors in {len(files)} files to {args.out}")


if __name__ == "__main__":
    main()
