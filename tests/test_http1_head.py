"""http1_head reads a plain request head exactly as h11 does, or leaves it to h11.

Differential: whenever plain_request() returns a request, an h11 server given the same
bytes reads the same Request (method, target, version, fields) followed at once by the
end of the message. Heads it declines are not compared: the front gives those to h11.
"""

from __future__ import annotations

import h11
from hypothesis import given, settings
from hypothesis import strategies as st

from anpx_core.http1 import FrontLimits, HttpFront, RequestEnded, RequestStarted
from anpx_core.http1_head import plain_request
from anpx_core.meta import RequestHead, ResponseHead

from .hypothesis_profiles import examples

_METHODS = st.sampled_from([b"GET", b"HEAD", b"POST", b"CONNECT", b"G\xe9T", b"", b"get"])
_TARGETS = st.sampled_from([b"/", b"/a?b=c", b"*", b"http://x/y", b"/\xff", b"/a b", b""])
_VERSIONS = st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/0.9", b"http/1.1"])
_NAMES = st.sampled_from(
    [
        b"Host",
        b"host",
        b"HOST",
        b"Content-Length",
        b"transfer-encoding",
        b"Upgrade",
        b"Connection",
        b"Expect",
        b"x-a",
        b"X-\xe9",
        b"bad name",
        b"",
        b" x",
        b"x ",
    ]
)
_VALUES = st.sampled_from(
    [
        b"h",
        b"h:80",
        b"",
        b" padded ",
        b"\tx\t",
        b"a  b",
        b"close",
        b"100-continue",
        b"0",
        b"5",
        b"\x01",
        b"\x7f",
        b"\xe9",
        b"a\rb",
        b"a\x0bb",
        b"x\x00",
    ]
)
_LINE_ENDS = st.sampled_from([b"\r\n", b"\r\n", b"\r\n", b"\n", b"\r"])
_FIELD_LINES = st.tuples(_NAMES, st.sampled_from([b":", b": ", b":\t", b" :"]), _VALUES).map(
    b"".join
) | st.sampled_from([b" folded", b"\tfolded", b"no colon"])


@st.composite
def heads(draw: st.DrawFn) -> bytes:
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=80))
    sep = draw(st.sampled_from([b" ", b" ", b" ", b"  ", b"\t"]))
    line = draw(_METHODS) + sep + draw(_TARGETS) + b" " + draw(_VERSIONS)
    out = line + draw(_LINE_ENDS)
    for field in draw(st.lists(_FIELD_LINES, max_size=5)):
        out += field + draw(_LINE_ENDS)
    return out + draw(_LINE_ENDS)


@st.composite
def likely_heads(draw: st.DrawFn) -> bytes:
    """Mostly well-formed heads, one odd piece now and then: the shortcut's ground."""

    def pick(good: list[bytes], odd: st.SearchStrategy[bytes]) -> bytes:
        return draw(odd) if draw(st.integers(0, 7)) == 0 else draw(st.sampled_from(good))

    method = pick([b"GET", b"HEAD", b"DELETE", b"OPTIONS", b"X-Y"], _METHODS)
    target = pick([b"/", b"/small", b"/a?b=c&d", b"/~%20"], _TARGETS)
    version = pick([b"HTTP/1.1", b"HTTP/1.0"], _VERSIONS)
    out = method + b" " + target + b" " + version + b"\r\n"
    if draw(st.integers(0, 4)):
        out += b"Host: h\r\n"
    pads = [b"", b"", b" ", b"\t", b"  "]
    for _ in range(draw(st.integers(0, 5))):
        name = pick([b"Accept", b"x-a", b"Connection", b"User-Agent"], _NAMES)
        value = pick([b"h", b"*/*", b"close", b"keep-alive", b"a, b", b"\xe9\x01"], _VALUES)
        end = pick([b"\r\n"], st.sampled_from([b"\n", b"\r"]))
        out += name + b":" + pick(pads, st.just(b"")) + value + pick(pads, st.just(b"")) + end
    return out + b"\r\n"


def _h11_request(head: bytes) -> tuple[bytes, bytes, bytes, list[tuple[bytes, bytes]]]:
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(head)
    event = conn.next_event()
    assert type(event) is h11.Request
    assert type(conn.next_event()) is h11.EndOfMessage  # no body
    assert conn.trailing_data == (b"", False)  # the whole head was one request
    return event.method, event.target, event.http_version, list(event.headers)


@settings(max_examples=examples(800), deadline=None)
@given(likely_heads() | heads())
def test_a_plain_request_is_what_h11_reads(head: bytes) -> None:
    plain = plain_request(head)
    if plain is not None:
        assert plain == _h11_request(head)


def test_common_heads_take_the_shortcut() -> None:
    for head in [
        b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n",
        b"GET /a?b HTTP/1.1\r\nHost: h\r\nUser-Agent: curl/8\r\nAccept: */*\r\n\r\n",
        b"HEAD / HTTP/1.0\r\n\r\n",
        b"DELETE /x HTTP/1.1\r\nhost: h\r\nConnection: close\r\nX-E: \xe9 \r\n\r\n",
    ]:
        plain = plain_request(head)
        assert plain is not None and plain == _h11_request(head)


def test_what_changes_h11_state_is_left_to_h11() -> None:
    for head in [
        b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: h\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
        b"CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\n\r\n",
        b"GET / HTTP/1.1\r\n\r\n",  # no Host: h11 refuses
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        b"GET / HTTP/1.1\nHost: h\n\n",
        b"GET / HTTP/1.1\r\nHost: h\r\nX: a\r\n b\r\n\r\n",
    ]:
        assert plain_request(head) is None


def _front() -> HttpFront:
    return HttpFront(FrontLimits(), 0.0, client=("203.0.113.7", 1), server=("192.0.2.1", 80))


def _without_length(events: list) -> list:
    out = []
    for event in events:
        if isinstance(event, RequestStarted):
            headers = [(n, v) for n, v in event.head.headers if n != "content-length"]
            event = RequestStarted(
                RequestHead(event.head.method, event.head.target, headers),
                event.expect_continue,
                event.content_length,
                event.upgrade,
            )
        out.append(event)
    return out


@settings(max_examples=examples(200), deadline=None)
@given(likely_heads())
def test_the_front_answers_alike_with_or_without_the_shortcut(head: bytes) -> None:
    """A plain head gives the same events and the same answer as the same head with a
    ``Content-Length: 0`` added, which the front hands to h11."""
    plain = plain_request(head)
    if plain is None:
        return
    via_h11 = head[:-2] + b"Content-Length: 0\r\n\r\n"
    assert plain_request(via_h11) is None
    fronts = _front(), _front()
    got = [
        _without_length(f.receive_data(h, 0.0))
        for f, h in zip(fronts, (head, via_h11), strict=True)
    ]
    assert got[0] == got[1]
    if got[0] and isinstance(got[0][-1], RequestEnded):
        assert [type(e) for e in got[0]] == [RequestStarted, RequestEnded]
        for front in fronts:
            front.send_response(ResponseHead(200, "", [("x", "y")]))
            front.send_data(b"body")
            front.end_response()
    assert fronts[0].data_to_send() == fronts[1].data_to_send()
    assert fronts[0].closed == fronts[1].closed
