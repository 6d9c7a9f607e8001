"""Property tests of the WebSocket session state machines, back to back (tests/ws_pair.py):
arbitrary messages, fragmentation, byte splits, pings, slow readers and windows, closed
from either side; every message arrives in order and both ends agree on the close."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from wsproto.events import CloseConnection, Message, Ping

from anpx_core.ws_relay import WsSettings
from anpx_core.wsstream import MIN_WS_WINDOW
from tests.ws_pair import RID, Pair

# a large message (over one 64 KiB record) is built, not drawn: drawing 70 KB is slow
payload = st.one_of(
    st.text(max_size=40),
    st.binary(max_size=40),
    st.integers(70_000, 70_100).map(lambda n: bytes(range(256)) * (n // 256) + b"\x07"),
)

action = st.one_of(
    st.tuples(
        st.just("client"), payload, st.integers(1, 3), st.lists(st.integers(0, 200), max_size=3)
    ),
    st.tuples(st.just("app"), payload),
    st.tuples(st.just("ping")),
    st.tuples(st.just("reads"), st.booleans()),
    st.tuples(st.just("app_reads"), st.booleans()),
)
ending = st.one_of(
    st.tuples(
        st.just("client_close"), st.sampled_from([1000, 1001, 3000, 4999]), st.text(max_size=10)
    ),
    st.tuples(st.just("app_close"), st.sampled_from([1000, 1011, 4000]), st.text(max_size=10)),
    st.tuples(st.just("client_eof")),
    st.tuples(st.just("drain")),
)


class Run:
    def __init__(self, window: int) -> None:
        self.pair = Pair(
            window=window, gateway_settings=WsSettings(ping_interval=0, idle_timeout=0)
        )
        self.pair.connect()
        self.call = self.pair.call
        assert self.call is not None
        self.app_got: list[Any] = []
        self.app_reads = True
        self.receive_all()
        self.call.send({"type": "websocket.accept"})
        self.pair.pump()
        self.client_sent: list[str | bytes] = []
        self.app_sent: list[str | bytes] = []

    def receive_all(self) -> None:
        assert self.call is not None
        while self.app_reads and (m := self.call.receive()) is not None:
            if self.app_got and self.app_got[-1]["type"] == "websocket.disconnect":
                break  # receive() repeats the disconnect from now on
            self.app_got.append(m)
            self.pair.pump()

    def client(self, data: str | bytes, pieces: int, cuts: list[int]) -> None:
        pair = self.pair
        gw = pair.gw
        assert gw is not None
        if not gw.wants_read:
            return  # the gateway stopped reading this client: it cannot send now
        step = max(1, len(data) // pieces)
        raw = b""
        for i in range(0, max(len(data), 1), step):
            part = data[i : i + step]
            raw += pair.client.send(Message(data=part, message_finished=i + step >= len(data)))
        points = sorted({c % (len(raw) + 1) for c in cuts})
        for a, b in zip([0, *points], [*points, len(raw)], strict=True):
            if a == b:
                continue  # b"" would be EOF
            gw.receive_data(raw[a:b], pair.now)
            pair.pump()
        self.client_sent.append(data)

    def app(self, data: str | bytes) -> None:
        assert self.call is not None
        if not self.pair.rs.writable(RID):
            return  # a driver's send() would wait here
        key = "text" if isinstance(data, str) else "bytes"
        self.call.send({"type": "websocket.send", key: data})
        self.pair.pump()
        self.app_sent.append(data)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(action, max_size=8), ending, st.sampled_from([MIN_WS_WINDOW, 1024 * 1024]))
def test_sessions_deliver_everything_and_agree_on_the_close(actions, end, window) -> None:
    run = Run(window)
    pair = run.pair
    for act in actions:
        kind = act[0]
        if kind == "client":
            run.client(act[1], act[2], act[3])
        elif kind == "app":
            run.app(act[1])
        elif kind == "ping":
            if pair.gw is not None and pair.gw.wants_read:
                pair.send(Ping(payload=b"hi"))
        elif kind == "reads":
            pair.client_reads = act[1]
            pair.pump()
        else:
            run.app_reads = act[1]
        run.receive_all()
    # everyone reads again: whatever was sent arrives, in order
    pair.client_reads = True
    run.app_reads = True
    pair.pump()
    run.receive_all()
    got = [m.get("text", m.get("bytes")) for m in run.app_got if m["type"] == "websocket.receive"]
    assert got == run.client_sent
    assert pair.messages() == run.app_sent
    assert run.call is not None and pair.gw is not None
    kind = end[0]
    if kind == "client_close":
        pair.send(CloseConnection(code=end[1], reason=end[2]))
        expect = (end[1], end[2])
    elif kind == "app_close":
        run.call.send({"type": "websocket.close", "code": end[1], "reason": end[2]})
        pair.pump()
        expect = (end[1], end[2])
    elif kind == "client_eof":
        pair.client_eof()
        expect = (1006, "connection closed without a Close frame")
    else:
        pair.gw.drain(pair.now)
        pair.pump()
        expect = (1001, "gateway shutting down")
    run.receive_all()
    disconnects = [m for m in run.app_got if m["type"] == "websocket.disconnect"]
    assert [(d["code"], d["reason"]) for d in disconnects] == [expect]
    close = pair.client_close()
    if kind == "client_close":
        assert close is not None and (close.code, close.reason) == (end[1], "")  # echo: the code
    elif kind != "client_eof":
        assert close is not None and (close.code, close.reason) == expect
    assert pair.gw.closed
    assert not pair.gs.has_stream(RID) and not pair.rs.has_stream(RID)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.tuples(payload, st.integers(1, 3)), max_size=6),
    st.sampled_from(["client", "service"]),
    st.sampled_from([1000, 3001, 4999]),
)
def test_forward_sessions_echo_everything_and_agree_on_the_close(messages, closer, code) -> None:
    from wsproto.events import CloseConnection as Close

    from tests.ws_pair import Service

    service = Service()
    pair = Pair(service=service, gateway_settings=WsSettings(ping_interval=0, idle_timeout=0))
    pair.connect()
    sent = []
    for data, pieces in messages:
        step = max(1, len(data) // pieces)
        for i in range(0, max(len(data), 1), step):
            pair.send(Message(data=data[i : i + step], message_finished=i + step >= len(data)))
        sent.append(data)
    assert pair.messages() == sent  # the service echoed each, in order
    if closer == "client":
        pair.send(CloseConnection(code=code, reason="c"))
        assert [(e.code, e.reason) for e in service.events if isinstance(e, Close)] == [(code, "c")]
    else:
        service.send(Close(code=code, reason="s"))
        pair.pump()
        close = pair.client_close()
        assert close is not None and (close.code, close.reason) == (code, "s")
    assert pair.gw is not None and pair.gw.closed
    assert pair.fwd is not None and pair.fwd.done
    assert not pair.gs.has_stream(RID) and not pair.rs.has_stream(RID)
