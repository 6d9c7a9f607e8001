"""The receiver's per-request shortcuts give what the general code they replace gives.

Each shortcut (one pass over the request head, the WebSocket claim, the scope's header
encoding, the cache of checked response header names) is compared with the function it
stands in for, on values as hostile as a peer or an app could make them.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from anpx_core import asgi
from anpx_core.asgi import AsgiError, AsgiHttpCall, build_scope
from anpx_core.headers import get_header
from anpx_core.meta import RequestHead
from anpx_core.receiver.http import _READ, read_fields
from anpx_core.receiver.websockets import _asks_upgrade
from anpx_core.strict import wire_bytes
from anpx_core.wsstream import is_open_head

# Names close to the ones looked up (case, length, the Kelvin sign that lowers to "k",
# the dotted capital I that lowers to two characters), and any text at all.
_NAMES = st.sampled_from(
    [
        *sorted(_READ),
        "Host",
        "X-Forwarded-PORT",
        "X-REAL-IP",
        "upgrade",
        "Upgrade",
        "UPGRADE",
        "upgradE ",
        "\u0130pgrade",
        "x-request-id",
        "\u212a",
    ]
) | st.text(max_size=12)
_VALUES = st.sampled_from(["websocket", " WebSocket ", "h2c", "", "1.2.3.4, 5.6.7.8"]) | st.text(
    max_size=12
)
_HEADERS = st.lists(st.tuples(_NAMES, _VALUES), max_size=10)


@given(_HEADERS)
def test_read_fields_is_get_header_for_each_name(headers: list[tuple[str, str]]) -> None:
    fields = read_fields(headers)
    for name in _READ:
        assert fields.get(name) == get_header(headers, name)
    assert set(fields) <= _READ


@given(_HEADERS)
def test_the_websocket_claim_is_is_open_head(headers: list[tuple[str, str]]) -> None:
    assert _asks_upgrade(headers) == is_open_head(RequestHead("GET", "/", headers))


@given(_HEADERS)
def test_scope_headers_are_each_field_lowered_and_wire_encoded(
    headers: list[tuple[str, str]],
) -> None:
    try:
        expected = [(wire_bytes(n.lower()), wire_bytes(v)) for n, v in headers]
    except Exception as exc:  # a lone surrogate: refused the same way
        with pytest.raises(type(exc)):
            build_scope(RequestHead("GET", "/", headers), client=None, server=None, scheme="http")
        return
    scope = build_scope(RequestHead("GET", "/", headers), client=None, server=None, scheme="http")
    assert scope["headers"] == expected


def test_scope_headers_with_a_nul_in_a_value_keep_their_pairs() -> None:
    headers = [("A", "x\0y"), ("b\0c", "z"), ("d", "")]
    scope = build_scope(RequestHead("GET", "/", headers), client=None, server=None, scheme="http")
    assert scope["headers"] == [(b"a", b"x\0y"), (b"b\0c", b"z"), (b"d", b"")]


@pytest.mark.parametrize("target", ["/plain", "/caf%C3%A9", "/caf\xc3\xa9", "*", "/a?b=%20"])
def test_scope_path_is_the_decoded_raw_path(target: str) -> None:
    from urllib.parse import unquote_to_bytes

    scope = build_scope(RequestHead("GET", target, []), client=None, server=None, scheme="http")
    raw = wire_bytes(target.partition("?")[0])
    assert scope["raw_path"] == raw
    assert scope["path"] == unquote_to_bytes(raw).decode("utf-8", "replace")


def _start(headers: object) -> list[tuple[str, str]]:
    call = AsgiHttpCall({}, 0)
    parts = call.send({"type": "http.response.start", "status": 200, "headers": headers})
    return parts[0].head.headers  # type: ignore[union-attr]


def test_response_header_names_are_checked_and_lowered_every_time() -> None:
    for _ in range(3):  # the second and third answers come from the cache
        assert _start([(b"X-Thing", b" v "), (bytearray(b"Other"), b"w")]) == [
            ("x-thing", "v"),
            ("other", "w"),
        ]
    for bad in (b"X Thing", b"x-thing\r", b""):
        with pytest.raises(AsgiError):
            _start([(b"X-Thing", b"v"), (bad, b"v")])


def test_the_checked_names_cache_stays_bounded() -> None:
    for i in range(2 * asgi._CHECKED_NAMES_MAX):
        assert _start([(f"x-n{i}".encode(), b"v")]) == [(f"x-n{i}", "v")]
    assert len(asgi._CHECKED_NAMES) <= asgi._CHECKED_NAMES_MAX


def test_hop_by_hop_response_headers_are_still_dropped() -> None:
    headers = [
        (b"Connection", b"x-private"),
        (b"x-private", b"1"),
        (b"Proxy-Thing", b"2"),
        (b"keep-alive", b"3"),
        (b"x-ok", b"4"),
    ]
    assert _start(headers) == [("x-ok", "4")]
    assert _start(iter([(b"x-ok", b"4")])) == [("x-ok", "4")]  # any iterable of pairs


@pytest.mark.parametrize("more", [0, 1, None, "yes"])
def test_more_body_must_be_a_bool(more: object) -> None:
    call = AsgiHttpCall({}, 0)
    call.send({"type": "http.response.start", "status": 200})
    with pytest.raises(AsgiError):
        call.send({"type": "http.response.body", "body": b"", "more_body": more})


@pytest.mark.parametrize("status", [True, 199, 1000, 200.0, "200"])
def test_status_must_be_an_int_in_range(status: object) -> None:
    with pytest.raises(AsgiError):
        AsgiHttpCall({}, 0).send({"type": "http.response.start", "status": status})


def test_an_int_subclass_status_keeps_its_phrase() -> None:
    from http import HTTPStatus

    parts = AsgiHttpCall({}, 0).send({"type": "http.response.start", "status": HTTPStatus.OK})
    head = parts[0].head  # type: ignore[union-attr]
    assert head.status == 200 and head.reason == "OK"
    unknown = AsgiHttpCall({}, 0).send({"type": "http.response.start", "status": 299})
    assert unknown[0].head.reason == ""  # type: ignore[union-attr]
