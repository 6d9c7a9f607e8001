"""WebSocket layer: handshake, messages, limits, keepalive, close, and interop with other stacks."""

from __future__ import annotations

import functools
import itertools
import json
import struct
import threading
from collections.abc import Callable

import h11
import pytest
import trio
import trio_websocket
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    CloseConnection,
    Ping,
    Pong,
    Request,
    TextMessage,
)

from anpx_core.websocket import (
    BinaryReceived,
    Closed,
    ControlReceived,
    HandshakeAccepted,
    HandshakeRejected,
    HandshakeRequested,
    WsClient,
    WsLimits,
    WsServer,
)

from .hypothesis_profiles import examples

FAST = settings(
    max_examples=examples(120), deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
LIMITS = WsLimits(max_message_size=1000, ping_interval=30.0, ping_timeout=20.0, close_timeout=5.0)


# --- helpers ---------------------------------------------------------------------------------


def open_pair(limits: WsLimits = LIMITS, now: float = 0.0) -> tuple[WsClient, WsServer]:
    client = WsClient("gw.example", "/tunnel", limits, now)
    server = WsServer(limits, now)
    (req,) = server.receive_data(client.data_to_send(), now)
    assert isinstance(req, HandshakeRequested)
    server.accept()
    (acc,) = client.receive_data(server.data_to_send(), now)
    assert isinstance(acc, HandshakeAccepted)
    return client, server


def pump(client: WsClient, server: WsServer, now: float = 0.0) -> tuple[list, list]:
    """Move bytes both ways until both sides are quiet."""
    cev: list = []
    sev: list = []
    while True:
        to_server, to_client = client.data_to_send(), server.data_to_send()
        if not to_server and not to_client:
            return cev, sev
        if to_server:
            sev += server.receive_data(to_server, now)
        if to_client:
            cev += client.receive_data(to_client, now)


def raw_frame(
    opcode: int, payload: bytes, *, fin: bool = True, mask: bool = True, rsv: int = 0
) -> bytes:
    """An RFC 6455 frame built by hand (client frames are masked)."""
    head = bytes([(0x80 if fin else 0) | rsv | opcode])
    bit = 0x80 if mask else 0
    n = len(payload)
    if n < 126:
        head += bytes([bit | n])
    elif n < 65536:
        head += bytes([bit | 126]) + struct.pack(">H", n)
    else:
        head += bytes([bit | 127]) + struct.pack(">Q", n)
    if not mask:
        return head + payload
    key = b"\x37\xfa\x21\x3d"
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


class RawPeer:
    """A client built on wsproto alone: sends hand-made bytes, parses the server's answers."""

    def __init__(self, server: WsServer, now: float = 0.0, extra: bytes = b"") -> None:
        self.server = server
        self.ws = WSConnection(ConnectionType.CLIENT)
        events = server.receive_data(self.ws.send(Request(host="h", target="/t")) + extra, now)
        assert isinstance(events[0], HandshakeRequested)
        server.accept()
        self.ws.receive_data(server.data_to_send())
        assert isinstance(next(self.ws.events()), AcceptConnection)

    def read(self) -> list:
        self.ws.receive_data(self.server.data_to_send())
        return list(self.ws.events())


def parse_http(data: bytes) -> tuple[h11.Response, bytes]:
    """Parse a complete HTTP response with h11 (independently of the code under test)."""
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="GET", target="/", headers=[("host", "x")]))
    conn.receive_data(data)
    conn.receive_data(b"")
    response = conn.next_event()
    body = b""
    while True:
        ev = conn.next_event()
        if isinstance(ev, h11.Data):
            body += ev.data
        else:
            assert isinstance(ev, h11.EndOfMessage)
            return response, body


def closes(events: list) -> list[Closed]:
    return [e for e in events if isinstance(e, Closed)]


# --- handshake ---------------------------------------------------------------------------------


def test_handshake_carries_path_host_headers_and_subprotocol():
    client = WsClient(
        "gw.example:8443",
        "/tunnel?x=1",
        LIMITS,
        0.0,
        [("Authorization", "Bearer t")],
        ["anpx", "v1"],
    )
    assert client.state == "handshake"
    server = WsServer(LIMITS, 0.0)
    (req,) = server.receive_data(client.data_to_send(), 0.0)
    assert req.path == "/tunnel?x=1"
    assert req.host == "gw.example:8443"
    assert ("authorization", "Bearer t") in req.headers
    assert ("host", "gw.example:8443") in req.headers
    assert req.subprotocols == ["anpx", "v1"]
    assert server.state == "handshake"
    server.accept([("anpx-extensions", "flow=65536")], "v1")
    (acc,) = client.receive_data(server.data_to_send(), 0.0)
    assert acc == HandshakeAccepted([("anpx-extensions", "flow=65536")], "v1")
    assert client.state == server.state == "open"


