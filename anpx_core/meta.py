"""http_meta / resp_meta JSON: the v1 fields, plus lossless extension keys.

v1 fields are what the reference implementation writes: a request's
percent-decoded ``path``, a ``query`` dict and a ``headers`` dict; a
response's ``status``, ``reason`` and ``headers``. They cannot say everything
HTTP can (encoded slashes, repeated query keys, repeated headers), so when --
and only when -- a message is not expressible in them we add:

``anpx_target``   the request-target exactly as received (path and query).
``anpx_headers``  every header field as ``[name, value]`` pairs, in order,
                  duplicates kept.

v1 decoders ignore unknown keys; our decoder prefers the extension keys.
Header values are the field bytes read as ISO-8859-1, so any byte survives.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, quote, unquote, urlencode

from .errors import ProtocolError

Headers = list[tuple[str, str]]

#: Characters left unescaped when a v1 path is turned back into a target
#: (RFC 3986 pchar plus "/"); unreserved characters are always kept.
PATH_SAFE = "/!$&'()*+,;=:@"

KEY_TARGET = "anpx_target"
KEY_HEADERS = "anpx_headers"


@dataclass(slots=True)
class RequestHead:
    method: str
    target: str
    headers: Headers = field(default_factory=list)


@dataclass(slots=True)
class ResponseHead:
    status: int
    reason: str = ""
    headers: Headers = field(default_factory=list)


def split_target(target: str) -> tuple[str, dict[str, str]]:
    """The v1 view of a request-target: decoded path and last-wins query dict."""
    raw_path, _, raw_query = target.partition("?")
    return unquote(raw_path), dict(parse_qsl(raw_query, keep_blank_values=True))


def join_target(path: str, query: dict[str, str | list[str]]) -> str:
    """Rebuild a request-target from v1 fields (the inverse of split_target where one exists)."""
    target = quote(path, safe=PATH_SAFE)
    if query:
        target += "?" + urlencode(query, doseq=True)
    return target


def _headers_dict(headers: Headers) -> tuple[dict[str, str], bool]:
    """Lower-cased v1 header dict and whether it lost nothing (no repeated names)."""
    merged: dict[str, str] = {}
    lossless = True
    for name, value in headers:
        key = name.lower()
        if key in merged:
            # RFC 9110 field combination: the best a v1 peer can be given.
            merged[key] = f"{merged[key]}, {value}"
            lossless = False
        else:
            merged[key] = value
    return merged, lossless


def encode_request_meta(head: RequestHead) -> bytes:
    path, query = split_target(head.target)
    headers, lossless = _headers_dict(head.headers)
    meta: dict[str, object] = {
        "method": head.method,
        "path": path,
        "headers": headers,
        "query": query,
    }
    if join_target(path, query) != head.target:
        meta[KEY_TARGET] = head.target
    if not lossless:
        meta[KEY_HEADERS] = [[name.lower(), value] for name, value in head.headers]
    return json.dumps(meta).encode("ascii")


def encode_response_meta(head: ResponseHead) -> bytes:
    headers, lossless = _headers_dict(head.headers)
    meta: dict[str, object] = {"status": head.status, "reason": head.reason, "headers": headers}
    if not lossless:
        meta[KEY_HEADERS] = [[name.lower(), value] for name, value in head.headers]
    return json.dumps(meta).encode("ascii")


def _load(raw: bytes, what: str, max_size: int) -> dict:
    if len(raw) > max_size:
        raise ProtocolError("too_large", f"{what} of {len(raw)} bytes exceeds {max_size}")
    try:
        obj = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError("bad_meta", f"{what} is not valid UTF-8 JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ProtocolError("bad_meta", f"{what} is not a JSON object")
    return obj


def _str(obj: dict, key: str, what: str, default: str | None = None) -> str:
    value = obj.get(key, default)
    if not isinstance(value, str):
        if value is None:
            raise ProtocolError("bad_meta", f"{what} lacks {key!r}")
        raise ProtocolError("bad_meta", f"{what} {key!r} must be a string")
    return value


def _headers(obj: dict, what: str) -> Headers:
    if KEY_HEADERS in obj:
        pairs = obj[KEY_HEADERS]
        if not isinstance(pairs, list) or not all(
            isinstance(p, list) and len(p) == 2 and isinstance(p[0], str) and isinstance(p[1], str)
            for p in pairs
        ):
            raise ProtocolError("bad_meta", f"{what} {KEY_HEADERS!r} must be [[name, value], ...]")
        return [(name.lower(), value) for name, value in pairs]
    headers = obj.get("headers", {})
    if not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
        raise ProtocolError("bad_meta", f"{what} 'headers' must map names to strings")
    return [(name.lower(), value) for name, value in headers.items()]


def decode_request_meta(raw: bytes, max_size: int) -> RequestHead:
    obj = _load(raw, "http_meta", max_size)
    method = _str(obj, "method", "http_meta")
    if not method:
        raise ProtocolError("bad_meta", "http_meta 'method' is empty")
    if KEY_TARGET in obj:
        target = _str(obj, KEY_TARGET, "http_meta")
    else:
        path = _str(obj, "path", "http_meta")
        query = obj.get("query", {})
        if not isinstance(query, dict) or not all(
            isinstance(v, str) or (isinstance(v, list) and all(isinstance(i, str) for i in v))
            for v in query.values()
        ):
            raise ProtocolError("bad_meta", "http_meta 'query' must map names to strings")
        target = join_target(path, query)
    if not target:
        raise ProtocolError("bad_meta", "http_meta gives an empty request-target")
    return RequestHead(method, target, _headers(obj, "http_meta"))


def decode_response_meta(raw: bytes, max_size: int) -> ResponseHead:
    obj = _load(raw, "resp_meta", max_size)
    status = obj.get("status")
    if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 999:
        raise ProtocolError("bad_meta", "resp_meta 'status' must be an integer from 100 to 999")
    reason = _str(obj, "reason", "resp_meta", default="")
    return ResponseHead(status, reason, _headers(obj, "resp_meta"))
