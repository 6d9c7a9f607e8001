"""The conformance adapter protocol, spoken for anpx_core (standard library only).

One JSON object per line in, one per line out, bytes as lowercase hex::

    {"op":"encode_frame","frame":F}                  -> {"wire":"<hex>"}
    {"op":"decode_frames","wire":"<hex>"}            -> {"frames":[F,...]}
    {"op":"encode_message","message":M,"max_frame_size":n} -> {"wire":["<hex>",...]}
    {"op":"decode_message","wire":["<hex>",...]}     -> {"message":M}
    {"op":"parse_tunnel_ports","value":"8765, 8766","limit":n} -> {"ports":[8765,8766]}
    {"op":"tcp_handshake","headers":[[n,v],...]}      -> {"tcp":b,"visitor":b,"services":[...]}
    {"op":"tcp_service","message":M}                 -> {"service":s-or-null}

A ProtocolError answers ``{"error": "<code>"}``; a request the adapter cannot
understand answers ``{"error": "bad_request", "detail": "..."}``.
Run it as ``python -m anpx_host.adapter``.
"""

from __future__ import annotations

import json
import sys
from typing import Any, TextIO

from anpx_core.errors import ProtocolError
from anpx_core.frames import FrameDecoder, encode_frame
from anpx_core.messages import (
    DEFAULT_SEND_FRAME_SIZE,
    ErrorMessage,
    Message,
    Request,
    Response,
    decode_message,
    encode_message,
)
from anpx_core.meta import RequestHead
from anpx_core.siblings import parse_tunnel_ports
from anpx_core.strict import StrictError
from anpx_core.tcp import has_tcp, is_visitor, parse_services, service_of
from anpx_core.tunnel import parse_extensions
from anpx_core.wsstream import (
    CloseRecord,
    Record,
    RecordDecoder,
    encode_close,
    encode_piece,
    parse_ws_extension,
)


class BadRequest(Exception):
    """The adapter request itself is malformed (not an ANPX error)."""


def _int(obj: dict[str, Any], key: str, lo: int, hi: int) -> int:
    value = obj.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise BadRequest(f"{key!r} must be an integer from {lo} to {hi}")
    return value


def _hex(value: Any, what: str) -> bytes:
    if not isinstance(value, str):
        raise BadRequest(f"{what} must be a hex string")
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise BadRequest(f"{what} is not valid hex") from None


def _headers(value: Any) -> list[tuple[str, str]]:
    if not isinstance(value, list) or not all(
        isinstance(p, list) and len(p) == 2 and all(isinstance(i, str) for i in p) for p in value
    ):
        raise BadRequest("headers must be [[name, value], ...]")
    return [(name, val) for name, val in value]


def message_from_json(m: Any) -> Message:
    if not isinstance(m, dict):
        raise BadRequest("message must be an object")
    kind = m.get("type")
    if kind == "request":
        return Request(
            str(m["request_id"]), str(m["method"]), str(m["target"]),
            _headers(m.get("headers", [])), _hex(m.get("body", ""), "body"),
        )  # fmt: skip
    if kind == "response":
        return Response(
            str(m["request_id"]), _int(m, "status", 100, 999), str(m.get("reason", "")),
            _headers(m.get("headers", [])), _hex(m.get("body", ""), "body"),
        )  # fmt: skip
    if kind == "error":
        rid = m.get("request_id")
        return ErrorMessage(None if rid is None else str(rid), str(m.get("text", "")))
    raise BadRequest(f"unknown message type {kind!r}")


def message_to_json(msg: Message) -> dict[str, Any]:
    if isinstance(msg, Request):
        return {
            "type": "request", "request_id": msg.request_id, "method": msg.method,
            "target": msg.target, "headers": [list(h) for h in msg.headers], "body": msg.body.hex(),
        }  # fmt: skip
    if isinstance(msg, Response):
        return {
            "type": "response", "request_id": msg.request_id, "status": msg.status,
            "reason": msg.reason, "headers": [list(h) for h in msg.headers], "body": msg.body.hex(),
        }  # fmt: skip
    return {"type": "error", "request_id": msg.request_id, "text": msg.text}


