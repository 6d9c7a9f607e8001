"""The receiver's timers and signals, sans IO and in fake time: reconnect backoff (doubling,
injected jitter, cap, giving up), keepalive deadlines, drain (contract of issue 13)."""

from __future__ import annotations

import json

import pytest
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, BytesMessage, Request, TextMessage

from anpx_core import messages as M
from anpx_core.contract import Signal
from anpx_core.receiver import MAX_RECONNECT_DELAY, ReceiverCore, ReceiverSettings
from anpx_core.websocket import WsLimits

URL = "ws://gw.example:8765/"


def core_with(jitter: float = 0.5, **settings) -> ReceiverCore:
    return ReceiverCore(ReceiverSettings(gateway_urls=[URL], jitter=lambda: jitter, **settings))


def attempts(core: ReceiverCore, count: int = 12) -> tuple[list[float], set]:
    """Fail every connection attempt at once; run the timer exactly at each deadline.
    Returns the delays the core chose and every signal it raised."""
    now, delays, signals = 0.0, [], set()
    core.start(now)
    requests = core.pop_connects()
    for _ in range(count):
        if not requests:
            break
        core.connect_failed(requests[0].cid, now, "connection refused")
        signals |= {k for k in core.pop_wakeups() if isinstance(k, Signal)}
        retry_at = core.next_deadline()
        if retry_at is None:
            break
        delays.append(retry_at - now)
        core.handle_timer(retry_at - 1e-6)  # a hair early: nothing happens
        assert core.pop_connects() == [] and core.next_deadline() == retry_at
        now = retry_at
        core.handle_timer(now)  # exactly at the deadline: the next attempt
        requests = core.pop_connects()
        assert len(requests) == 1 and core.next_deadline() is None
    return delays, signals


@pytest.mark.parametrize(("jitter", "factor"), [(0.0, 0.5), (0.5, 1.0), (0.999, 1.499)])
def test_backoff_fires_at_retry_at_doubling_within_the_jitter_bounds(jitter, factor):
    delays, signals = attempts(core_with(jitter, reconnect_delay=1.0))
    expected = [min(2.0**i, MAX_RECONNECT_DELAY) * factor for i in range(len(delays))]
    assert delays == pytest.approx(expected, rel=1e-9)
    assert MAX_RECONNECT_DELAY * 0.5 <= max(delays) <= MAX_RECONNECT_DELAY * 1.5
    assert len(delays) == 12  # forever by default: it kept trying
    assert Signal.TIMER in signals and Signal.GAVE_UP not in signals


def test_the_jitter_source_is_asked_once_per_retry():
    drawn = iter([0.0, 0.999, 0.25])
    core = ReceiverCore(ReceiverSettings(gateway_urls=[URL], jitter=lambda: next(drawn)))
    delays, _signals = attempts(core, count=3)
    assert delays == pytest.approx([0.5, 2 * 1.499, 4 * 0.75])


def test_gives_up_after_max_reconnect_attempts_with_a_signal():
    core = core_with(reconnect_delay=0.1, max_reconnect_attempts=3)
    delays, signals = attempts(core)
    assert len(delays) == 3  # the first attempt, then three more, then no more
    assert Signal.GAVE_UP in signals
    assert core.given_up and "connection refused" in core.last_error
    assert core.pop_connects() == [] and core.next_deadline() is None


def test_reconnect_disabled_gives_up_after_the_first_failure():
    core = core_with(reconnect_enabled=False)
    delays, signals = attempts(core)
    assert delays == [] and core.given_up and Signal.GAVE_UP in signals


def test_one_gateway_given_up_is_not_giving_up():
    settings = ReceiverSettings(
        gateway_urls=[URL, "ws://other.example/"], max_reconnect_attempts=1, reconnect_delay=1
    )
    core = ReceiverCore(settings)
    core.start(0.0)
    first, second = core.pop_connects()
    core.connect_failed(first.cid, 0.0, "refused")
    core.handle_timer(1.0)
    [again] = core.pop_connects()
    core.connect_failed(again.cid, 1.0, "refused")  # the first gateway is given up on
    assert not core.given_up and Signal.GAVE_UP not in core.pop_wakeups()
    core.connect_failed(second.cid, 1.0, "refused")
    core.handle_timer(core.next_deadline())
    [last] = core.pop_connects()
    core.connect_failed(last.cid, 3.0, "refused")
    assert core.given_up and Signal.GAVE_UP in core.pop_wakeups()


# --- an accepted tunnel -----------------------------------------------------------------------


