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

Decoding is strict (:mod:`anpx_core.strict`): a method or header name that is not a token,
a header value with a control character, a request-target with whitespace, or any string
UTF-8 cannot encode (JSON can carry a lone surrogate) is ``bad_meta``, so the stream is
refused where it enters instead of failing later in the app or the front.
"""

from __future__ import annotations

import json
import json.encoder
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlencode

from .errors import ProtocolError
from .headers import Headers as Headers  # re-exported: the one representation
from .strict import StrictError, check_fields, check_target, check_text, check_token

#: Characters left unescaped when a v1 path is turned back into a target
#: (RFC 3986 pchar plus "/"); unreserved characters are always kept.
PATH_SAFE = "/!$&'()*+,;=:@"

# Fast paths: targets made only of characters that unquote/quote/parse_qsl/urlencode
# all leave alone map to the v1 fields (and back) without calling urllib, which
# dominates the cost of a small frame. Anything else takes the urllib path.
_UNRESERVED = r"A-Za-z0-9_.~\-"
_PLAIN_PATH = re.compile(f"[{_UNRESERVED}/!$&'()*+,;=:@]*").fullmatch
_PLAIN_PAIR = f"[{_UNRESERVED}]*=[{_UNRESERVED}]*"
_PLAIN_QUERY = re.compile(f"{_PLAIN_PAIR}(?:&{_PLAIN_PAIR})*").fullmatch

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


def join_target(path: str, query: Mapping[str, str | list[str]]) -> str:
    """Rebuild a request-target from v1 fields (the inverse of split_target where one exists)."""
    if not query:
        if _PLAIN_PATH(path):
            return path
    elif _PLAIN_PATH(path):
        try:
            qs = "&".join(map("=".join, query.items()))  # type: ignore[arg-type]
        except TypeError:  # a list value (repeated key): urlencode's doseq
            qs = ""
        # One "=" per pair and one "&" between pairs means no key or value held either,
        # and the pattern admits nothing else urlencode would escape.
        if _PLAIN_QUERY(qs) and qs.count("&") == len(query) - 1:
            return path + "?" + qs
    target = quote(path, safe=PATH_SAFE)
    if query:
        target += "?" + urlencode(query, doseq=True)
    return target


def v1_view(target: str) -> tuple[str, dict[str, str], bool]:
    """split_target(target) and whether join_target gives ``target`` back."""
    raw_path, sep, raw_query = target.partition("?")
    if _PLAIN_PATH(raw_path) and (not sep or _PLAIN_QUERY(raw_query)):
        if not sep:
            return raw_path, {}, True
        pairs = raw_query.split("&")
        query = dict([pair.split("=", 1) for pair in pairs])
        return raw_path, query, len(query) == len(pairs)  # a repeated key is lost
    path, query = split_target(target)
    return path, query, join_target(path, query) == target


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


# json.dumps(obj) with its default options builds a new C encoder on every call; this is
# that same encoder built once (no circular check: a meta dict is built here, from strings).
_c_make_encoder = getattr(json.encoder, "c_make_encoder", None)
_dumps_encoder = (
    None
    if _c_make_encoder is None
    else _c_make_encoder(
        None,
        json.JSONEncoder().default,
        json.encoder.encode_basestring_ascii,
        None,
        ": ",
        ", ",
        False,
        False,
        True,
    )
)


def _dumps(meta: dict[str, object]) -> bytes:
    """``json.dumps(meta).encode("ascii")``, byte for byte."""
    if _dumps_encoder is None:  # an interpreter without the C accelerator
        return json.dumps(meta).encode("ascii")
    return "".join(_dumps_encoder(meta, 0)).encode("ascii")


def encode_request_meta(head: RequestHead) -> bytes:
    path, query, target_lossless = v1_view(head.target)
    headers, lossless = _headers_dict(head.headers)
    meta: dict[str, object] = {
        "method": head.method,
        "path": path,
        "headers": headers,
        "query": query,
    }
    if not target_lossless:
        meta[KEY_TARGET] = head.target
    if not lossless:
        meta[KEY_HEADERS] = [[name.lower(), value] for name, value in head.headers]
    return _dumps(meta)


def encode_response_meta(head: ResponseHead) -> bytes:
    headers, lossless = _headers_dict(head.headers)
    meta: dict[str, object] = {"status": head.status, "reason": head.reason, "headers": headers}
    if not lossless:
        meta[KEY_HEADERS] = [[name.lower(), value] for name, value in head.headers]
    return _dumps(meta)


_raw_decode = json.JSONDecoder().raw_decode  # what json.loads uses, minus its wrapping


def _loads(raw: bytes) -> object:
    """json.loads(raw), with a shortcut for the usual UTF-8 text starting with "{"."""
    # json.loads sniffs UTF-16/32 from NUL bytes and allows whitespace around the value;
    # anything but a plain "{...}" takes its path so the accepted language is the same.
    if raw[:1] == b"{" and raw[1:2] != b"\x00":
        text = raw.decode("utf-8", "surrogatepass")  # the codec json.loads picks here
        obj, end = _raw_decode(text)
        if end == len(text):
            return obj
    return json.loads(raw)


def _load(raw: bytes, what: str, max_size: int) -> dict[str, Any]:
    if len(raw) > max_size:
        raise ProtocolError("too_large", f"{what} of {len(raw)} bytes exceeds {max_size}")
    try:
        obj = _loads(raw)
    except (ValueError, RecursionError) as exc:  # RecursionError: absurdly deep nesting
        raise ProtocolError("bad_meta", f"{what} is not valid UTF-8 JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ProtocolError("bad_meta", f"{what} is not a JSON object")
    return obj


def _str(obj: dict[str, Any], key: str, what: str, default: str | None = None) -> str:
    value = obj.get(key, default)
    if not isinstance(value, str):
        if value is None:
            raise ProtocolError("bad_meta", f"{what} lacks {key!r}")
        raise ProtocolError("bad_meta", f"{what} {key!r} must be a string")
    return value


def _headers(obj: dict[str, Any], what: str) -> Headers:
    if KEY_HEADERS in obj:
        pairs = obj[KEY_HEADERS]
        if not isinstance(pairs, list) or not all(
            isinstance(p, list) and len(p) == 2 and isinstance(p[0], str) and isinstance(p[1], str)
            for p in pairs
        ):
            raise ProtocolError("bad_meta", f"{what} {KEY_HEADERS!r} must be [[name, value], ...]")
        return [(name.lower(), value) for name, value in pairs]
    headers = obj.get("headers", {})
    if type(headers) is dict:  # json.loads makes exact dict / list / str objects
        for value in headers.values():
            if type(value) is not str:
                break
        else:
            return [(name.lower(), value) for name, value in headers.items()]
    raise ProtocolError("bad_meta", f"{what} 'headers' must map names to strings")


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
        if type(query) is not dict or (
            query
            and not all(
                type(v) is str or (type(v) is list and all(type(i) is str for i in v))
                for v in query.values()
            )
        ):
            raise ProtocolError("bad_meta", "http_meta 'query' must map names to strings")
        try:
            target = join_target(path, query)
        except UnicodeEncodeError:  # JSON can carry lone surrogates, which UTF-8 cannot
            raise ProtocolError(
                "bad_meta", "http_meta path or query is not valid Unicode"
            ) from None
    headers = _headers(obj, "http_meta")
    try:
        check_token(method, "http_meta 'method'")
        check_target(target, "http_meta request-target")
        check_fields(headers, "http_meta header")
    except StrictError as exc:
        raise ProtocolError("bad_meta", str(exc)) from None
    return RequestHead(method, target, headers)


def decode_response_meta(raw: bytes, max_size: int) -> ResponseHead:
    obj = _load(raw, "resp_meta", max_size)
    status = obj.get("status")
    if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 999:
        raise ProtocolError("bad_meta", "resp_meta 'status' must be an integer from 100 to 999")
    reason = _str(obj, "reason", "resp_meta", default="")
    headers = _headers(obj, "resp_meta")
    try:
        check_text(reason, "resp_meta 'reason'")  # any phrase: the front replaces odd ones
        check_fields(headers, "resp_meta header")
    except StrictError as exc:
        raise ProtocolError("bad_meta", str(exc)) from None
    return ResponseHead(status, reason, headers)
