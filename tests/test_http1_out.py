"""http1_out writes what h11's server writes for the same response to the same request.

Differential: an h11 server ``Connection`` reads the request, then is given the response
head, the body pieces and the end; http1_out is given the same. Both must produce the same
bytes, refuse the same heads, abort on the same piece, and agree on whether the connection
stays open afterwards.
"""

from __future__ import annotations

import h11
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from anpx_core.http1_out import ResponseRefused, body_end, body_piece, response_head

from .hypothesis_profiles import examples

_NAMES = st.sampled_from(
    [
        b"content-length",
        b"Content-Length",
        b"transfer-encoding",
        b"Transfer-Encoding",
        b"connection",
        b"Connection",
        b"host",
        b"Host",
        b"content-type",
        b"x-a",
        b"X-B",
        b"bad name",
        b"",
        b"x\xff",
    ]
) | st.binary(max_size=6)
_VALUES = st.sampled_from(
    [
        b"0",
        b"5",
        b"12",
        b" 5",
        b"5, 5",
        b"5,6",
        b"-1",
        b"1" * 21,
        b"chunked",
        b"Chunked",
        b"gzip",
        b"close",
        b"keep-alive",
        b"Keep-Alive, Upgrade",
        b"close, x",
        b"a b",
        b"a\tb",
        b"\xe9",
        b"x\n",
        b"",
    ]
) | st.binary(max_size=6)
_REQUESTS = st.tuples(
    st.sampled_from([b"GET", b"HEAD", b"POST", b"CONNECT", b"OPTIONS"]),
    st.sampled_from([b"1.0", b"1.1"]),
    st.sampled_from([b"", b"close", b"keep-alive", b"Keep-Alive, Close", b"x"]),
)


def _request_bytes(method: bytes, version: bytes, connection: bytes) -> bytes:
    target = b"example.com:443" if method == b"CONNECT" else b"/"
    head = b"%s %s HTTP/%s\r\nHost: h\r\n" % (method, target, version)
    if connection:
        head += b"Connection: " + connection + b"\r\n"
    return head + b"\r\n"


def _h11(request, status, reason, fields, pieces):
    """(output, refused, aborted at piece index or None, stays open)"""
    conn = h11.Connection(h11.SERVER)
    if request is not None:
        conn.receive_data(_request_bytes(*request))
        assert type(conn.next_event()) is h11.Request
        assert type(conn.next_event()) is h11.EndOfMessage
    try:
        out = conn.send(h11.Response(status_code=status, reason=reason, headers=fields))
    except h11.LocalProtocolError:
        return b"", True, None, False
    for i, piece in enumerate([*pieces, None]):
        try:
            out += conn.send(h11.Data(data=piece) if piece is not None else h11.EndOfMessage())
        except h11.LocalProtocolError:
            return out, False, i, False
    return out, False, None, conn.our_state is h11.DONE


def _ours(request, status, reason, fields, pieces):
    if request is None:
        method = version = None
        keep_alive = True
    else:
        method, version, connection = request
        tokens = [t.strip() for t in connection.lower().split(b",")]
        keep_alive = version >= b"1.1" and b"close" not in tokens
    try:
        out, framing, keep_alive = response_head(
            status, reason, fields, method=method, version=version, keep_alive=keep_alive
        )
    except ResponseRefused:
        return b"", True, None, False
    suppress = method == b"HEAD" or status in (204, 304)
    for i, piece in enumerate([*pieces, None]):
        try:
            if piece is None:
                out += body_end(framing)
            elif piece and not suppress:  # what the front gives it: no empty or dropped piece
                data, framing = body_piece(framing, piece)
                out += data
        except ResponseRefused:
            return out, False, i, False
    return out, False, None, keep_alive


@settings(max_examples=examples(600), deadline=None)
@given(
    request=st.none() | _REQUESTS,
    status=st.sampled_from([200, 201, 204, 206, 304, 404, 500, 599, 999]),
    reason=st.sampled_from([b"", b"OK", b"Not Found", b"caf\xe9"]),
    fields=st.lists(st.tuples(_NAMES, _VALUES), max_size=6),
    pieces=st.lists(st.binary(min_size=1, max_size=7), max_size=3),
)
def test_same_bytes_refusals_and_keep_alive_as_h11(request, status, reason, fields, pieces):
    # a 2xx to CONNECT switches protocols in h11; the front answers CONNECT 501 instead
    assume(not (request is not None and request[0] == b"CONNECT" and status < 300))
    suppress = (request is not None and request[0] == b"HEAD") or status in (204, 304)
    if suppress:
        pieces = []  # the front drops these pieces before any writer sees them
    assert _ours(request, status, reason, fields, pieces) == _h11(
        request, status, reason, fields, pieces
    )


@pytest.mark.parametrize(
    ("request_", "fields", "pieces", "expected"),
    [
        # no length from the app: chunked for 1.1 ...
        (
            (b"GET", b"1.1", b""),
            [(b"content-type", b"text/plain")],
            [b"hello"],
            b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nTransfer-Encoding: chunked\r\n"
            b"\r\n5\r\nhello\r\n0\r\n\r\n",
        ),
        # ... close-delimited for 1.0
        (
            (b"GET", b"1.0", b""),
            [],
            [b"hello"],
            b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nhello",
        ),
        # HEAD: the fields of the GET response, no body
        (
            (b"HEAD", b"1.1", b""),
            [(b"content-length", b"5")],
            [],
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n",
        ),
        # the client asked to close; Host fields go first, as h11 writes them
        (
            (b"GET", b"1.1", b"close"),
            [(b"x-a", b"1"), (b"host", b"h"), (b"content-length", b"0")],
            [],
            b"HTTP/1.1 200 OK\r\nhost: h\r\nx-a: 1\r\ncontent-length: 0\r\n"
            b"Connection: close\r\n\r\n",
        ),
    ],
)
def test_known_heads(request_, fields, pieces, expected):
    ours = _ours(request_, 200, b"OK", fields, pieces)
    assert ours == _h11(request_, 200, b"OK", fields, pieces)
    assert ours[0] == expected


@pytest.mark.parametrize("status", [100, 101, 199, 1000, 0, -1])
def test_non_final_status_is_refused(status):
    with pytest.raises(ResponseRefused):
        response_head(status, b"", [], method=b"GET", version=b"1.1", keep_alive=True)
