"""Hypothesis fuzzers over everything that parses bytes from the network.

Targets: the frame stream decoder, the message assembler, the gateway's HTTP front
(``HttpFront``) and the tunnel's WebSocket server (``WsServer``). Inputs are built from
each format's grammar and then mutated, split at random points and fed with a moving
clock. Two properties everywhere:

* no exception except the documented one (``ProtocolError`` for the codec; none at all
  for the front and the WebSocket layer, which report errors as events);
* no unbounded growth: every buffer stays within the limit that is meant to bound it.

Bounded and fast, so they run in CI; ``bench/fuzz/fuzz_frames.py`` is the long-running
coverage-guided harness (atheris) for the frame and message decoders. A crashing input it
finds is to be added here as a regression vector (about two million executions so far,
none found).
"""

from __future__ import annotations

import base64
import dataclasses
import itertools
import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import event as event_label
from hypothesis import strategies as st

from anpx_core import frames as F
from anpx_core import messages as M
from anpx_core.errors import ProtocolError
from anpx_core.http1 import (
    HOP_BY_HOP,
    ClientGone,
    FrontLimits,
    HttpFront,
    RequestData,
    RequestEnded,
    RequestFailed,
    RequestStarted,
)
from anpx_core.meta import RequestHead, ResponseHead, encode_request_meta, encode_response_meta
from anpx_core.tunnel import TunnelSession
from anpx_core.websocket import (
    BinaryReceived,
    Closed,
    ControlReceived,
    HandshakeRequested,
    WsLimits,
    WsServer,
)

from .hypothesis_profiles import examples

FUZZ = settings(
    max_examples=examples(250),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    """``data`` cut at the given offsets (taken modulo its length)."""
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points) if b > a]


