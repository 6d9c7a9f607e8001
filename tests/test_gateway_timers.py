"""The gateway's deadlines in fake time: timers fire when due (not on a polling tick),
an idle gateway asks to be woken only at its earliest deadline, and the core says when
that deadline moved earlier (Signal.TIMER) and when a drain is done (Signal.DRAINED).

The receiver side of the tunnel is wsproto (an independent WebSocket implementation);
time is whatever the test passes, the driver's timer task is the loop "run handle_timer
at next_deadline()".
"""

from __future__ import annotations

import random

import h11
from hypothesis import given, settings
from hypothesis import strategies as st
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, Ping, Request

from anpx_core.contract import Signal
from anpx_core.gateway import GatewayCore, GatewaySettings
from anpx_core.http1 import FrontLimits
from anpx_core.timers import Deadlines
from anpx_core.websocket import WsLimits

GET = b"GET /slow HTTP/1.1\r\nHost: gw.test\r\n\r\n"


def flush(core: GatewayCore, cid: int, now: float) -> bytes:
    """What a driver does after a call: write everything the connection has queued."""
    out = b""
    while True:
        data, _close = core.take_output(cid)
        if not data:
            return out
        out += data
        core.written(cid, now)


class Receiver:
    """A receiver's end of one tunnel, on wsproto: handshake, then pongs for pings."""

    def __init__(self, core: GatewayCore, now: float) -> None:
        self.core = core
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.cid = core.open_tunnel(now, ("192.0.2.7", 40000))
        request = Request(
            host="gw.test", target="/", extra_headers=[(b"anpx-extensions", b"flow=65536")]
        )
        core.receive(self.cid, self.ws.send(request), now)
        self.accepted = any(isinstance(e, AcceptConnection) for e in self.pump(now))

    def pump(self, now: float) -> list[object]:
        self.ws.receive_data(flush(self.core, self.cid, now))
        events = list(self.ws.events())
        for event in events:
            if isinstance(event, Ping):
                self.core.receive(self.cid, self.ws.send(event.response()), now)
        return events


def test_a_30s_response_timeout_fires_at_30s_not_at_a_tick():
    core = GatewayCore(GatewaySettings(timeout=30.0, ws=WsLimits(ping_interval=7.0)))
    rx = Receiver(core, 0.0)
    assert rx.accepted and core.receivers, "the tunnel is up"
    start = 1.0
    client = core.open_client(start, ("198.51.100.1", 50000), ("gw.test", 80))
    core.receive(client, GET, start)
    assert core.in_flight == 1
    parser = h11.Connection(h11.CLIENT)
    parser.send(h11.Request(method="GET", target="/slow", headers=[("Host", "gw.test")]))
    fired: list[float] = []
    now = start
    # The driver's timer task: sleep until next_deadline(), run handle_timer, repeat.
    for _ in range(100):
        rx.pump(now)  # the receiver answers the keepalive pings, never the request
        deadline = core.next_deadline()
        assert deadline is not None and deadline > now - 1e-9
        now = deadline
        core.handle_timer(now)
        answer = flush(core, client, now)
        if not answer:
            continue
        parser.receive_data(answer)
        event = parser.next_event()
        if isinstance(event, h11.Response):
            assert event.status_code == 504
            fired.append(now)
            break
    assert fired and abs(fired[0] - (start + 30.0)) < 0.005, fired
    assert core.in_flight == 0 and core.stats.timeouts == 1