def test_accept_rejects_a_subprotocol_the_client_did_not_offer():
    client = WsClient("h", "/", LIMITS, 0.0, subprotocols=["a"])
    server = WsServer(LIMITS, 0.0)
    server.receive_data(client.data_to_send(), 0.0)
    with pytest.raises(ValueError):
        server.accept(subprotocol="b")


def test_reject_reaches_the_client_with_status_headers_and_body():
    client = WsClient("h", "/", LIMITS, 0.0)
    server = WsServer(LIMITS, 0.0)
    server.receive_data(client.data_to_send(), 0.0)
    server.reject(401, "no entry", [("www-authenticate", "Bearer")])
    assert server.closed
    events = client.receive_data(server.data_to_send(), 0.0)
    rejected = events[0]
    assert isinstance(rejected, HandshakeRejected)
    assert (rejected.status, rejected.body) == (401, b"no entry")
    assert ("www-authenticate", "Bearer") in rejected.headers
    assert events[1:] == [Closed(1006, "handshake rejected with HTTP 401", False)]
    assert client.closed
    assert closes(server.tick(1.0)) == [Closed(1008, "handshake rejected with HTTP 401", False)]
    assert server.tick(2.0) == []


def test_reject_refuses_header_injection():
    server = WsServer(LIMITS, 0.0)
    server.receive_data(WsClient("h", "/", LIMITS, 0.0).data_to_send(), 0.0)
    with pytest.raises(ValueError):
        server.reject(403, "x", [("x-a", "b\r\nset-cookie: evil")])


def test_client_reads_a_rejection_body_delimited_by_eof():
    client = WsClient("h", "/", LIMITS, 0.0)
    assert client.receive_data(b"HTTP/1.1 503 Busy\r\nconnection: close\r\n\r\ntry ", 0.0) == []
    assert client.receive_data(b"later", 0.0) == []
    events = client.receive_data(b"", 0.0)
    assert events[0].status == 503 and events[0].body == b"try later"
    assert closes(events) == [Closed(1006, "handshake rejected with HTTP 503", False)]


def _upgrade(**override: str | None) -> bytes:
    headers = {
        "Host": "gw",
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version": "13",
    }
    method = override.pop("method", None) or "GET"
    headers.update(override)
    lines = [f"{method} /tunnel HTTP/1.1"] + [
        f"{k}: {v}" for k, v in headers.items() if v is not None
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (_upgrade(Upgrade=None), 400),
        (_upgrade(Connection="keep-alive"), 400),
        (_upgrade(**{"Sec-WebSocket-Key": None}), 400),
        (_upgrade(**{"Sec-WebSocket-Version": None}), 400),
        (_upgrade(**{"Sec-WebSocket-Version": "8"}), 426),
        (_upgrade(method="POST"), 400),
        (b"GET / HTTP/1.1\r\nHost: gw\r\n\r\n", 400),
        (b"hello there\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nbad header line\r\n\r\n", 400),
        (_upgrade(**{"X-Big": "a" * 17000}), 431),
    ],
)
def test_bad_upgrade_requests_get_an_http_error_and_close(request_bytes, status):
    server = WsServer(LIMITS, 0.0)
    events = server.receive_data(request_bytes, 0.0)
    assert server.closed
    assert len(closes(events)) == 1 and not closes(events)[0].clean
    response, body = parse_http(server.data_to_send())
    assert response.status_code == status
    assert body
    if status == 426:
        assert (b"sec-websocket-version", b"13") in response.headers


def test_the_handshake_size_limit_applies_before_the_head_is_complete():
    server = WsServer(LIMITS, 0.0)
    assert server.receive_data(b"GET / HTTP/1.1\r\nX: " + b"a" * 16000, 0.0) == []
    events = server.receive_data(b"a" * 1000, 0.0)
    assert closes(events)[0].code == 1009
    assert parse_http(server.data_to_send())[0].status_code == 431


def test_a_liberal_server_accepts_bare_newlines_leading_blank_lines_and_odd_casing():
    request = _upgrade(Upgrade="WebSocket", Connection="keep-alive, Upgrade").replace(
        b"\r\n", b"\n"
    )
    server = WsServer(LIMITS, 0.0)
    events = server.receive_data(b"\r\n" + request, 0.0)
    assert isinstance(events[0], HandshakeRequested)
    server.accept()
    assert server.data_to_send().startswith(b"HTTP/1.1 101 ")