def open_tunnel(core: ReceiverCore, now: float, *, v1: bool = False) -> tuple[int, WSConnection]:
    """Answer the core's pending gateway connection with a WebSocket 101 (anpx or v1)."""
    [request] = core.pop_connects()
    cid = request.cid
    core.connected(cid, now)
    gateway = WSConnection(ConnectionType.SERVER)
    gateway.receive_data(core.take_output(cid)[0])
    core.written(cid, now)
    assert any(isinstance(e, Request) for e in gateway.events())
    extra = [] if v1 else [(b"anpx-extensions", b"flow=1048576")]
    core.receive(cid, gateway.send(AcceptConnection(extra_headers=extra)), now)
    assert core.connected_links == 1
    return cid, gateway


def json_pings(core: ReceiverCore, cid: int, gateway: WSConnection) -> int:
    gateway.receive_data(core.take_output(cid)[0])
    return sum(
        isinstance(e, TextMessage) and json.loads(e.data).get("type") == "ping"
        for e in gateway.events()
    )


def test_a_successful_handshake_resets_the_backoff():
    core = core_with()
    core.start(0.0)
    for _ in range(2):  # two failures: the next delay would be 4 s
        [request] = core.pop_connects()
        core.connect_failed(request.cid, core.next_deadline() or 0.0, "refused")
        core.handle_timer(core.next_deadline())
    cid, _gateway = open_tunnel(core, 3.0)
    core.closed(cid, 10.0)  # then the tunnel drops
    assert core.next_deadline() == pytest.approx(10.0 + 1.0)  # back to reconnect_delay


def test_an_idle_receivers_next_deadline_is_its_next_ping():
    core = core_with(ws=WsLimits(ping_interval=30.0, ping_timeout=10.0, handshake_timeout=5.0))
    core.start(100.0)
    cid, gateway = open_tunnel(core, 100.0)
    assert core.next_deadline() == 130.0  # nothing else to do until the ping
    core.handle_timer(129.999)
    assert json_pings(core, cid, gateway) == 0
    core.handle_timer(130.0)
    assert json_pings(core, cid, gateway) == 1
    assert core.next_deadline() == 140.0  # the ping's answer is due within ping_timeout
    core.receive(cid, gateway.send(TextMessage(data='{"type":"pong"}')), 131.0)
    assert core.next_deadline() == 160.0  # answered: the next ping


def test_a_v1_gateway_gets_json_pings_every_v1_ping_interval():
    core = core_with(ws=WsLimits(ping_interval=30.0, ping_timeout=0), v1_ping_interval=5.0)
    core.start(0.0)
    cid, gateway = open_tunnel(core, 0.0, v1=True)
    times = []
    while (deadline := core.next_deadline()) is not None and deadline <= 21.0:
        core.handle_timer(deadline)
        if json_pings(core, cid, gateway):
            times.append(deadline)
    assert times == [5.0, 10.0, 15.0, 20.0]


def test_a_handshake_that_never_comes_times_out_at_its_deadline():
    core = core_with(ws=WsLimits(handshake_timeout=7.0), reconnect_delay=2.0)
    core.start(0.0)
    [request] = core.pop_connects()
    core.connected(request.cid, 1.0)
    core.take_output(request.cid)
    assert core.next_deadline() == 8.0
    core.handle_timer(8.0)
    assert core.take_output(request.cid) == (b"", True)  # the driver closes the socket
    core.closed(request.cid, 8.0)
    assert core.next_deadline() == 10.0 and "handshake timeout" in core.last_error


def test_drained_is_signalled_when_the_last_request_ends():
    core = core_with()
    core.start(0.0)
    cid, gateway = open_tunnel(core, 0.0)
    request = M.Request("r1", "GET", "/", [("host", "gw")], b"")
    for frame in M.encode_message(request):
        core.receive(cid, gateway.send(BytesMessage(data=frame)), 1.0)
    [(call_id, scope)] = core.pop_app_calls()
    assert scope["path"] == "/" and core.in_flight == 1
    core.begin_drain()
    assert Signal.DRAINED not in core.pop_wakeups()
    core.asgi_send(call_id, {"type": "http.response.start", "status": 204}, 2.0)
    core.asgi_send(call_id, {"type": "http.response.body"}, 2.0)
    assert Signal.DRAINED not in core.pop_wakeups()  # the app has not returned yet
    core.app_finished(call_id, None, 2.0)
    assert core.in_flight == 0 and Signal.DRAINED in core.pop_wakeups()


def test_drained_at_once_when_nothing_is_in_flight_and_no_reconnect_after():
    core = core_with()
    core.start(0.0)
    cid, _gateway = open_tunnel(core, 0.0)
    core.begin_drain()
    assert Signal.DRAINED in core.pop_wakeups()
    core.close()
    core.closed(cid, 1.0)
    assert core.next_deadline() is None and core.pop_connects() == []


