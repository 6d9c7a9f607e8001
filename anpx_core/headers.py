"""HTTP header fields, one way everywhere in the core.

Representation: :data:`Headers`, a list of ``(name, value)`` pairs in order, duplicates
kept. Names are lower case wherever the core produces them (the front, the codec, the
WebSocket layer); values are the field bytes read as ISO-8859-1, so any byte survives.
Lookups still compare case-insensitively, so a head built by an embedder with
``"Content-Type"`` is read the same.

Hop-by-hop fields (RFC 9110 section 7.6.1) describe one connection and are never
forwarded: :data:`HOP_BY_HOP`, the fields Connection names (except Content-Length and
Host, which carry a message's framing and authority), and ``Proxy-*``.
"""

from __future__ import annotations

from collections.abc import Iterable

Headers = list[tuple[str, str]]

#: Header fields that describe one connection, never forwarded (RFC 9110 section 7.6.1).
HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade"}
)
# Naming these in Connection does not remove them: dropping a request's Content-Length
# would leave the next hop without the framing of a body that is still coming.
_NEVER_LISTED = frozenset({"content-length", "host"})


def get_header(headers: Iterable[tuple[str, str]], name: str) -> str | None:
    """The first value of field ``name`` (given in lower case), or None."""
    for key, value in headers:
        if key == name or key.lower() == name:
            return value
    return None


def header_tokens(headers: Iterable[tuple[str, str]], name: str) -> set[str]:
    """The comma-separated tokens of every ``name`` field, lower case (e.g. Connection)."""
    return {
        token.strip().lower()
        for key, value in headers
        if key == name or key.lower() == name
        for token in value.split(",")
    } - {""}


def strip_hop_by_hop(headers: Headers, keep: frozenset[str] = frozenset()) -> Headers:
    """``headers`` in order without hop-by-hop fields, those Connection names, and
    ``Proxy-*``; names in ``keep`` (lower case) stay whatever they are."""
    for name, _ in headers:
        low = name.lower()
        if low in HOP_BY_HOP or low.startswith("proxy-"):
            break
    else:  # nothing to strip (the usual case): no Connection field lists anything either
        return list(headers)
    listed = header_tokens(headers, "connection") - _NEVER_LISTED
    kept: Headers = []
    for name, value in headers:
        low = name.lower()
        if low in keep or not (low in HOP_BY_HOP or low in listed or low.startswith("proxy-")):
            kept.append((name, value))
    return kept


def wants_close(headers: Iterable[tuple[str, str]]) -> bool:
    """Does a Connection field ask for the connection to end after this message?"""
    return "close" in header_tokens(headers, "connection")