def test_client_handshake_failures():
    client = WsClient("h", "/", LIMITS, 0.0)
    client.data_to_send()
    bad_accept = b"HTTP/1.1 101 OK\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: nope\r\n\r\n"
    events = client.receive_data(bad_accept, 0.0)
    assert [e.code for e in closes(events)] == [1002] and client.closed

    client = WsClient("h", "/", LIMITS, 0.0)
    assert [e.code for e in closes(client.receive_data(b"\x00\x01garbage\r\n\r\n", 0.0))] == [1002]

    client = WsClient("h", "/", LIMITS, 0.0)
    assert client.receive_data(b"HTTP/1.1 10", 0.0) == []
    assert closes(client.receive_data(b"", 0.0)) == [
        Closed(1006, "connection closed during the handshake", False)
    ]


def test_handshake_timeout_on_both_sides():
    limits = WsLimits(handshake_timeout=10.0)
    server = WsServer(limits, 100.0)
    server.receive_data(b"GET / HT", 101.0)
    assert server.next_deadline() == 110.0
    assert server.tick(109.9) == []
    assert closes(server.tick(110.0)) == [Closed(1006, "handshake timeout", False)]
    assert server.closed and server.data_to_send() == b""

    client = WsClient("h", "/", limits, 5.0)
    assert client.next_deadline() == 15.0
    assert closes(client.tick(15.0))[0].reason == "handshake timeout"


def test_frames_sent_with_the_handshake_are_delivered_after_accept():
    early = raw_frame(2, b"early bird")
    server = WsServer(LIMITS, 0.0)
    RawPeer(server, extra=early)
    assert server.tick(0.0) == [BinaryReceived(b"early bird")]


def test_sending_before_the_handshake_is_an_error_and_after_close_a_no_op():
    client = WsClient("h", "/", LIMITS, 0.0)
    with pytest.raises(RuntimeError):
        client.send_binary(b"x")
    client, server = open_pair()
    client.close()
    client.send_binary(b"dropped")
    client.send_control({"type": "dropped"})
    _, sev = pump(client, server)
    assert not any(isinstance(e, BinaryReceived | ControlReceived) for e in sev)
    with pytest.raises(ValueError):
        client.close(1006)
    with pytest.raises(ValueError):
        client.send_control({"no": "type"})


# --- messages ----------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 125, 126, 999, 1000])
def test_binary_round_trip_both_ways(size):
    client, server = open_pair()
    payload = bytes(range(256)) * 4
    payload = payload[:size]
    client.send_binary(payload)
    server.send_binary(payload[::-1])
    cev, sev = pump(client, server)
    assert sev == [BinaryReceived(payload)]
    assert cev == [BinaryReceived(payload[::-1])]


def test_large_messages_with_a_large_limit():
    limits = WsLimits(max_message_size=1 << 20)
    client, server = open_pair(limits)
    payload = bytes(range(256)) * 256 + b"tail"  # 64 KiB + 4: the 8-byte length form
    client.send_binary(payload)
    server.send_binary(payload)
    cev, sev = pump(client, server)
    assert sev == [BinaryReceived(payload)] and cev == [BinaryReceived(payload)]
    assert isinstance(sev[0].data, bytes)


def test_control_messages_round_trip_and_unknown_types_surface():
    client, server = open_pair()
    message = {"type": "anpx.drain", "n": [1, 2.5, None], "s": "é"}
    client.send_control(message)
    server.send_control({"type": "whatever"})
    cev, sev = pump(client, server)
    assert sev == [ControlReceived(message)]
    assert cev == [ControlReceived({"type": "whatever"})]


def test_fragmented_messages_are_reassembled_with_control_frames_between():
    server = WsServer(LIMITS, 0.0)
    peer = RawPeer(server)
    wire = (
        raw_frame(2, b"abc", fin=False)
        + raw_frame(9, b"p1")  # a ping may sit between fragments
        + raw_frame(0, b"def", fin=False)
        + raw_frame(0, b"g")
        + raw_frame(1, b'{"type": "x", "v": "' + "é".encode()[:1], fin=False)
        + raw_frame(0, "é".encode()[1:] + b'"}')
    )
    events = server.receive_data(wire, 0.0)
    assert events == [BinaryReceived(b"abcdefg"), ControlReceived({"type": "x", "v": "é"})]
    assert peer.read() == [Pong(b"p1")]


def test_every_byte_split_gives_the_same_events():
    server = WsServer(LIMITS, 0.0)
    RawPeer(server)
    wire = raw_frame(2, b"x" * 300) + raw_frame(1, b'{"type":"t"}') + raw_frame(2, b"", fin=True)
    events = []
    for i in range(len(wire)):
        events += server.receive_data(wire[i : i + 1], 0.0)
    assert events == [
        BinaryReceived(b"x" * 300),
        ControlReceived({"type": "t"}),
        BinaryReceived(b""),
    ]