def handle(request: Any) -> dict[str, Any]:
    """Answer one adapter request (already parsed from JSON)."""
    try:
        if not isinstance(request, dict):
            raise BadRequest("request must be a JSON object")
        op = request.get("op")
        if op == "encode_frame":
            frame = request.get("frame")
            if not isinstance(frame, dict) or not isinstance(frame.get("tlvs"), list):
                raise BadRequest("frame must be {type, flags, tlvs}")
            tlvs = []
            for item in frame["tlvs"]:
                if not isinstance(item, list) or len(item) != 2:
                    raise BadRequest("each TLV must be [tag, hex]")
                tag = item[0]
                if isinstance(tag, bool) or not isinstance(tag, int) or not 0 <= tag <= 255:
                    raise BadRequest("a TLV tag must be an integer from 0 to 255")
                tlvs.append((tag, _hex(item[1], "TLV value")))
            wire = encode_frame(_int(frame, "type", 0, 255), _int(frame, "flags", 0, 255), tlvs)
            return {"wire": wire.hex()}
        if op == "decode_frames":
            decoder = FrameDecoder()
            frames = decoder.feed(_hex(request.get("wire"), "wire"))
            decoder.close()
            return {
                "frames": [
                    {"type": f.type, "flags": f.flags, "tlvs": [[t, v.hex()] for t, v in f.tlvs]}
                    for f in frames
                ]
            }
        if op == "encode_message":
            size = request.get("max_frame_size", DEFAULT_SEND_FRAME_SIZE)
            if isinstance(size, bool) or not isinstance(size, int) or size < 24:
                raise BadRequest("max_frame_size must be an integer of at least 24")
            encoded = encode_message(message_from_json(request.get("message")), size)
            return {"wire": [w.hex() for w in encoded]}
        if op == "decode_message":
            hexes = request.get("wire")
            if not isinstance(hexes, list):
                raise BadRequest("wire must be a list of hex strings")
            msg = decode_message([_hex(w, "wire entry") for w in hexes])
            return {"message": message_to_json(msg)}
        if op in _WS_OPS:
            return _ws_op(op, request)
        if op == "parse_tunnel_ports":  # the 101's anpx-tunnel-ports (protocol.md 15.1)
            value = request.get("value")
            if not isinstance(value, str):
                raise BadRequest("value must be a string")
            try:
                ports = parse_tunnel_ports(value, _int(request, "limit", 1, 65535))
            except StrictError as exc:
                return {"error": "bad_tunnel_ports", "detail": str(exc)}
            return {"ports": ports}
        if op == "tcp_handshake":  # protocol.md section 21
            headers = _headers(request.get("headers"))
            try:
                services = parse_services(headers)
            except ValueError as exc:
                return {"error": "bad_services", "detail": str(exc)}
            return {"tcp": has_tcp(headers), "visitor": is_visitor(headers), "services": services}
        if op == "tcp_service":
            msg = message_from_json(request.get("message"))
            if not isinstance(msg, Request):
                raise BadRequest("tcp_service needs a request")
            return {"service": service_of(RequestHead(msg.method, msg.target, msg.headers))}
        raise BadRequest(f"unknown op {op!r}")
    except ProtocolError as exc:
        return {"error": exc.code, "detail": exc.message}
    except (BadRequest, KeyError, UnicodeEncodeError) as exc:  # e.g. a lone surrogate in a str
        return {"error": "bad_request", "detail": str(exc)}


# --- the ws extension (docs/protocol.md section 20) ----------------------------------------

_WS_OPS = frozenset({"ws_encode_records", "ws_decode_records", "ws_extensions"})


def _record_to_json(record: Record) -> dict[str, Any]:
    if isinstance(record, CloseRecord):
        return {"kind": "close", "code": record.code, "reason": record.reason}
    if isinstance(record.data, str):
        return {"kind": "text", "data": record.data, "fin": record.fin}
    return {"kind": "binary", "data": record.data.hex(), "fin": record.fin}


def _record_from_json(r: Any) -> bytes:
    if not isinstance(r, dict):
        raise BadRequest("a record must be an object")
    kind = r.get("kind")
    if kind == "close":
        code = r.get("code")
        if code is not None:
            code = _int(r, "code", 0, 65535)
        try:
            return encode_close(code, str(r.get("reason", "")))
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
    fin = r.get("fin", True)
    if not isinstance(fin, bool):
        raise BadRequest("'fin' must be a boolean")
    if kind == "text":
        return encode_piece(str(r.get("data", "")), fin)
    if kind == "binary":
        return encode_piece(_hex(r.get("data", ""), "data"), fin)
    raise BadRequest(f"unknown record kind {kind!r}")


def _ws_op(op: str, request: dict[str, Any]) -> dict[str, Any]:
    if op == "ws_extensions":
        headers = _headers(request.get("headers", []))
        return {"flow": parse_extensions(headers), "ws": parse_ws_extension(headers)}
    if op == "ws_encode_records":
        recs = request.get("records")
        if not isinstance(recs, list):
            raise BadRequest("records must be a list")
        return {"body": b"".join(_record_from_json(r) for r in recs).hex()}
    decoder = RecordDecoder(_int(request, "max_message_size", 0, 2**62))
    records = decoder.feed(_hex(request.get("body"), "body"))
    decoder.end()
    return {"records": [_record_to_json(r) for r in records]}


def serve(stdin: TextIO, stdout: TextIO) -> None:
    for line in stdin:
        if not line.strip():
            continue
        try:
            request = json.loads(line)
        except ValueError as exc:
            answer = {"error": "bad_request", "detail": f"not JSON: {exc}"}
        else:
            answer = handle(request)
        stdout.write(json.dumps(answer) + "\n")
        stdout.flush()


def main() -> None:
    serve(sys.stdin, sys.stdout)


if __name__ == "__main__":
    main()