@st.composite
def mutated(draw, data: bytes) -> bytes:
    """Flip, insert, delete or truncate a few bytes of ``data``."""
    buf = bytearray(data)
    for _ in range(draw(st.integers(0, 4))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        pos = draw(st.integers(0, max(len(buf) - 1, 0)))
        if op == "flip" and buf:
            buf[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "insert":
            buf[pos:pos] = draw(st.binary(min_size=1, max_size=4))
        elif op == "delete" and buf:
            del buf[pos]
        elif op == "truncate":
            del buf[pos:]
    return bytes(buf)


# --- frames: the stream decoder ------------------------------------------------------------------

TLV = st.tuples(
    st.sampled_from([0x01, 0x02, 0x03, 0x04, 0x0A, 0x0B, 0x0C, 0x00, 0x7F, 0xF0, 0xFF]),
    st.binary(max_size=40),
)
FRAME_BYTES = st.builds(
    F.encode_frame,
    st.sampled_from([F.TYPE_REQUEST, F.TYPE_RESPONSE, F.TYPE_ERROR, 0x03]),
    st.integers(0, 3),
    st.lists(TLV, max_size=4),
)


@FUZZ
@given(
    st.lists(
        st.one_of(FRAME_BYTES, FRAME_BYTES.flatmap(mutated), st.binary(max_size=30)), max_size=6
    ),
    st.lists(st.integers(0, 1 << 16), max_size=10),
    st.integers(F.HEADER_SIZE, 300),
)
def test_frame_stream_decoder(parts, cuts, max_frame_size):
    decoder = F.FrameDecoder(max_frame_size)
    error = None
    for piece in split(b"".join(parts), cuts):
        try:
            for frame in decoder.feed(piece):
                assert frame.type in F.FRAME_TYPES
                size = F.HEADER_SIZE + sum(5 + len(v) for _, v in frame.tlvs)
                assert size <= max_frame_size
        except ProtocolError as exc:
            if error is not None:
                assert exc is error  # after an error the stream stays failed, same error
            error = exc
            continue
        # at most one incomplete frame is held, and never more than the limit allows
        assert decoder.buffered < max_frame_size


# --- messages: the assembler -----------------------------------------------------------------------

REQUEST_META = encode_request_meta(RequestHead("GET", "/x?a=1", [("host", "h")]))
RESPONSE_META = encode_response_meta(ResponseHead(200, "OK", [("x", "y")]))
SMALL_LIMITS = M.Limits(
    max_frame_size=512, max_meta_size=200, max_partial_messages=3, max_headless_body=64
)


@st.composite
def message_frames(draw) -> bytes:
    """Well-framed frames whose message-level content is anything from valid to absurd."""
    ftype = draw(st.sampled_from([F.TYPE_REQUEST, F.TYPE_RESPONSE, F.TYPE_ERROR]))
    tlvs = []
    if draw(st.integers(0, 9)):
        tlvs.append((F.TAG_REQUEST_ID, draw(st.sampled_from([b"a", b"b", b"c", b"d", b"e", b""]))))
    chunked = draw(st.booleans())
    if chunked or draw(st.integers(0, 9)) == 0:
        tlvs.append((F.TAG_CHUNK_IDX, struct.pack(">I", draw(st.integers(0, 3)))))
    if draw(st.integers(0, 2)) == 0:
        tlvs.append((F.TAG_CHUNK_TOT, struct.pack(">I", draw(st.integers(0, 4)))))
    if draw(st.integers(0, 2)) == 0:
        tlvs.append((F.TAG_FINAL_CHUNK, draw(st.sampled_from([b"\x01", b"\x00", b""]))))
    meta = draw(st.sampled_from([None, None, REQUEST_META, RESPONSE_META, b"{}", b"[", b"x" * 300]))
    if meta is not None:
        tag = draw(st.sampled_from([F.TAG_HTTP_META, F.TAG_RESP_META]))
        tlvs.append((tag, meta))
    if draw(st.booleans()):
        tlvs.append((F.TAG_HTTP_BODY, draw(st.binary(max_size=40))))
    if draw(st.integers(0, 5)) == 0:
        tlvs.append(draw(TLV))
    tlvs = draw(st.permutations(tlvs)) if draw(st.integers(0, 4)) == 0 else tlvs
    return F.encode_frame(ftype, F.FLAG_CHUNKED if chunked else 0, tlvs)


@st.composite
def message_stream(draw) -> list[bytes]:
    """Whole messages (single or chunked, meta in any chunk) interleaved, then perturbed:
    frames dropped, repeated, swapped or replaced by odd ones, error frames inserted."""
    messages = []
    for rid in draw(st.lists(st.sampled_from(["a", "b", "c", "d", "e"]), max_size=6)):
        ftype = draw(st.sampled_from([F.TYPE_REQUEST, F.TYPE_RESPONSE]))
        meta_tlv = (
            (F.TAG_HTTP_META, REQUEST_META)
            if ftype == F.TYPE_REQUEST
            else (F.TAG_RESP_META, RESPONSE_META)
        )
        rid_tlv = (F.TAG_REQUEST_ID, rid.encode())
        bodies = draw(st.lists(st.binary(max_size=50), min_size=1, max_size=4))
        if len(bodies) == 1 and draw(st.booleans()):
            tlvs = [rid_tlv, meta_tlv] + ([(F.TAG_HTTP_BODY, bodies[0])] if bodies[0] else [])
            messages.append([F.encode_frame(ftype, 0, tlvs)])
            continue
        meta_at = draw(st.integers(0, len(bodies) - 1))  # the reference puts it last
        with_tot = draw(st.booleans())
        frames = []
        for idx, body in enumerate(bodies):
            tlvs = [rid_tlv, (F.TAG_CHUNK_IDX, struct.pack(">I", idx))]
            if with_tot:
                tlvs.append((F.TAG_CHUNK_TOT, struct.pack(">I", len(bodies))))
            if idx == meta_at:
                tlvs.append(meta_tlv)
            if body:
                tlvs.append((F.TAG_HTTP_BODY, body))
            if idx == len(bodies) - 1 and (not with_tot or draw(st.booleans())):
                tlvs.append((F.TAG_FINAL_CHUNK, b"\x01"))
            frames.append(F.encode_frame(ftype, F.FLAG_CHUNKED, tlvs))
        messages.append(frames)
    stream: list[bytes] = []
    while any(messages):
        queue = draw(st.sampled_from([m for m in messages if m]))
        stream.append(queue.pop(0))
    for _ in range(draw(st.integers(0, 3))):
        op = draw(st.sampled_from(["drop", "repeat", "swap", "odd", "error"]))
        pos = draw(st.integers(0, len(stream)))
        if op == "odd":
            stream.insert(pos, draw(message_frames()))
        elif op == "error":
            stream.insert(pos, M.encode_error("x", draw(st.sampled_from(["a", "b", None]))))
        elif stream:
            pos %= len(stream)
            if op == "drop":
                del stream[pos]
            elif op == "repeat":
                stream.insert(pos, stream[pos])
            else:
                other = draw(st.integers(0, len(stream) - 1))
                stream[pos], stream[other] = stream[other], stream[pos]
    return stream


@FUZZ
@given(st.one_of(message_stream(), message_stream(), st.lists(message_frames(), max_size=25)))
def test_message_assembler(wires):
    """Only ProtocolError; per stream Head -> Body* -> Complete; bounded partial state."""
    decoder = M.MessageDecoder(SMALL_LIMITS)
    state: dict[str, str] = {}  # request_id -> "head" while its message is open
    for wire in wires:
        try:
            events = decoder.receive_bytes(wire)
        except ProtocolError as exc:
            event_label(exc.code)
            if exc.request_id is not None:  # as the tunnel does: fail that stream only
                decoder.forget(exc.request_id)
                state.pop(exc.request_id, None)
            continue
        for event in events:
            event_label(type(event).__name__)
            if isinstance(event, M.ErrorReceived):
                state.pop(event.request_id, None)
            elif isinstance(event, M.HeadReceived):
                assert event.request_id not in state
                state[event.request_id] = "head"
            elif isinstance(event, M.BodyReceived):
                assert state.get(event.request_id) == "head" and event.data
            else:
                assert state.pop(event.request_id) == "head"
        limits = decoder.limits
        assert decoder.partial_messages <= limits.max_partial_messages
        held = [p.held_bytes for p in decoder._partials.values()]  # white box: the buffers
        assert all(h <= limits.max_headless_body for h in held)


def test_gateway_session_holds_nothing_for_streams_it_never_opened():
    class Ws:
        def send_binary(self, data: bytes) -> None:
            pass

        def send_control(self, message: dict) -> None:
            pass

    session = TunnelSession(Ws(), accepts=ResponseHead, local_window=None, peer_window=None)
    for i in range(50):
        rid = f"never-opened-{i}".encode()
        chunk = [(F.TAG_REQUEST_ID, rid), (F.TAG_CHUNK_IDX, struct.pack(">I", 0))]
        session.receive_binary(
            F.encode_frame(
                F.TYPE_RESPONSE, F.FLAG_CHUNKED, [*chunk, (F.TAG_HTTP_BODY, b"x" * 1000)]
            )
        )
    assert session._decoder.partial_messages == 0


# --- the gateway's HTTP front ----------------------------------------------------------------------

VALID_HEADER = st.tuples(
    st.sampled_from(["X-A", "Accept", "Connection", "Expect", "X-Forwarded-For", "Cookie", "TE"]),
    st.sampled_from(["1", "close", "keep-alive, X-A", "100-continue", "a=1; b=2", "trailers"]),
)
ODD_HEADER = st.tuples(
    st.sampled_from(
        ["Host", "Content-Length", "Transfer-Encoding", "Keep-Alive", "Bad Name", "", "Proxy-A"]
    ),
    st.sampled_from(["0", "5", "-1", "chunked", "gzip, chunked", "abc", " x "])
    | st.text(st.characters(min_codepoint=0, max_codepoint=255), max_size=8),
)


@st.composite
def http_request(draw) -> bytes:
    """Mostly valid requests (so the front gets past the head), sometimes odd ones."""
    odd = draw(st.integers(0, 3)) == 3  # hypothesis favours small numbers
    if odd:
        method = draw(st.sampled_from(["GET", "CONNECT", "G T", "", "get", "POST"]))
        target = draw(st.sampled_from(["/", "*", "http://x/y", "/%zz", "/\u00e9", "/a b"]))
        version = draw(st.sampled_from(["HTTP/1.1", "HTTP/1.0", "HTTP/2", "HTTP/1.1 x", ""]))
        headers = draw(st.lists(st.one_of(VALID_HEADER, ODD_HEADER), max_size=5))
    else:
        method = draw(st.sampled_from(["GET", "POST", "PUT", "HEAD", "OPTIONS"]))
        target = draw(st.sampled_from(["/", "/a?b=c", "/x/y%20z", "http://example.com/p"]))
        version = draw(st.sampled_from(["HTTP/1.1", "HTTP/1.1", "HTTP/1.0"]))
        headers = draw(st.lists(VALID_HEADER, max_size=4))
    eol = "\n" if draw(st.integers(0, 7)) == 7 else "\r\n"
    if not odd or draw(st.booleans()):
        headers.insert(draw(st.integers(0, len(headers))), ("Host", "example.com"))
    body = draw(st.binary(max_size=60))
    framing = draw(st.sampled_from(["length", "chunked", "none"]))
    if framing == "chunked":
        headers.append(("Transfer-Encoding", "chunked"))
        pieces = split(body, draw(st.lists(st.integers(0, 60), max_size=3)))
        body = b"".join(f"{len(p):x}\r\n".encode() + p + b"\r\n" for p in pieces) + b"0\r\n\r\n"
    elif framing == "length":
        headers.append(("Content-Length", str(len(body))))
    else:
        body = b""
    head = f"{method} {target} {version}{eol}" + "".join(f"{n}: {v}{eol}" for n, v in headers)
    return head.encode("latin-1") + eol.encode() + body


@FUZZ
@given(
    st.lists(
        st.one_of(http_request(), http_request(), http_request().flatmap(mutated)),
        min_size=1,
        max_size=4,
    ),
    st.lists(st.integers(0, 1 << 12), max_size=12),
    st.lists(st.sampled_from(["after_end", "error_at_start", "respond_early"]), min_size=1),
    st.lists(st.sampled_from([0.0, 0.0, 0.01, 0.3, 3.0]), min_size=1),
    st.builds(
        FrontLimits,
        max_header_bytes=st.sampled_from([4000, 1000, 150, 60]),
        max_body_bytes=st.sampled_from([10_000, 100, 10, 0]),
        header_timeout=st.just(4.0),
        keepalive_timeout=st.just(1.0),
    ),
)
def test_http_front(requests, cuts, modes, steps, limits):
    front = HttpFront(limits, 0.0, client=("198.51.100.7", 5000), server=("0.0.0.0", 8080))
    now, answered, piece_max = 0.0, 0, 0
    body = 0  # body bytes of the current request
    active = failed = False

    def respond(mode: str) -> None:
        nonlocal active
        if mode == "error_at_start":
            front.send_error(503, "busy", [("retry-after", "1")])
        else:
            front.send_response(ResponseHead(200, "OK", [("content-length", "2")]))
            front.send_data(b"ok")
            front.end_response()
        active = False

    def handle(events: list) -> None:
        nonlocal body, active, answered, failed
        for event in events:
            event_label(type(event).__name__ + getattr(event, "reason", "")[:25])
            assert not failed, f"{event} after the front failed"
            if isinstance(event, RequestStarted):
                assert not active
                active, body = True, 0
                for name, _ in event.head.headers:
                    assert name == name.lower() and name not in HOP_BY_HOP
                mode = modes[answered % len(modes)]
                answered += 1
                if mode != "after_end":
                    respond(mode)
            elif isinstance(event, RequestData):
                body += len(event.data)
                assert body <= limits.max_body_bytes
            elif isinstance(event, RequestEnded):
                if active:
                    respond("after_end")
            else:
                assert isinstance(event, (RequestFailed, ClientGone)), event
                active, failed = False, True
        front.data_to_send()

    for i, piece in enumerate(split(b"".join(requests), cuts)):
        piece_max = max(piece_max, len(piece))
        stalled = 0
        while not front.closed and not front.wants_read:
            now += 0.01
            handle(front.tick(now))
            stalled += 1
            assert stalled < 5, "the front neither reads nor closes"
        if front.closed:
            break
        now += steps[i % len(steps)]
        handle(front.receive_data(piece, now))
        assert len(front._inbuf) <= limits.max_header_bytes + piece_max  # white box
    for _ in range(3):
        now += 1.5
        handle(front.tick(now))
    handle(front.receive_data(b"", now))
    assert front.closed


# --- the tunnel's WebSocket server -------------------------------------------------------------------

KEY = base64.b64encode(b"0123456789abcdef").decode()
UPGRADE_HEADERS = [
    ("Host", "gw.example:8765"),
    ("Upgrade", "websocket"),
    ("Connection", "Upgrade"),
    ("Sec-WebSocket-Key", KEY),
    ("Sec-WebSocket-Version", "13"),
]


@st.composite
def upgrade_request(draw) -> bytes:
    """Mostly valid upgrades (so frames get through), sometimes broken ones."""
    headers = [(n.lower() if draw(st.booleans()) else n, v) for n, v in UPGRADE_HEADERS]
    headers = draw(st.permutations(headers))
    headers += draw(
        st.lists(
            st.tuples(
                st.sampled_from(["anpx-auth-nonce", "anpx-extensions", "X-Long", "Origin"]),
                st.sampled_from(["8", "", "a" * 50, "flow=65536"]),
            ),
            max_size=3,
        )
    )
    method, target = "GET", draw(st.sampled_from(["/", "/tunnel?x=1"]))
    if draw(st.integers(0, 3)) == 3:  # broken: drop a required field, add a conflicting one
        headers = [h for h in headers if draw(st.integers(0, 4))]
        headers += draw(
            st.lists(
                st.tuples(
                    st.sampled_from(["Sec-WebSocket-Version", "Host", "Upgrade"]),
                    st.sampled_from(["8", "\u00e9", "h2c"]),
                ),
                max_size=2,
            )
        )
        method = draw(st.sampled_from(["GET", "POST"]))
        target = draw(st.sampled_from(["/", "*", "/\u00e9"]))
    head = f"{method} {target} HTTP/1.1\r\n" + "".join(f"{n}: {v}\r\n" for n, v in headers)
    return head.encode("latin-1") + b"\r\n"


@st.composite
def ws_frame(draw) -> bytes:
    """One client frame: mostly valid (binary, text, ping, pong, close), sometimes any
    opcode, FIN and RSV bits, unmasked, or a non-minimal length encoding."""
    odd = draw(st.integers(0, 3)) == 3
    opcode = draw(
        st.sampled_from([0x2, 0x1, 0x2, 0x9, 0xA, 0x8] + ([0x0, 0x3, 0xB] if odd else []))
    )
    fin = not odd or draw(st.booleans()) or opcode >= 0x8
    rsv = draw(st.sampled_from([0, 0x40, 0x10])) if odd else 0
    if opcode == 0x1:
        payload = draw(st.sampled_from([b'{"type":"x"}', b'{"type":"ping"}', b"nope", b"\xff"]))
    elif opcode == 0x8:
        payload = draw(st.sampled_from([b"\x03\xe8", b"", b"\x03\xe8bye", b"\x00", b"\x03\xed"]))
    else:
        payload = draw(st.binary(max_size=80 if opcode == 0x2 else 20))
    length = len(payload)
    encoding = "short" if length < 126 else "16"
    if odd:
        encoding = draw(st.sampled_from([encoding, "16", "64"]))
    masked = not odd or draw(st.booleans())  # clients must mask
    bit = 0x80 if masked else 0
    head = bytes([(0x80 if fin else 0) | rsv | opcode])
    if encoding == "short":
        head += bytes([bit | length])
    elif encoding == "16":
        head += bytes([bit | 126]) + struct.pack(">H", length)
    else:
        head += bytes([bit | 127]) + struct.pack(">Q", length)
    if masked:
        mask = draw(st.binary(min_size=4, max_size=4))
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        head += mask
    return head + payload


WS_LIMITS = st.builds(
    WsLimits,
    max_message_size=st.sampled_from([1000, 60, 20, 1]),
    max_handshake_size=st.sampled_from([16 * 1024, 300, 100]),
    ping_interval=st.sampled_from([0.0, 1.0]),
    ping_timeout=st.just(1.0),
    close_timeout=st.just(1.0),
    handshake_timeout=st.sampled_from([0.0, 5.0]),
)
FRAMES = st.lists(st.one_of(ws_frame(), ws_frame(), ws_frame().flatmap(mutated)), max_size=8)
CUTS = st.lists(st.integers(0, 1 << 12), max_size=10)
STEPS = st.lists(st.sampled_from([0.0, 0.01, 0.01, 2.0, 30.0]), min_size=1)


@FUZZ
@given(
    st.one_of(upgrade_request(), upgrade_request(), upgrade_request().flatmap(mutated)),
    FRAMES,
    CUTS,
    st.sampled_from(["accept", "reject"]),
    STEPS,
    WS_LIMITS,
)
def test_websocket_handshake(request, ws_frames, cuts, decision, steps, limits):
    run_websocket_server(request, ws_frames, cuts, decision, steps, limits)


VALID_UPGRADE = (
    "GET /tunnel HTTP/1.1\r\n" + "".join(f"{n}: {v}\r\n" for n, v in UPGRADE_HEADERS) + "\r\n"
).encode()


@FUZZ
@given(FRAMES, CUTS, STEPS, WS_LIMITS)
def test_websocket_frames_after_the_handshake(ws_frames, cuts, steps, limits):
    limits = dataclasses.replace(limits, max_handshake_size=16 * 1024, handshake_timeout=0.0)
    run_websocket_server(VALID_UPGRADE, ws_frames, cuts, "accept", steps, limits)


def run_websocket_server(request, ws_frames, cuts, decision, steps, limits) -> None:
    """Feed an upgrade and frames in pieces; check events and buffers (see module doc)."""
    ws = WsServer(limits, 0.0)
    now, piece_max = 0.0, 0
    seen = {"handshake": 0, "closed": 0}

    def handle(events: list) -> None:
        for event in events:
            event_label(type(event).__name__ + getattr(event, "reason", "")[:25])
            if isinstance(event, HandshakeRequested):
                seen["handshake"] += 1
                assert seen["handshake"] == 1 and seen["closed"] == 0
                if decision == "accept":
                    ws.accept([("anpx-auth-proof", "00")])
                else:
                    ws.reject(401, "", [("retry-after", "1")])
            elif isinstance(event, Closed):
                seen["closed"] += 1
                assert seen["closed"] == 1
            else:
                assert isinstance(event, (BinaryReceived, ControlReceived)), event
                assert seen["closed"] == 0 and seen["handshake"] == 1 and decision == "accept"
                if isinstance(event, BinaryReceived):
                    assert len(event.data) <= limits.max_message_size
        out = ws.data_to_send()
        if out and (seen["handshake"] == 0 or decision == "reject"):
            assert out.startswith(b"HTTP/1.1 ")

    for i, piece in enumerate(split(request + b"".join(ws_frames), cuts)):
        piece_max = max(piece_max, len(piece))
        now += steps[i % len(steps)]
        handle(ws.receive_data(piece, now))
        # white box: what is buffered stays within the limits meant to bound it
        assert len(ws._head) <= limits.max_handshake_size + piece_max
        assert len(ws._early) <= limits.max_handshake_size + piece_max
        assert ws._size <= limits.max_message_size
        if ws.closed:
            break
    for _ in range(4):
        now += 10.0
        handle(ws.tick(now))
    handle(ws.receive_data(b"", now))
    assert ws.closed and seen["closed"] == 1