def test_size_limit_exact_is_accepted_and_one_more_byte_closes_1009():
    client, server = open_pair()
    client.send_binary(b"a" * 1000)
    _, sev = pump(client, server)
    assert sev == [BinaryReceived(b"a" * 1000)]
    client.send_binary(b"a" * 1001)
    cev, sev = pump(client, server)
    assert closes(sev) == sev == [Closed(1009, "message larger than 1000 bytes", False)]
    assert cev == [Closed(1009, "message larger than 1000 bytes", True)]  # the peer saw our code
    assert client.closed and server.closed


def test_text_size_limit_counts_utf8_bytes():
    client, server = open_pair()
    fits = {"type": "t", "p": "é" * 480}  # 960 bytes of text + JSON framing < 1000
    client.send_control(fits)
    assert pump(client, server)[1] == [ControlReceived(fits)]
    client.send_control({"type": "t", "p": "é" * 500})  # 500 chars, over 1000 bytes
    assert [e.code for e in pump(client, server)[1]] == [1009]


def test_the_limit_fires_before_an_oversized_message_completes():
    server = WsServer(LIMITS, 0.0)
    peer = RawPeer(server)
    # fragments: 600 + 600 bytes of a message that never finishes
    assert server.receive_data(raw_frame(2, b"a" * 600, fin=False), 0.0) == []
    events = server.receive_data(raw_frame(0, b"b" * 600, fin=False), 0.0)
    assert [e.code for e in events] == [1009]
    assert [e.code for e in peer.read() if isinstance(e, CloseConnection)] == [1009]
    # one frame announcing 5000 bytes: closed as soon as 1001 of them arrived
    server = WsServer(LIMITS, 0.0)
    RawPeer(server)
    frame = raw_frame(2, b"c" * 5000)
    assert server.receive_data(frame[:900], 0.0) == []
    assert [e.code for e in server.receive_data(frame[900:1200], 0.0)] == [1009]
    # whatever follows is discarded; the peer's Close echo or EOF ends the connection
    assert server.receive_data(frame[1200:], 0.0) == []
    assert server.state == "closing"
    assert server.receive_data(b"", 0.0) == [] and server.closed


def test_deeply_nested_json_closes_1003_without_escaping():
    server = WsServer(WsLimits(max_message_size=1 << 20), 0.0)
    RawPeer(server)
    assert [e.code for e in server.receive_data(raw_frame(1, b"[" * 200_000), 0.0)] == [1003]


def test_json_ping_is_answered_with_the_same_timestamp_and_not_surfaced():
    server = WsServer(LIMITS, 0.0)
    peer = RawPeer(server)
    assert server.receive_data(raw_frame(1, b'{"type": "ping", "timestamp": 123.5}'), 1.0) == []
    (pong,) = peer.read()
    assert isinstance(pong, TextMessage)
    assert json.loads(pong.data) == {"type": "pong", "timestamp": 123.5}
    assert server.receive_data(raw_frame(1, b'{"type": "pong", "timestamp": 1}'), 1.0) == []
    assert peer.read() == []


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (b"not json", 1003),
        (b"[1, 2]", 1003),
        (b'"ping"', 1003),
        (b'{"no": "type"}', 1003),
        (b'{"type": 5}', 1003),
        (b"[" * 999, 1003),
        (b'{"type": "x", "v": "\xff"}', 1007),
        (b"\xed\xa0\x80", 1007),  # an encoded surrogate is not UTF-8
    ],
)
def test_bad_text_messages_close_the_connection(payload, code):
    server = WsServer(LIMITS, 0.0)
    peer = RawPeer(server)
    events = server.receive_data(raw_frame(1, payload), 0.0)
    assert [(e.code, e.clean) for e in events] == [(code, False)]
    assert [e.code for e in peer.read() if isinstance(e, CloseConnection)] == [code]
    assert server.receive_data(raw_frame(2, b"after"), 0.0) == []  # nothing more is delivered


PROTOCOL_VIOLATIONS = {
    "unmasked client frame": raw_frame(2, b"unmasked", mask=False),
    "reserved opcode": raw_frame(3, b"reserved opcode"),
    "fragmented ping": raw_frame(9, b"fragmented ping", fin=False),
    "orphan continuation": raw_frame(0, b"continuation without a start"),
    "rsv1 without extension": raw_frame(2, b"rsv1", rsv=0x40),
    "new message inside a fragmented one": raw_frame(2, b"x", fin=False) + raw_frame(2, b"y"),
    "one-byte close body": raw_frame(8, b"\x03"),
    "invalid close code": raw_frame(8, struct.pack(">H", 999)),
}


