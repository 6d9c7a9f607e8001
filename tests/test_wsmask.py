"""WebSocket masking in C (anpx_core.wsmask): byte for byte what wsproto does in Python."""

from __future__ import annotations

import struct

import pytest
import wsproto.frame_protocol as frame_protocol
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from anpx_core import wsmask
from anpx_core.websocket import BinaryReceived, HandshakeAccepted, WsClient, WsLimits, WsServer

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
keys = st.binary(min_size=4, max_size=4)
payloads = st.binary(max_size=3000)


def xor_by_definition(data: bytes, key: bytes) -> bytes:
    """RFC 6455 5.3: octet i of the masked data is octet i XOR octet (i mod 4) of the key."""
    return bytes(b ^ key[i % 4] for i, b in enumerate(data))


MASKS = [pytest.param(wsmask.mask_python, id="python")]
if wsmask.ACCELERATED:
    MASKS.append(pytest.param(wsmask.apply_mask, id="c"))


def test_the_accelerator_is_installed_and_wsproto_uses_it():
    # websockets is a dependency: without its C routine downloads run at half speed.
    assert wsmask.ACCELERATED
    assert frame_protocol.XorMaskerSimple is wsmask.Masker
    assert wsmask.install() is True  # idempotent


@pytest.mark.parametrize("mask", MASKS)
@FAST
@given(data=payloads, key=keys)
def test_mask_functions_follow_the_definition(mask, data, key):
    assert mask(data, key) == xor_by_definition(data, key)
    assert mask(bytearray(data), bytearray(key)) == xor_by_definition(data, key)
    assert mask(mask(data, key), key) == data


def _pieces(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(c, len(data)) for c in cuts})
    out, start = [], 0
    for p in [*points, len(data)]:
        out.append(data[start:p])
        start = p
    return out


@pytest.mark.parametrize("mask", MASKS)
@FAST
@given(data=payloads, key=keys, cuts=st.lists(st.integers(0, 3000), max_size=8))
def test_a_frame_masked_in_pieces_matches_wsprotos_own_masker(mask, data, key, cuts):
    """wsproto unmasks a frame's payload piece by piece as it arrives: the key must carry on."""
    ours, theirs = wsmask.Masker(key, mask), wsmask.WSPROTO_MASKER(bytearray(key))
    pieces = _pieces(data, cuts)
    got = b"".join(bytes(ours.process(p)) for p in pieces)
    expected = b"".join(bytes(theirs.process(bytearray(p))) for p in pieces)
    assert got == expected == xor_by_definition(data, key)


def _open_pair(limits: WsLimits) -> tuple[WsClient, WsServer]:
    client, server = WsClient("gw", "/", limits, 0.0), WsServer(limits, 0.0)
    server.receive_data(client.data_to_send(), 0.0)
    server.accept()
    assert isinstance(client.receive_data(server.data_to_send(), 0.0)[0], HandshakeAccepted)
    return client, server


def _split_frame(wire: bytes) -> tuple[bytes, bytes, bytes]:
    """(header, masking key, masked payload) of one client frame."""
    n, at = wire[1] & 0x7F, 2
    if n == 126:
        n, at = struct.unpack(">H", wire[2:4])[0], 4
    elif n == 127:
        n, at = struct.unpack(">Q", wire[2:10])[0], 10
    assert wire[1] & 0x80 and len(wire) == at + 4 + n
    return wire[:at], wire[at : at + 4], wire[at + 4 :]


MASKERS = {
    "wsproto": wsmask.WSPROTO_MASKER,
    "python": lambda key: wsmask.Masker(key, wsmask.mask_python),
    "c": lambda key: wsmask.Masker(key, wsmask.apply_mask),
}


@settings(FAST, max_examples=60)
@given(
    data=st.one_of(
        payloads, st.integers(65530, 70000).map(lambda n: bytes(range(256)) * (n // 256))
    ),
    sender=st.sampled_from(sorted(MASKERS)),
    reader=st.sampled_from(sorted(MASKERS)),
    cuts=st.lists(st.integers(0, 70100), max_size=8),
)
def test_frames_are_identical_whichever_masker_sends_or_reads(data, sender, reader, cuts):
    """Our client's frames through wsproto: the same bytes on the wire with each masker
    (given the same random key), and each masker's server reads every other's frames."""
    limits = WsLimits(max_message_size=1 << 20)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(frame_protocol, "XorMaskerSimple", MASKERS[sender])
        client, server = _open_pair(limits)
        client.send_binary(data)
        wire = client.data_to_send()
        header, key, masked = _split_frame(wire)
        for other in MASKERS.values():
            assert header + key + bytes(other(bytearray(key)).process(bytearray(data))) == wire
        assert masked == xor_by_definition(data, key)
        mp.setattr(frame_protocol, "XorMaskerSimple", MASKERS[reader])
        events = []
        for piece in _pieces(wire, cuts):
            if piece:  # b"" would mean EOF
                events += server.receive_data(piece, 0.0)
    assert events == [BinaryReceived(data)]