def test_a_queued_head_is_due_now_and_flushed_by_the_timer():
    core = core_with()
    core.start(0.0)
    cid, gateway = open_tunnel(core, 0.0)
    for frame in M.encode_message(M.Request("r1", "GET", "/", [("host", "gw")], b"")):
        core.receive(cid, gateway.send(BytesMessage(data=frame)), 1.0)
    [(call_id, _scope)] = core.pop_app_calls()
    core.pop_wakeups()
    core.take_output(cid)
    core.asgi_send(call_id, {"type": "http.response.start", "status": 200}, 2.0)
    assert Signal.TIMER in core.pop_wakeups() and core.next_deadline() == 2.0
    assert core.take_output(cid)[0] == b""  # held for its first body part...
    core.handle_timer(2.0)
    data, _close = core.take_output(cid)
    gateway.receive_data(data)
    frames = [e.data for e in gateway.events() if isinstance(e, BytesMessage)]
    decoder = M.MessageDecoder()
    events = [ev for frame in frames for ev in decoder.receive_bytes(frame)]
    assert any(isinstance(ev, M.HeadReceived) for ev in events)  # ...until the timer ran


# --- a gateway that accepts the upgrade, then refuses the DID (4003) -----------------------


def _did_refusing_pair(max_attempts: int = 100):
    """A receiver signing as alice and, in memory, a gateway core that only allows bob."""
    pytest.importorskip("cryptography")
    import os

    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    from anpx_core.didwba import DidWbaClient, DidWbaServer, DocumentCache
    from anpx_core.gateway import GatewayCore, GatewaySettings
    from anpx_host.didfiles import make_document

    alice, alice_pem = make_document("did:wba:agents.example.com:alice")
    bob = make_document("did:wba:agents.example.com:bob")[0]
    cache = DocumentCache({alice["id"]: alice, bob["id"]: bob}, fetch=False)
    server = DidWbaServer(
        cache, ["gw.example"], allowed_dids=[bob["id"]], max_attempts=max_attempts
    )
    gateway = GatewayCore(GatewaySettings(auth=server))
    signer = DidWbaClient(alice, load_pem_private_key(alice_pem, None), nonce_source=os.urandom)
    receiver = ReceiverCore(
        ReceiverSettings(
            gateway_urls=["ws://gw.example:8765/"],
            auth=signer,
            reconnect_delay=1.0,
            jitter=lambda: 0.5,  # no jitter: delays are reconnect_delay * 2**n
        ),
    )
    return gateway, receiver


def _attempt(gateway, receiver, now: float) -> None:
    """One connection, carried byte for byte between the two cores until both close it."""
    [request] = receiver.pop_connects()
    receiver.connected(request.cid, now)
    gcid = gateway.open_tunnel(now, ("192.0.2.1", 40000))
    for _ in range(20):
        up, _ = receiver.take_output(request.cid)
        receiver.written(request.cid, now)
        if up:
            gateway.receive(gcid, up, now)
        down, gateway_done = gateway.take_output(gcid)
        gateway.written(gcid, now)
        if down:
            receiver.receive(request.cid, down, now)
        if not up and not down and gateway_done:
            break
    gateway.closed(gcid, now)
    receiver.closed(request.cid, now)


def test_a_did_refusal_is_a_failed_attempt_backed_off_and_logged_once(caplog):
    import logging

    caplog.set_level(logging.INFO, "anpx")
    gateway, receiver = _did_refusing_pair()
    now, delays = 1000.0, []
    receiver.start(now, 1_800_000_000.0)
    gateway.set_wall_clock(now, 1_800_000_000.0)
    for _ in range(5):
        _attempt(gateway, receiver, now)
        retry_at = receiver.next_deadline()  # idle: the next attempt
        assert retry_at is not None
        delays.append(retry_at - now)
        now = retry_at
        receiver.handle_timer(now)
    assert delays == pytest.approx([1.0, 2.0, 4.0, 8.0, 16.0])  # not once a second
    assert gateway.stats.auth_failures == 5 and gateway.receivers == []
    refusals = [r for r in caplog.records if "refused our DID" in r.getMessage()]
    warnings = [r for r in refusals if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "4003 DID authentication failed" in warnings[0].getMessage()
    assert "allowed_dids" in warnings[0].getMessage()
    assert "refused our DID" in receiver.last_error
    assert receiver.connected_links == 0


def test_a_did_refusal_counts_towards_max_reconnect_attempts():
    gateway, receiver = _did_refusing_pair()
    receiver.settings.max_reconnect_attempts = 2
    now = 0.0
    receiver.start(now, 1_800_000_000.0)
    gateway.set_wall_clock(now, 1_800_000_000.0)
    for _ in range(3):
        _attempt(gateway, receiver, now)
        retry_at = receiver.next_deadline()
        if retry_at is None:
            break
        now = retry_at
        receiver.handle_timer(now)
    assert receiver.given_up and receiver.pop_connects() == []