@pytest.mark.parametrize("wire", PROTOCOL_VIOLATIONS.values(), ids=PROTOCOL_VIOLATIONS.keys())
def test_protocol_violations_close_1002(wire):
    server = WsServer(LIMITS, 0.0)
    peer = RawPeer(server)
    events = server.receive_data(wire + raw_frame(2, b"ignored"), 0.0)
    assert [(e.code, e.clean) for e in events] == [(1002, False)]
    assert [e.code for e in peer.read() if isinstance(e, CloseConnection)] == [1002]
    assert server.state == "closing"
    assert server.receive_data(raw_frame(2, b"ignored"), 1.0) == []
    assert server.next_deadline() == 5.0
    assert server.tick(5.0) == [] and server.closed  # Closed was reported once, at the error


# --- keepalive -----------------------------------------------------------------------------------


def test_server_pings_after_silence_and_a_pong_keeps_the_connection():
    server = WsServer(LIMITS, 0.0)
    peer = RawPeer(server)
    assert server.next_deadline() == 30.0
    assert server.tick(29.9) == [] and peer.read() == []
    assert server.tick(30.0) == []
    (ping,) = peer.read()
    assert isinstance(ping, Ping)
    assert server.next_deadline() == 50.0
    server.receive_data(peer.ws.send(ping.response()), 31.0)
    assert server.next_deadline() == 61.0
    assert server.tick(55.0) == [] and server.state == "open"


def test_any_data_counts_as_liveness_for_the_server():
    server = WsServer(LIMITS, 0.0)
    RawPeer(server)
    server.tick(30.0)
    assert server.receive_data(raw_frame(2, b"busy"), 45.0) == [BinaryReceived(b"busy")]
    assert server.tick(70.0) == [] and server.state == "open"


def test_server_keepalive_timeout_closes_1011():
    server = WsServer(LIMITS, 0.0)
    peer = RawPeer(server)
    server.tick(30.0)
    assert server.tick(49.9) == []
    assert server.tick(50.0) == [Closed(1011, "keepalive timeout", False)]
    assert server.closed and server.tick(60.0) == [] and server.next_deadline() is None
    events = peer.read()
    assert isinstance(events[0], Ping)
    assert events[1] == CloseConnection(1011, "keepalive timeout")


