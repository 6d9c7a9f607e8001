"""Plain binary frames outside wsproto (anpx_core.wsframe): the same bytes on the wire and the
same reaction to any input as when wsproto does every frame (``fast_frames = False``)."""

from __future__ import annotations

import itertools
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from wsproto import ConnectionType, WSConnection
from wsproto.events import Request

from anpx_core import websocket, wsframe
from anpx_core.websocket import BinaryReceived, HandshakeAccepted, WsClient, WsLimits, WsServer

FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
LIMITS = WsLimits(max_message_size=70_500, ping_interval=0)
BIG = bytes(range(256)) * 274 + b"\x01\x02"  # 70,146 bytes: the 64-bit length encoding
# sizes around every length-encoding edge, and small ones of any content
payloads = st.one_of(
    st.binary(max_size=300),
    st.sampled_from([0, 1, 124, 125, 126, 127, 65535, 65536, 70_146]).map(lambda n: BIG[:n]),
)


class RefServer(WsServer):
    fast_frames = False


class RefClient(WsClient):
    fast_frames = False


class CountingSource:
    """An entropy source that is not random, so that the expected frames can be built."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, n: int) -> bytes:
        self.calls += 1
        return bytes((self.calls * 7 + i * 13) % 256 for i in range(n))


def by_definition(payload: bytes, key: bytes | None) -> bytes:
    """RFC 6455 5.2: one final binary frame, the shortest length encoding."""
    n = len(payload)
    bit = 0x80 if key is not None else 0
    if n < 126:
        head = bytes([0x82, bit | n])
    elif n < 65536:
        head = bytes([0x82, bit | 126]) + struct.pack(">H", n)
    else:
        head = bytes([0x82, bit | 127]) + struct.pack(">Q", n)
    if key is None:
        return head + payload
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def unmasked(wire: bytes) -> list[tuple[int, bytes]]:
    """A client's frames as (first byte, payload): its masking keys are random."""
    frames, at = [], 0
    while at < len(wire):
        first, n = wire[at], wire[at + 1] & 0x7F
        at += 2
        if n == 126:
            (n,) = struct.unpack(">H", wire[at : at + 2])
            at += 2
        elif n == 127:
            (n,) = struct.unpack(">Q", wire[at : at + 8])
            at += 8
        key, at = wire[at : at + 4], at + 4
        frames.append((first, bytes(b ^ key[i % 4] for i, b in enumerate(wire[at : at + n]))))
        at += n
    return frames


def open_server(cls: type[WsServer], limits: WsLimits = LIMITS) -> WsServer:
    peer = WSConnection(ConnectionType.CLIENT)
    server = cls(limits, 0.0)
    server.receive_data(peer.send(Request(host="h", target="/")), 0.0)
    server.accept()
    server.data_to_send()
    return server


def open_client(cls: type[WsClient], limits: WsLimits = LIMITS, **kw) -> WsClient:
    client = cls("h", "/", limits, 0.0, **kw)
    server = WsServer(limits, 0.0)
    server.receive_data(client.data_to_send(), 0.0)
    server.accept()
    assert isinstance(client.receive_data(server.data_to_send(), 0.0)[0], HandshakeAccepted)
    return client


# --- sending ------------------------------------------------------------------------------


def test_the_fast_path_is_available_with_this_wsproto():
    assert wsframe.AVAILABLE
    assert WsServer.fast_frames and WsClient.fast_frames


@FAST
@given(st.lists(payloads, min_size=1, max_size=4))
def test_a_servers_frames_are_wsprotos_byte_for_byte(messages):
    fast, ref = open_server(WsServer), open_server(RefServer)
    for m in messages:
        fast.send_binary(m)
        ref.send_binary(m)
    assert (
        fast.data_to_send()
        == ref.data_to_send()
        == b"".join(by_definition(m, None) for m in messages)
    )


@FAST
@given(st.lists(payloads, min_size=1, max_size=4))
def test_a_clients_frames_are_masked_with_fresh_keys_from_its_source(messages):
    source = CountingSource()
    client = open_client(WsClient, mask_source=source)
    for m in messages:
        client.send_binary(m)
    pool = CountingSource()(wsframe.KEY_POOL)  # what the client drew first
    expected = b"".join(by_definition(m, pool[4 * i : 4 * i + 4]) for i, m in enumerate(messages))
    assert client.data_to_send() == expected
    # and wsproto on the other end reads them back
    peer = open_server(RefServer)
    got = peer.receive_data(expected, 0.0)
    assert got == [BinaryReceived(m) for m in messages]


def test_the_key_pool_refills_from_the_source():
    source = CountingSource()
    keys = wsframe.MaskKeys(source)
    per_pool = wsframe.KEY_POOL // 4
    taken = [keys.take() for _ in range(per_pool + 2)]
    assert source.calls == 2
    again = CountingSource()
    pools = again(wsframe.KEY_POOL) + again(wsframe.KEY_POOL)
    assert b"".join(taken) == pools[: 4 * (per_pool + 2)]


def test_a_short_entropy_source_is_refused():
    keys = wsframe.MaskKeys(lambda n: b"\x00" * (n - 1))
    with pytest.raises(ValueError):
        keys.take()


@FAST
@given(st.lists(payloads, min_size=1, max_size=4))
def test_a_client_without_an_entropy_source_lets_wsproto_mask(messages):
    fast, ref = open_client(WsClient), open_client(RefClient)
    for m in messages:
        fast.send_binary(m)
        ref.send_binary(m)
    wire = fast.data_to_send()
    assert type(wire) is bytes
    assert unmasked(wire) == unmasked(ref.data_to_send()) == [(0x82, m) for m in messages]
    assert open_server(RefServer).receive_data(wire, 0.0) == [BinaryReceived(m) for m in messages]


