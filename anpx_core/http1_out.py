"""The front's response side written directly: status line, fields and body framing.

h11 stays the request parser; sending a response through its ``Connection`` cost more
than the rest of a small response's work at the gateway (an event object per head, data
piece and end, its state machine on each, its header clean-up re-checking every field).
:func:`response_head` writes what h11 (0.16) writes for the same response to the same
request, byte for byte, refuses what h11 refuses, and says how the body is framed and
whether the connection stays open; tests/test_http1_out.py checks this against the
installed h11 over generated responses and requests. What h11 does, so this does too:

* fields are checked with h11's own grammar (name a token; value without NUL, CR, LF or
  other ASCII whitespace, but spaces and tabs inside it); Content-Length values must all
  be one number (``5, 5`` and repeated equal fields collapse to the first field), at most
  20 digits (h11 before 0.16 took more); Transfer-Encoding only ``chunked``, once;
* a body of unknown length is chunked for an HTTP/1.1 client (``Transfer-Encoding:
  chunked`` appended, any Content-Length dropped) and close-delimited for an older one;
  the fields of a response to HEAD are those of the same response to GET;
* no body at all for HEAD, 204 and 304;
* when the request or the framing ends the connection, its Connection tokens are
  rewritten as ``Connection: close`` fields at the end (``keep-alive`` dropped);
* Host fields, if any, are written first.

Not covered: a 2xx answer to CONNECT (h11 switches protocols; the front refuses CONNECT).
"""

from __future__ import annotations

import re
from collections.abc import Callable

__all__ = [
    "CHUNKED",
    "CLOSE_DELIMITED",
    "ResponseRefused",
    "body_end",
    "body_piece",
    "fields_ok",
    "response_head",
]

#: Body framings besides a Content-Length (an int >= 0: that many bytes are due).
CHUNKED = -1
CLOSE_DELIMITED = -2


class ResponseRefused(ValueError):
    """The response head cannot be sent as given (h11 would refuse it too)."""


# h11's field grammar (h11._abnf), all fields of a head in one regular-expression call.
_fields_ok: Callable[[bytes], re.Match[bytes] | None] | None
try:
    from h11._abnf import field_name as _h11_name
    from h11._abnf import field_value as _h11_value

    _fields_ok = re.compile(f"(?:{_h11_name}:{_h11_value}\n)*".encode("ascii")).fullmatch
except ImportError:  # another h11 layout: let h11 check every field itself
    _fields_ok = None

_DIGITS = re.compile(rb"[0-9]+").fullmatch
_MAX_DIGITS = 20  # h11's CONTENT_LENGTH_MAX_DIGITS
_SPECIAL = frozenset({b"content-length", b"transfer-encoding", b"connection", b"host"})
_LENGTH_ONLY = frozenset({b"content-length"})
_NO_BODY = frozenset({204, 304})


def fields_ok(fields: list[tuple[bytes, bytes]]) -> bool:
    """Does every field pass h11's grammar (checked by h11 itself when its layout is unknown)?"""
    if _fields_ok is not None:
        return _fields_ok(b"".join([n + b":" + v + b"\n" for n, v in fields])) is not None
    import h11

    try:
        h11.Response(status_code=200, headers=fields)
    except h11.LocalProtocolError:
        return False
    return True


def _tokens(fields: list[tuple[bytes, bytes, bytes]], name: bytes) -> list[bytes]:
    """h11's get_comma_header: lower case, split at commas, stripped, empty ones dropped."""
    out = []
    for _, low, value in fields:
        if low == name:
            out += [t for t in (t.strip() for t in value.lower().split(b",")) if t]
    return out


def _simple_head(
    status: int,
    reason: bytes,
    fields: list[tuple[bytes, bytes]],
    length: bytes | None,
    method: bytes | None,
    version: bytes | None,
    keep_alive: bool,
) -> tuple[bytes, int, bool]:
    """response_head() for the usual head: no Transfer-Encoding, Connection or Host field,
    at most one Content-Length (``length``), already in its normal form. The same steps
    as the general case below, with what cannot apply left out."""
    lines = [b"HTTP/1.1 %d %s" % (status, reason)]
    lines += [raw + b": " + value for raw, value in fields]
    no_body = status in _NO_BODY
    need_close = False
    framing = 0
    if no_body or method == b"HEAD":
        pass
    elif length is not None:
        framing = int(length)
    elif version is None or version < b"1.1":
        framing = CLOSE_DELIMITED
    else:
        framing = CHUNKED
    if not no_body and length is None:
        if version is None or version < b"1.1":
            need_close = method != b"HEAD"
        else:
            lines.append(b"Transfer-Encoding: chunked")
    if not keep_alive or need_close:
        lines.append(b"Connection: close")
        keep_alive = False
    lines += [b"", b""]
    return b"\r\n".join(lines), framing, keep_alive