def test_an_idle_gateway_sleeps_until_the_earliest_keepalive_expiry():
    core = GatewayCore(GatewaySettings(front=FrontLimits(keepalive_timeout=5.0)))
    clients = []
    for i in range(1000):
        now = 10.0 + i * 0.001
        cid = core.open_client(now, (f"10.0.{i // 250}.{i % 250 + 1}", 40000 + i), None)
        core.receive(cid, GET, now)  # no receiver: answered 503 at once, kept alive
        assert flush(core, cid, now).startswith(b"HTTP/1.1 503 ")
        clients.append(cid)
    core.pop_wakeups()
    earliest = 10.0 + 5.0
    assert core.next_deadline() == earliest  # the first connection's keep-alive expiry
    # woken early (a spurious wake-up): nothing happens, nothing is woken
    core.handle_timer(earliest - 0.5)
    assert core.pop_wakeups() == set()
    assert all(core.take_output(cid) == (b"", False) for cid in clients)
    assert core.next_deadline() == earliest
    # at the deadline exactly that connection closes; the next deadline is the second one's
    core.handle_timer(earliest)
    assert core.pop_wakeups() == {clients[0]}
    assert core.take_output(clients[0]) == (b"", True)
    assert core.take_output(clients[1]) == (b"", False)
    core.closed(clients[0], earliest)
    assert core.next_deadline() == 10.001 + 5.0


def test_a_deadline_moving_earlier_wakes_the_timer_task():
    core = GatewayCore(GatewaySettings(timeout=3.0, front=FrontLimits(keepalive_timeout=5.0)))
    rx = Receiver(core, 0.0)
    rx.pump(0.0)
    sleeping_until = core.next_deadline()  # the tunnel's keepalive ping, 30 s away
    assert sleeping_until is not None and sleeping_until > 3.0
    core.pop_wakeups()
    client = core.open_client(1.0, ("198.51.100.1", 50000), None)
    core.receive(client, GET, 1.0)  # arms the response timeout at 4.0: earlier
    assert Signal.TIMER in core.pop_wakeups()
    assert core.next_deadline() == 4.0
    core.receive(client, b"", 1.5)  # nothing moves earlier: no signal
    assert Signal.TIMER not in core.pop_wakeups()


def test_drained_is_signalled_once_nothing_is_in_flight():
    core = GatewayCore()
    rx = Receiver(core, 0.0)
    client = core.open_client(1.0, ("198.51.100.1", 50000), None)
    core.receive(client, GET, 1.0)
    core.pop_wakeups()
    core.begin_drain()
    assert core.in_flight == 1 and Signal.DRAINED not in core.pop_wakeups()
    core.receive(client, b"", 2.0)  # the client leaves: its stream is cancelled
    assert core.in_flight == 0 and Signal.DRAINED in core.pop_wakeups()
    rx.pump(2.0)


def test_request_ids_are_injected():
    ids = iter(["first-id", "second-id"])
    core = GatewayCore(GatewaySettings(new_request_id=lambda: next(ids)))
    cid = core.open_client(0.0, ("198.51.100.1", 50000), None)
    core.receive(cid, GET, 0.0)  # no receiver: the gateway answers with its own id
    assert b"request id: first-id" in flush(core, cid, 0.0)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 2**32), st.integers(1, 30))
def test_deadlines_match_a_plain_dict(seed: int, keys: int) -> None:
    """The heap (lazy deletion, re-queueing, rebuilds) answers like a dict scanned whole."""
    rng = random.Random(seed)
    heap: Deadlines[int] = Deadlines()
    ref: dict[int, float] = {}
    now = 0.0
    for _ in range(300):
        op, key = rng.random(), rng.randrange(keys)
        if op < 0.6:
            when = now + rng.uniform(0, 10) if rng.random() < 0.9 else None
            if key in ref and rng.random() < 0.3:  # re-armed at the time it has (the cache)
                when = ref[key]
            heap.set(key, when)
            if when is None:
                ref.pop(key, None)
            else:
                ref[key] = when
        elif op < 0.8:
            assert heap.next() == (min(ref.values()) if ref else None)
        else:
            now += rng.uniform(0, 3)
            due = sorted(k for k, w in ref.items() if w <= now)
            assert sorted(heap.pop_due(now)) == due
            for k in due:
                del ref[k]
        assert len(heap) == len(ref)
