"""The front's shortcut for plain request heads: read without h11 what h11 would accept.

A small request (a GET with a Host and a few fields, no body) is the front's most common
input, and feeding it through an ``h11.Connection`` (its buffer, line splitting, one regular
expression per line, an event object, the state machine, a second call for the end of the
message) costs more than the rest of the head's handling. :func:`plain_request` reads such a
head with h11's own grammar (``h11._abnf``) matched over the whole head at once, and gives
up -- returns None -- on anything it does not answer exactly as h11 would: a head h11 may
refuse or read differently (bare LF line ends, obsolete line folding, a missing or repeated
Host, a version other than 1.0 and 1.1), a body (Content-Length, Transfer-Encoding), and
what changes h11's state beyond one request (Upgrade, CONNECT). The front then hands the
head to h11 as before, so every refusal and every uncommon head still goes h11's way.

Its result is exactly h11's ``Request`` for the same bytes (method, target, version, field
names lower case, values without surrounding whitespace), followed by the end of the
message; tests/test_http1_head.py checks this against h11 over generated heads.
"""

from __future__ import annotations

import re
from collections.abc import Callable

__all__ = ["PlainRequest", "plain_request"]

PlainRequest = tuple[bytes, bytes, bytes, list[tuple[bytes, bytes]]]

_head_ok: Callable[[bytes], re.Match[bytes] | None] | None = None


def _uncaptured(pattern: str) -> str:
    """``pattern`` with its groups made non-capturing: captures inside a repeat cost the
    matcher a save per repetition, up to 8 times the time on a long hostile line."""
    return re.sub(r"(?<!\\)\((?:\?P<\w+>)?(?!\?)", "(?:", pattern)


try:
    from h11._abnf import header_field as _h11_field
    from h11._abnf import request_line as _h11_request_line

    # Each line is matched once, never backtracked into (an atomic group, written for
    # Python 3.10 as a look-ahead and a back-reference), so that a head that fails, fails
    # in linear time. A line's first match is its only one: a field cannot end before CR.
    _pattern = re.compile(
        f"(?=(?P<line>{_uncaptured(_h11_request_line)}))(?P=line)\r\n"
        f"(?:(?=(?P<field>{_uncaptured(_h11_field)}))(?P=field)\r\n)*\r\n".encode("ascii")
    )
    if _pattern.groups == 2:  # else the grammar is not written as expected: no shortcut
        _head_ok = _pattern.fullmatch
except (ImportError, re.error):  # another h11 layout: every head goes through h11
    pass

# Fields that make a head more than one plain request for h11 (a body, a protocol switch).
_NOT_PLAIN = frozenset({b"content-length", b"transfer-encoding", b"upgrade"})


def plain_request(head: bytes) -> PlainRequest | None:
    """``(method, target, version, fields)`` of a complete head (request line to blank
    line) when h11 would read it as exactly that request without a body; else None."""
    if _head_ok is None or _head_ok(head) is None:
        return None
    lines = head.split(b"\r\n")
    # The grammar leaves no room for another space in the request line.
    method, target, version = lines[0].split(b" ")
    version = version[5:]  # after "HTTP/"
    if (version != b"1.1" and version != b"1.0") or method == b"CONNECT":
        return None
    fields = []
    hosts = 0
    for line in lines[1:-2]:
        name, _, value = line.partition(b":")  # a field name never holds a colon
        name = name.lower()
        if name in _NOT_PLAIN:
            return None
        if name == b"host":
            hosts += 1
        fields.append((name, value.strip(b" \t")))
    if hosts > 1 or (hosts == 0 and version == b"1.1"):  # h11 refuses these
        return None
    return method, target, version, fields