def response_head(
    status: int,
    reason: bytes,
    fields: list[tuple[bytes, bytes]],
    *,
    method: bytes | None,
    version: bytes | None,
    keep_alive: bool,
) -> tuple[bytes, int, bool]:
    """The head to write, the body framing (bytes due, CHUNKED or CLOSE_DELIMITED) and
    whether the connection stays open after the response.

    ``method``, ``version`` (``b"1.1"``) and ``keep_alive`` (no ``Connection: close``,
    version 1.1 or later) describe the request; None and True when no request was read.
    ``reason`` must already be a valid reason phrase. Raises :class:`ResponseRefused`.
    """
    if not 200 <= status <= 999:
        raise ResponseRefused(f"status {status} is not a final status")
    if not fields_ok(fields):
        raise ResponseRefused("illegal header name or value")
    lows = [raw.lower() for raw, _ in fields]
    special = _SPECIAL.intersection(lows)
    if not special:
        return _simple_head(status, reason, fields, None, method, version, keep_alive)
    if special == _LENGTH_ONLY and lows.count(b"content-length") == 1:
        given = fields[lows.index(b"content-length")][1]
        if len(given) <= _MAX_DIGITS and _DIGITS(given):  # as it is: nothing to normalize
            return _simple_head(status, reason, fields, given, method, version, keep_alive)
    # One pass; fields that need no change are kept as they are.
    items: list[tuple[bytes, bytes, bytes]] | None = None
    length: bytes | None = None
    chunked = False
    for i, (raw, value) in enumerate(fields):
        low = raw.lower()
        if low not in _SPECIAL:
            if items is not None:
                items.append((raw, low, value))
            continue
        if items is None:
            items = [(r, r.lower(), v) for r, v in fields[:i]]
        if low == b"content-length":
            lengths = {piece.strip() for piece in value.split(b",")}
            if len(lengths) != 1:
                raise ResponseRefused("conflicting Content-Length headers")
            value = lengths.pop()
            if not _DIGITS(value) or len(value) > _MAX_DIGITS:
                raise ResponseRefused("bad Content-Length")
            if length is None:
                length = value
            elif length != value:
                raise ResponseRefused("conflicting Content-Length headers")
            else:
                continue  # a repeat of the same length is dropped
        elif low == b"transfer-encoding":
            if chunked:
                raise ResponseRefused("multiple Transfer-Encoding headers")
            value = value.lower()
            if value != b"chunked":
                raise ResponseRefused("only Transfer-Encoding: chunked is supported")
            chunked = True
        items.append((raw, low, value))
    if items is None:
        items = [(r, r.lower(), v) for r, v in fields]
    # The fields, chosen as for GET when the request is HEAD.
    no_body = status in _NO_BODY  # (a 2xx to CONNECT too, but the front refuses CONNECT)
    need_close = False
    if not no_body and (chunked or length is None):
        items = [item for item in items if item[1] != b"content-length"]
        length = None
        if version is None or version < b"1.1":
            items = [item for item in items if item[1] != b"transfer-encoding"]
            chunked = False
            need_close = method != b"HEAD"
        else:
            items = [item for item in items if item[1] != b"transfer-encoding"]
            items.append((b"Transfer-Encoding", b"transfer-encoding", b"chunked"))
            chunked = True
    if not keep_alive or need_close:
        tokens = set(_tokens(items, b"connection"))
        tokens.discard(b"keep-alive")
        tokens.add(b"close")
        items = [item for item in items if item[1] != b"connection"]
        items += [(b"Connection", b"connection", token) for token in sorted(tokens)]
        keep_alive = False
    elif b"close" in _tokens(items, b"connection"):
        keep_alive = False
    if no_body or method == b"HEAD":
        framing = 0
    elif chunked:
        framing = CHUNKED
    elif length is not None:
        framing = int(length)
    else:
        framing = CLOSE_DELIMITED
    lines = [b"HTTP/1.1 %d %s" % (status, reason)]
    hosts = [raw + b": " + value for raw, low, value in items if low == b"host"]
    if hosts:
        lines += hosts
        lines += [raw + b": " + value for raw, low, value in items if low != b"host"]
    else:
        lines += [raw + b": " + value for raw, _, value in items]
    lines += [b"", b""]
    return b"\r\n".join(lines), framing, keep_alive


def body_piece(framing: int, data: bytes) -> tuple[bytes, int]:
    """The bytes to write for a non-empty piece of body, and the framing after it; more
    than a Content-Length promised raises :class:`ResponseRefused` (nothing is written)."""
    if framing >= 0:
        if len(data) > framing:
            raise ResponseRefused("more body than the Content-Length")
        return data, framing - len(data)
    if framing == CHUNKED:
        return b"%x\r\n%b\r\n" % (len(data), data), framing
    return data, framing


def body_end(framing: int) -> bytes:
    """The bytes that end the body; less than a Content-Length promised raises
    :class:`ResponseRefused`."""
    if framing > 0:
        raise ResponseRefused("less body than the Content-Length")
    return b"0\r\n\r\n" if framing == CHUNKED else b""