def test_client_sends_json_pings_every_interval_and_answers_ws_pings():
    client, server = open_pair()
    assert client.next_deadline() == 30.0
    client.tick(30.0)
    server_raw = WSConnection(ConnectionType.SERVER)  # parse the client's bytes independently
    server_raw.receive_data(
        b"GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    list(server_raw.events())
    server_raw.send(AcceptConnection())
    wire = client.data_to_send()
    server_raw.receive_data(wire)
    (ping,) = list(server_raw.events())
    assert json.loads(ping.data) == {"type": "ping", "timestamp": 30.0}
    # the real server answers with a pong; the periodic ping continues regardless of traffic
    assert server.receive_data(wire, 30.0) == []
    assert client.receive_data(server.data_to_send(), 30.5) == []
    assert client.next_deadline() == 60.0
    # a WebSocket ping from the gateway (v1 gateways send them) gets a Pong
    server.tick(60.5)
    client.receive_data(server.data_to_send(), 60.5)
    server_raw.receive_data(client.data_to_send())
    kinds = [type(e) for e in server_raw.events()]
    assert Pong in kinds and TextMessage in kinds  # the pong, and the JSON ping due at 60.0


def test_client_keepalive_timeout_closes_1011():
    client, _ = open_pair()
    client.tick(30.0)
    assert client.next_deadline() == 50.0
    assert client.tick(50.0) == [Closed(1011, "keepalive timeout", False)]
    assert client.closed


def test_keepalive_can_be_disabled():
    client, server = open_pair(WsLimits(ping_interval=0))
    assert client.next_deadline() is None and server.next_deadline() is None
    assert client.tick(1e6) == [] and server.tick(1e6) == []
    assert client.data_to_send() == b"" and server.data_to_send() == b""


# --- close ---------------------------------------------------------------------------------------


def test_clean_close_started_by_either_side():
    client, server = open_pair()
    client.close(1000, "bye")
    assert client.state == "closing"
    cev, sev = pump(client, server, 1.0)
    assert sev == [Closed(1000, "bye", True)] and cev == [Closed(1000, "bye", True)]
    assert client.closed and server.closed

    client, server = open_pair()
    server.close(4001, "go away")
    cev, sev = pump(client, server, 1.0)
    assert sev == [Closed(4001, "go away", True)] and cev == [Closed(4001, "go away", True)]


def test_messages_that_cross_our_close_are_still_delivered():
    client, server = open_pair()
    server.close()
    client.send_binary(b"in flight")
    in_flight = client.data_to_send()
    sev = server.receive_data(in_flight, 0.0)
    assert sev == [BinaryReceived(b"in flight")] and server.state == "closing"


def test_close_timeout_and_eof_while_closing():
    _, server = open_pair(now=10.0)
    server.close(1001, "shutdown")
    assert server.next_deadline() == 15.0
    assert server.tick(14.9) == []
    assert server.tick(15.0) == [Closed(1001, "shutdown", False)]
    assert server.closed

    _, server = open_pair()
    server.close(1001, "shutdown")
    assert server.receive_data(b"", 1.0) == [Closed(1001, "shutdown", False)]


def test_eof_without_close_gives_1006_exactly_once():
    _, server = open_pair()
    assert server.receive_data(b"", 1.0) == [
        Closed(1006, "connection closed without a Close frame", False)
    ]
    assert server.closed
    assert server.receive_data(b"", 2.0) == [] and server.tick(100.0) == []
    assert server.receive_data(b"more", 3.0) == []


def test_a_peer_close_without_status_is_reported_as_1005():
    server = WsServer(LIMITS, 0.0)
    peer = RawPeer(server)
    assert server.receive_data(raw_frame(8, b""), 0.0) == [Closed(1005, "", True)]
    (echo,) = peer.read()
    assert isinstance(echo, CloseConnection)


# --- properties -------------------------------------------------------------------------------------

messages = st.lists(
    st.one_of(
        st.binary(max_size=1200),
        st.fixed_dictionaries(
            {"type": st.sampled_from(["a", "ping", "pong"])}, optional={"v": st.text(max_size=40)}
        ),
    ),
    max_size=8,
)


def _feed_server(wire: bytes, cuts: list[int]) -> list:
    server = WsServer(LIMITS, 0.0)
    events: list = []
    edges = sorted({c % (len(wire) + 1) for c in cuts} | {0, len(wire)})
    for a, b in itertools.pairwise(edges):
        for ev in server.receive_data(wire[a:b], 0.0):
            events.append(ev)
            if isinstance(ev, HandshakeRequested):
                server.accept()
    events += server.tick(0.0)
    events += server.receive_data(b"", 0.0)
    return events


@FAST
@given(messages, st.lists(st.integers(min_value=0), max_size=30))
def test_any_split_of_a_client_stream_gives_the_same_server_events(msgs, cuts):
    # One client stream (handshake, messages, Close), fed to fresh servers whole and in pieces.
    fresh = WsClient("h", "/t", LIMITS, 0.0)
    head = fresh.data_to_send()
    replay = WsServer(LIMITS, 0.0)
    replay.receive_data(head, 0.0)
    replay.accept()
    fresh.receive_data(replay.data_to_send(), 0.0)
    for m in msgs:
        fresh.send_binary(m) if isinstance(m, bytes) else fresh.send_control(m)
    fresh.close(1000, "done")
    wire = head + fresh.data_to_send()
    whole = _feed_server(wire, [])
    assert _feed_server(wire, cuts) == whole
    expected = [BinaryReceived(m) if isinstance(m, bytes) else ControlReceived(m) for m in msgs]
    expected = [
        e
        for e in expected
        if not (isinstance(e, ControlReceived) and e.message["type"] in ("ping", "pong"))
    ]
    oversized = next(
        (i for i, m in enumerate(msgs) if isinstance(m, bytes) and len(m) > 1000), None
    )
    delivered = [e for e in whole if isinstance(e, BinaryReceived | ControlReceived)]
    if oversized is None:
        assert delivered == expected
        assert closes(whole) == [Closed(1000, "done", True)]
    else:
        assert closes(whole)[0].code == 1009
    assert len(closes(whole)) == 1


@FAST
@given(
    st.sampled_from([b"", _upgrade(), _upgrade()[:40]]),
    st.binary(max_size=400),
    st.lists(st.integers(min_value=0), max_size=10),
)
def test_garbage_never_escapes_the_server(prefix, garbage, cuts):
    wire = prefix + garbage
    server = WsServer(LIMITS, 0.0)
    events: list = []
    edges = sorted({c % (len(wire) + 1) for c in cuts} | {0, len(wire)})
    for a, b in itertools.pairwise(edges):
        for ev in server.receive_data(wire[a:b], 0.0):
            events.append(ev)
            if isinstance(ev, HandshakeRequested):
                server.accept()
    events += server.tick(1.0)
    events += server.receive_data(b"", 2.0)
    events += server.tick(100.0)
    assert len(closes(events)) == 1
    assert server.closed
    out = server.data_to_send()
    if not any(isinstance(e, HandshakeRequested) for e in events):
        assert out == b"" or out.startswith(b"HTTP/1.1 4")


@FAST
@given(st.binary(max_size=400), st.booleans())
def test_garbage_never_escapes_the_client(garbage, after_handshake):
    if after_handshake:
        client, _ = open_pair()
    else:
        client = WsClient("h", "/", LIMITS, 0.0)
    events = client.receive_data(garbage, 0.0)
    events += client.tick(40.0)
    events += client.receive_data(b"", 41.0)
    events += client.tick(1000.0)
    assert len(closes(events)) == 1 and client.closed


# --- interoperability over real loopback sockets ----------------------------------------------------


async def _drive(stream: trio.abc.Stream, ws, on_event) -> list:
    """A minimal driver: pump the socket into a sans-IO connection until it is closed."""
    seen: list = []

    async def flush() -> None:
        out = ws.data_to_send()
        if out:
            await stream.send_all(out)

    await flush()
    while not ws.closed:
        deadline = ws.next_deadline()
        data = None
        with trio.move_on_at(deadline if deadline is not None else float("inf")):
            try:
                data = await stream.receive_some(65536)
            except trio.BrokenResourceError:
                data = b""
        now = trio.current_time()
        events = ws.tick(now) if data is None else ws.receive_data(data, now)
        for ev in events:
            seen.append(ev)
            on_event(ws, ev)
        try:
            await flush()
        except trio.BrokenResourceError:
            ws.receive_data(b"", trio.current_time())
    await stream.aclose()
    return seen


def _echo(ws, ev) -> None:
    if isinstance(ev, HandshakeRequested):
        ws.accept(subprotocol="anpx" if "anpx" in ev.subprotocols else None)
    elif isinstance(ev, BinaryReceived):
        ws.send_binary(ev.data)
    elif isinstance(ev, ControlReceived):
        ws.send_control(ev.message)


class Collected(list):
    """A list trio tasks can wait on: ``await items.wait_for(n)`` (no polling)."""

    def __init__(self) -> None:
        super().__init__()
        self._grew: trio.Event | None = None

    def append(self, item: object) -> None:
        super().append(item)
        if self._grew is not None:
            self._grew.set()
            self._grew = None

    async def wait_until(self, done: Callable[[list], bool]) -> None:
        while not done(self):
            if self._grew is None:
                self._grew = trio.Event()
            await self._grew.wait()


async def _serve_ours(nursery: trio.Nursery, limits: WsLimits, results: list) -> int:
    async def handler(stream: trio.SocketStream) -> None:
        results.append(await _drive(stream, WsServer(limits, trio.current_time()), _echo))

    listeners = await nursery.start(functools.partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
    return listeners[0].socket.getsockname()[1]


def test_our_server_with_a_trio_websocket_client():
    limits = WsLimits(max_message_size=200_000)
    results = Collected()
    payload = bytes(range(256)) * 400  # 100 KiB

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            port = await _serve_ours(nursery, limits, results)
            url = f"ws://127.0.0.1:{port}/tunnel"
            with trio.fail_after(10):
                async with trio_websocket.open_websocket_url(
                    url, subprotocols=["anpx"], max_message_size=1 << 20
                ) as ws:
                    assert ws.subprotocol == "anpx"
                    await ws.send_message(payload)
                    assert await ws.get_message() == payload
                    await ws.send_message('{"type": "ping", "timestamp": 42}')
                    assert json.loads(await ws.get_message()) == {"type": "pong", "timestamp": 42}
                    await ws.send_message('{"type": "hello"}')
                    assert json.loads(await ws.get_message()) == {"type": "hello"}
                    await ws.ping(b"pp")  # returns when our Pong arrives
                async with trio_websocket.open_websocket_url(url) as ws:
                    await ws.send_message(b"x" * 200_001)
                    with pytest.raises(trio_websocket.ConnectionClosed) as info:
                        await ws.get_message()
                    assert info.value.reason.code == 1009
                await results.wait_until(lambda r: len(r) >= 2)
            nursery.cancel_scope.cancel()

    trio.run(main)
    first, second = results
    assert closes(first) == [Closed(1000, "", True)]
    assert [c.code for c in closes(second)] == [1009]


def test_our_client_with_a_trio_websocket_server():
    payload = bytes(range(256)) * 300
    seen_by_server = Collected()

    async def handler(request: trio_websocket.WebSocketRequest) -> None:
        ws = await request.accept(subprotocol="anpx", extra_headers=[(b"x-gw", b"1")])
        try:
            await ws.ping(b"alive")  # returns once our client answered with a Pong
            await ws.send_message('{"type": "ping", "timestamp": 7}')
            seen_by_server.append(json.loads(await ws.get_message()))
            await ws.send_message('{"type": "go"}')
            while True:
                msg = await ws.get_message()
                seen_by_server.append(msg)
                await ws.send_message(msg)
        except trio_websocket.ConnectionClosed as exc:
            seen_by_server.append(exc.reason.code)

    async def main() -> list:
        async with trio.open_nursery() as nursery:
            server = await nursery.start(
                trio_websocket.serve_websocket, handler, "127.0.0.1", 0, None
            )
            stream = await trio.open_tcp_stream("127.0.0.1", server.port)
            client = WsClient(
                f"127.0.0.1:{server.port}",
                "/t",
                WsLimits(),
                trio.current_time(),
                subprotocols=["anpx"],
            )
            got: list = []

            def on_event(ws, ev) -> None:
                if isinstance(ev, HandshakeAccepted):
                    assert ev.subprotocol == "anpx" and ("x-gw", "1") in ev.headers
                elif isinstance(ev, ControlReceived) and ev.message == {"type": "go"}:
                    ws.send_binary(payload)
                    ws.send_control({"type": "hello", "n": 1})
                elif isinstance(ev, BinaryReceived | ControlReceived):
                    got.append(ev)
                    if len(got) == 2:
                        ws.close(1000, "done")

            with trio.fail_after(10):
                events = await _drive(stream, client, on_event)
                await seen_by_server.wait_until(lambda seen: bool(seen) and seen[-1] == 1000)
            nursery.cancel_scope.cancel()
            return events + got

    events = trio.run(main)
    assert BinaryReceived(payload) in events
    assert ControlReceived({"type": "hello", "n": 1}) in events
    assert closes(events) == [Closed(1000, "done", True)]
    assert seen_by_server == [
        {"type": "pong", "timestamp": 7},
        payload,
        '{"type":"hello","n":1}',
        1000,
    ]


def test_our_server_with_the_websockets_library_client():
    """The v1 reference receiver is built on `websockets` (here offering permessage-deflate too)."""
    from websockets.sync.client import connect

    results = Collected()
    replies: list = []

    def v1_client(port: int) -> None:
        with connect(f"ws://127.0.0.1:{port}/", proxy=None, max_size=None, open_timeout=5) as ws:
            ws.send(b"\x00" * 70000)
            replies.append(ws.recv())
            ws.send(json.dumps({"type": "ping", "timestamp": 3.25}))
            replies.append(json.loads(ws.recv()))
            ws.ping(b"k").wait(5)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            port = await _serve_ours(nursery, WsLimits(), results)
            with trio.fail_after(10):
                await trio.to_thread.run_sync(v1_client, port)
                await results.wait_until(bool)
            nursery.cancel_scope.cancel()

    trio.run(main)
    assert replies == [b"\x00" * 70000, {"type": "pong", "timestamp": 3.25}]
    assert closes(results[0]) == [Closed(1000, "", True)]


def test_our_client_with_the_websockets_library_server():
    """The v1 reference gateway is built on `websockets` too."""
    from websockets.sync.server import serve

    received: list = []

    def handler(ws) -> None:  # the v1 gateway's control handling, plus an echo
        for msg in ws:
            received.append(msg)
            if isinstance(msg, str):
                ping = json.loads(msg)
                ws.send(json.dumps({"type": "pong", "timestamp": ping.get("timestamp")}))
                ws.send(json.dumps({"type": "done"}))
            else:
                ws.send(msg)

    server = serve(handler, "127.0.0.1", 0, compression=None, max_size=None)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    port = server.socket.getsockname()[1]
    limits = WsLimits(ping_interval=0.05, ping_timeout=5.0)

    async def main() -> list:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        client = WsClient(f"127.0.0.1:{port}", "/", limits, trio.current_time())
        got: list = []

        def on_event(ws, ev) -> None:
            if isinstance(ev, HandshakeAccepted):
                ws.send_binary(b"frame" * 20000)
            elif isinstance(ev, BinaryReceived):
                got.append(ev)
            elif isinstance(ev, ControlReceived) and ev.message["type"] == "done":
                ws.close()

        with trio.fail_after(10):
            await trio.sleep(0)
            events = await _drive(stream, client, on_event)
        return events + got

    try:
        events = trio.run(main)
    finally:
        server.shutdown()
        thread.join(5)
    assert BinaryReceived(b"frame" * 20000) in events
    assert closes(events) == [Closed(1000, "", True)]
    assert received[0] == b"frame" * 20000
    assert json.loads(received[1])["type"] == "ping"
