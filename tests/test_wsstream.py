"""The ws extension's codec: records split anywhere, every malformed record refused,
the handshake negotiation and the stream heads (docs/protocol.md section 20)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from anpx_core.errors import ProtocolError
from anpx_core.meta import RequestHead
from anpx_core.tunnel import parse_extensions
from anpx_core.wsstream import (
    MAX_PIECE,
    MIN_WS_WINDOW,
    CloseRecord,
    MessagePiece,
    RecordDecoder,
    accept_head,
    deny_ops,
    encode_close,
    encode_piece,
    is_open_head,
    offer_ws_extensions,
    open_head,
    parse_ws_extension,
    subprotocols_of,
    ws_in_effect,
)

BIG = 16 * 1024 * 1024


def record(kind: int, payload: bytes) -> bytes:
    return bytes([kind]) + len(payload).to_bytes(4, "big") + payload


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, last = [], 0
    for p in points:
        pieces.append(data[last:p])
        last = p
    pieces.append(data[last:])
    return pieces


def decode_all(data: bytes, cuts: list[int], limit: int = BIG) -> list[object]:
    decoder = RecordDecoder(limit)
    out: list[object] = []
    for piece in split_at(data, cuts):
        out += decoder.feed(piece)
    decoder.end()
    return out


def reassemble(records: list[object]) -> tuple[list[str | bytes], CloseRecord | None]:
    messages: list[str | bytes] = []
    parts: list[str | bytes] = []
    close = None
    for r in records:
        if isinstance(r, CloseRecord):
            close = r
            continue
        assert isinstance(r, MessagePiece)
        parts.append(r.data)
        if r.fin:
            first = parts[0]
            messages.append(("" if isinstance(first, str) else b"").join(parts))  # type: ignore[arg-type]
            parts = []
    assert parts == []
    return messages, close


message_st = st.one_of(
    st.text(max_size=300),
    st.binary(max_size=300),
)


@st.composite
def fragmented(draw: st.DrawFn) -> tuple[list[str | bytes], bytes]:
    """Messages, and their records with each message cut into arbitrary pieces."""
    messages = draw(st.lists(message_st, max_size=8))
    wire = b""
    for m in messages:
        cuts = sorted(draw(st.lists(st.integers(0, len(m)), max_size=3)))
        pieces = [m[a:b] for a, b in zip([0, *cuts], [*cuts, len(m)], strict=True)]
        for i, piece in enumerate(pieces):
            wire += encode_piece(piece, i == len(pieces) - 1)
    return messages, wire


@settings(max_examples=150)
@given(fragmented(), st.lists(st.integers(0, 10_000), max_size=12), st.booleans())
def test_records_round_trip_at_any_split(case, cuts, with_close) -> None:
    messages, wire = case
    close = CloseRecord(4000, "bye ✓") if with_close else None
    if close is not None:
        wire += encode_close(close.code, close.reason)
    got, got_close = reassemble(decode_all(wire, cuts))
    assert got == messages
    assert got_close == close


@given(st.text(min_size=1, max_size=50), st.integers(1, 3))
def test_text_pieces_may_split_a_character(text, cut) -> None:
    raw = text.encode("utf-8")
    cut = min(cut, len(raw))
    wire = record(0x81, raw[:cut]) + record(0x01, raw[cut:])
    assert reassemble(decode_all(wire, []))[0] == [text]


def test_long_message_is_split_into_max_pieces() -> None:
    data = bytes(range(256)) * 1000  # 256,000 bytes
    wire = encode_piece(data, True)
    records = decode_all(wire, [7, MAX_PIECE + 3])
    assert [len(r.data) for r in records] == [MAX_PIECE] * 3 + [256_000 - 3 * MAX_PIECE]  # type: ignore[union-attr]
    assert [r.fin for r in records] == [False, False, False, True]  # type: ignore[union-attr]
    assert reassemble(records)[0] == [data]


def test_sixteen_mib_message_passes_at_the_limit_and_not_beyond() -> None:
    data = b"x" * BIG
    assert reassemble(decode_all(encode_piece(data, True), [], BIG))[0] == [data]
    with pytest.raises(ProtocolError) as exc:
        decode_all(encode_piece(data + b"y", True), [], BIG)
    assert exc.value.code == "too_large"


def test_empty_messages_and_skipped_extension_records() -> None:
    wire = record(0x01, b"") + record(0xF3, b"future") + record(0x02, b"") + record(0x08, b"")
    records = decode_all(wire, [1, 2, 3])
    assert records == [MessagePiece("", True), MessagePiece(b"", True), CloseRecord(None, "")]


def test_close_between_fragments_drops_the_unfinished_message() -> None:
    wire = record(0x81, b"hal") + encode_close(1001, "away")
    assert decode_all(wire, []) == [MessagePiece("hal", False), CloseRecord(1001, "away")]


def test_close_reason_is_cut_at_a_character_boundary() -> None:
    wire = encode_close(1000, "é" * 100)
    assert len(wire) == 5 + 2 + 122
    (close,) = decode_all(wire, [])
    assert close == CloseRecord(1000, "é" * 61)


@pytest.mark.parametrize("code", [1000, 1001, 1003, 1006, 1007, 1014, 3000, 4999])
def test_close_codes_carried(code: int) -> None:
    assert decode_all(encode_close(code, "r"), []) == [CloseRecord(code, "r")]


@pytest.mark.parametrize("code", [0, 999, 1004, 1005, 1015, 1016, 2999, 5000, 65535])
def test_close_codes_refused(code: int) -> None:
    with pytest.raises(ValueError):
        encode_close(code)
    with pytest.raises(ProtocolError) as exc:
        decode_all(record(0x08, code.to_bytes(2, "big")), [])
    assert exc.value.code == "bad_record"


BAD = {
    "unknown kind": record(0x03, b"x"),
    "kind 0x00": record(0x00, b""),
    "text piece over the limit": record(0x01, b"a" * (MAX_PIECE + 1)),
    "extension record over the limit": record(0xF0, b"a" * (MAX_PIECE + 1)),
    "close over 125 bytes": record(0x08, b"\x03\xe8" + b"r" * 124),
    "close of one byte": record(0x08, b"\x03"),
    "close reason not UTF-8": record(0x08, b"\x03\xe8\xff"),
    "invalid UTF-8 text": record(0x01, b"\xc3\x28"),
    "text cut inside a character": record(0x01, "é".encode()[:1]),
    "binary inside a text message": record(0x81, b"a") + record(0x02, b"b"),
    "record after close": encode_close(1000) + record(0x01, b"late"),
    "record cut short": record(0x02, b"abc")[:-1],
    "header cut short": b"\x01\x00\x00",
}


@pytest.mark.parametrize("wire", BAD.values(), ids=BAD.keys())
def test_malformed_records_are_refused_and_stay_refused(wire: bytes) -> None:
    decoder = RecordDecoder(BIG)
    with pytest.raises(ProtocolError) as exc:
        decoder.feed(wire)
        decoder.end()
    assert exc.value.code == "bad_record"
    with pytest.raises(ProtocolError):
        decoder.feed(encode_piece(b"fine", True))


def test_an_oversized_record_is_refused_from_its_header() -> None:
    decoder = RecordDecoder(BIG)
    with pytest.raises(ProtocolError):
        decoder.feed(b"\x02\x7f\xff\xff\xff")  # no payload needed to refuse it


@given(st.binary(max_size=200), st.lists(st.integers(0, 300), max_size=5))
def test_arbitrary_bytes_never_raise_anything_but_protocol_errors(data, cuts) -> None:
    try:
        decode_all(data, cuts, 1000)
    except ProtocolError as exc:
        assert exc.code in ("bad_record", "too_large")


# --- negotiation ------------------------------------------------------------------------------


def test_offer_and_parse() -> None:
    offer = offer_ws_extensions(1024 * 1024)
    assert offer == [("anpx-extensions", "flow=1048576, ws=1")]
    assert parse_extensions(offer) == 1024 * 1024  # the flow parser still reads the window
    assert parse_ws_extension(offer) == 1
    assert offer_ws_extensions(MIN_WS_WINDOW - 1) == [("anpx-extensions", "flow=131071")]
    assert offer_ws_extensions(None) == []
    assert offer_ws_extensions(MIN_WS_WINDOW, ws=False) == [("anpx-extensions", "flow=131072")]


@pytest.mark.parametrize(
    "value", ["flow=1", "ws", "ws=", "ws=2", "ws=01x", "ws=\uff11", "ws=1000", "wss=1", "ws=-1"]
)
def test_unusable_ws_values_mean_no_extension(value: str) -> None:
    assert parse_ws_extension([("ANPX-Extensions", value)]) is None


def test_ws_is_in_effect_only_with_both_windows_large_enough() -> None:
    peer = [("anpx-extensions", f"flow={MIN_WS_WINDOW}, ws=1")]
    assert ws_in_effect(MIN_WS_WINDOW, MIN_WS_WINDOW, peer)
    assert not ws_in_effect(MIN_WS_WINDOW - 1, MIN_WS_WINDOW, peer)
    assert not ws_in_effect(MIN_WS_WINDOW, MIN_WS_WINDOW - 1, peer)
    assert not ws_in_effect(None, MIN_WS_WINDOW, peer)
    assert not ws_in_effect(MIN_WS_WINDOW, None, peer)
    assert not ws_in_effect(MIN_WS_WINDOW, MIN_WS_WINDOW, [("anpx-extensions", "flow=131072")])
    assert not ws_in_effect(MIN_WS_WINDOW, MIN_WS_WINDOW, [])  # a v1 peer


# --- heads --------------------------------------------------------------------------------------


def test_open_head_drops_hop_fields_and_marks_the_upgrade() -> None:
    client = [
        ("host", "app.test"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ("sec-websocket-extensions", "permessage-deflate"),
        ("sec-websocket-version", "13"),
        ("sec-websocket-protocol", "chat, superchat"),
        ("cookie", "a=1"),
    ]
    head = open_head("/chat?room=1", client, subprotocols_of(client))
    assert head == RequestHead(
        "GET",
        "/chat?room=1",
        [
            ("host", "app.test"),
            ("cookie", "a=1"),
            ("connection", "upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-version", "13"),
            ("sec-websocket-protocol", "chat, superchat"),
        ],
    )
    assert is_open_head(head)
    assert not is_open_head(RequestHead("POST", "/", head.headers))
    assert not is_open_head(RequestHead("GET", "/", [("host", "x")]))


def test_subprotocols_of_several_fields() -> None:
    headers = [("Sec-WebSocket-Protocol", "a, b"), ("sec-websocket-protocol", " c ,,")]
    assert subprotocols_of(headers) == ["a", "b", "c"]


def test_accept_and_deny_heads() -> None:
    head = accept_head(
        "chat", [("set-cookie", "s=1"), ("upgrade", "x"), ("sec-websocket-accept", "y")]
    )
    assert (head.status, head.headers) == (
        101,
        [("set-cookie", "s=1"), ("sec-websocket-protocol", "chat")],
    )
    assert accept_head(None).headers == []
    start, body, _end = deny_ops(503, "full")
    assert start.head.status == 503  # type: ignore[union-attr]
    assert body.data == b"full\n"  # type: ignore[union-attr]