# --- receiving: the same events, output and state as wsproto alone ------------------------


def _frame(fin: bool, rsv: int, opcode: int, mask: str, length: str, payload: bytes) -> bytes:
    first = (0x80 if fin else 0) | rsv | opcode
    n = len(payload)
    if length == "msb":  # 64-bit length with the top bit set: always refused
        len_bytes = bytes([127]) + struct.pack(">Q", (1 << 63) | n)
    elif length == "64" or (length == "min" and n > 65535):
        len_bytes = bytes([127]) + struct.pack(">Q", n)
    elif length == "16" or (length == "min" and n > 125):
        len_bytes = bytes([126]) + struct.pack(">H", n)
    else:
        len_bytes = bytes([n])
    if mask == "none":
        return bytes([first, len_bytes[0]]) + len_bytes[1:] + payload
    key = b"\x9a\x01\xff\x5c"
    masked = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return bytes([first, 0x80 | len_bytes[0]]) + len_bytes[1:] + key + masked


def frames(right_mask: str) -> st.SearchStrategy[bytes]:
    """Mostly plain binary frames, and every way a frame can differ from one."""
    wrong_mask = "none" if right_mask == "key" else "key"
    plain = payloads.map(lambda p: _frame(True, 0, 2, right_mask, "min", p))
    odd = st.builds(
        _frame,
        st.booleans(),
        st.sampled_from([0, 0x10, 0x20, 0x40, 0x70]),
        st.sampled_from([0, 1, 2, 3, 7, 8, 9, 10, 11, 15]),
        st.sampled_from([right_mask, right_mask, wrong_mask]),
        st.sampled_from(["min", "min", "min", "16", "64", "msb"]),
        st.one_of(st.binary(max_size=140), st.sampled_from([b"\x03\xe8", b"\x03\xe8ok", b"{}"])),
    )
    text = st.sampled_from([b'{"type": "a"}', b'{"type": "ping", "timestamp": 1}', b"\xff"]).map(
        lambda p: _frame(True, 0, 1, right_mask, "min", p)
    )
    return st.one_of(plain, plain, plain, odd, text, st.binary(max_size=12))


def _feed(conn, wire: bytes, cuts: list[int]) -> tuple[list, bytes, str]:
    events: list = []
    out = b""
    edges = sorted({c % (len(wire) + 1) for c in cuts} | {0, len(wire)})
    for a, b in itertools.pairwise(edges):
        events += conn.receive_data(wire[a:b], 1.0)
        out += conn.data_to_send()
    events += conn.receive_data(b"", 2.0)
    events += conn.tick(100.0)
    out += conn.data_to_send()
    return events, out, conn.state


LIMIT_CASES = [LIMITS, WsLimits(max_message_size=200, ping_interval=0)]


@pytest.mark.parametrize("limits", LIMIT_CASES, ids=["large", "small-limit"])
@pytest.mark.parametrize("discard", [False, True], ids=["close-1009", "discard"])
@FAST
@given(
    st.lists(frames("key"), max_size=8),
    st.lists(st.integers(min_value=0), max_size=12),
    st.booleans(),
)
def test_a_server_reacts_to_any_client_stream_as_wsproto_does(limits, discard, wire, cuts, whole):
    data = b"".join(wire)
    results = []
    for cls in (WsServer, RefServer):
        server = open_server(cls, limits)
        server.discard_oversized = discard
        results.append(_feed(server, data, [] if whole else cuts))
    assert results[0] == results[1]


@pytest.mark.parametrize("limits", LIMIT_CASES, ids=["large", "small-limit"])
@FAST
@given(
    st.lists(frames("none"), max_size=8),
    st.lists(st.integers(min_value=0), max_size=12),
    st.booleans(),
)
def test_a_client_reacts_to_any_server_stream_as_wsproto_does(limits, wire, cuts, whole):
    data = b"".join(wire)
    results = []
    for cls in (WsClient, RefClient):
        client = open_client(cls, limits)
        events, out, state = _feed(client, data, [] if whole else cuts)
        results.append((events, unmasked(out), state))
    assert results[0] == results[1]


def test_plain_frames_are_read_on_the_fast_path(monkeypatch):
    """Whole plain frames take the fast path (else the comparisons above prove nothing)."""
    read: list[bytes] = []

    def spy(data, pos, masked, limit):
        found = wsframe.plain_binary(data, pos, masked, limit)
        if found is not None:
            read.append(found[0])
        return found

    monkeypatch.setattr(websocket, "plain_binary", spy)
    server = open_server(WsServer)
    wire = by_definition(b"one", b"\x01\x02\x03\x04") + by_definition(BIG[:300], b"abcd")
    assert server.receive_data(wire, 1.0) == [BinaryReceived(b"one"), BinaryReceived(BIG[:300])]
    assert read == [b"one", BIG[:300]]


def test_a_frame_cut_short_goes_to_wsproto_and_the_next_whole_one_after_it():
    server = open_server(WsServer)
    wire = by_definition(b"first", b"\x01\x02\x03\x04") + by_definition(b"second", b"abcd")
    cut = len(wire) - 3
    assert server.receive_data(wire[:cut], 1.0) == [BinaryReceived(b"first")]
    assert server.receive_data(wire[cut:], 1.0) == [BinaryReceived(b"second")]
    assert server.receive_data(by_definition(b"third", b"wxyz"), 1.0) == [BinaryReceived(b"third")]
