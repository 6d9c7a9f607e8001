"""Stream resets are logged once per side with their cause; an app that learns of a reset
at its next send is not blamed with a traceback (issue 14, items 4 and 7)."""

from __future__ import annotations

import itertools
import logging

import httpx
import pytest
from wsproto.events import BytesMessage

from anpx_core import frames as F
from anpx_core import messages as M
from anpx_core.gateway import GatewaySettings
from anpx_core.receiver import ReceiverSettings

from .deploy import DRIVERS, start_gateway, start_receiver, wait_until
from .test_limits import FakeGateway


class LateApp:
    """Sends its whole body with more_body=True, waits for http.disconnect, then sends the
    final empty part (as the WSGI bridge does), which raises ClientDisconnected."""

    def __init__(self) -> None:
        self.raised: list[BaseException] = []

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/slow":  # answers only after the gateway gave up (504)
            while (await receive())["type"] != "http.disconnect":
                pass
        try:
            headers = [(b"content-length", b"2")]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": b"ok", "more_body": True})
            while (await receive())["type"] != "http.disconnect":
                pass
            await send({"type": "http.response.body", "body": b""})
        except BaseException as exc:
            self.raised.append(exc)
            raise


def _records(caplog, name: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name.startswith(name)]


@pytest.mark.parametrize("driver", DRIVERS)
def test_client_gone_after_full_body_is_no_app_failure(driver, caplog):
    caplog.set_level(logging.DEBUG, logger="anpx")
    app = LateApp()
    gateway = start_gateway(driver, GatewaySettings(), admin=False)
    ports = gateway.obj.ports
    settings = ReceiverSettings(gateway_urls=[f"ws://127.0.0.1:{ports.tunnel}/"])
    receiver = start_receiver(driver, settings, app)
    try:
        wait_until(lambda: len(gateway.obj.core.receivers) > 0)
        with httpx.Client() as client:  # reads the 2 bytes, then closes its connection
            assert client.get(f"http://127.0.0.1:{ports.http}/").content == b"ok"
        wait_until(lambda: app.raised)
        wait_until(lambda: any("app stopped" in r.getMessage() for r in caplog.records))
    finally:
        receiver.stop()
        gateway.stop()
    assert type(app.raised[0]).__name__ == "ClientDisconnected"
    failures = [r for r in caplog.records if "app failed" in r.getMessage()]
    assert failures == []
    assert not [r for r in caplog.records if r.exc_info and r.levelno >= logging.ERROR]


@pytest.mark.parametrize("driver", DRIVERS)
def test_gateway_timeout_reset_is_logged_once_on_each_side(driver, caplog):
    caplog.set_level(logging.DEBUG, logger="anpx")
    app = LateApp()
    gateway = start_gateway(driver, GatewaySettings(timeout=0.3), admin=False)
    ports = gateway.obj.ports
    settings = ReceiverSettings(gateway_urls=[f"ws://127.0.0.1:{ports.tunnel}/"])
    receiver = start_receiver(driver, settings, app)
    try:
        wait_until(lambda: len(gateway.obj.core.receivers) > 0)
        r = httpx.get(f"http://127.0.0.1:{ports.http}/slow", timeout=10)
        assert r.status_code == 504
        wait_until(lambda: app.raised)
    finally:
        receiver.stop()
        gateway.stop()
    lines = [r.getMessage() for r in _records(caplog, "anpx.tunnel")]
    cancelled = [m for m in lines if "cancelled: gateway timeout" in m]
    reset = [m for m in lines if "reset by peer: gateway timeout" in m]
    assert len(cancelled) == 1 and len(reset) == 1, lines
    assert not [r for r in caplog.records if "app failed" in r.getMessage()]


@pytest.mark.parametrize("driver", DRIVERS)
def test_a_bad_frame_reset_is_logged_with_its_code_and_sent_to_the_peer(driver, caplog):
    caplog.set_level(logging.INFO, logger="anpx")
    fake = FakeGateway()
    settings = ReceiverSettings(gateway_urls=[f"ws://127.0.0.1:{fake.port}/"], reconnect_delay=30)
    receiver = start_receiver(driver, settings, LateApp())
    try:
        peer = fake.accept()
        meta = b'{"method": "POST", "path": "/", "headers": {}, "query": {}}'
        tlvs = [(F.TAG_REQUEST_ID, b"r1"), (F.TAG_CHUNK_IDX, F.u32(0)), (F.TAG_HTTP_META, meta)]
        peer.send(BytesMessage(data=F.encode_frame(F.TYPE_REQUEST, F.FLAG_CHUNKED, tlvs)))
        bad = [(F.TAG_REQUEST_ID, b"r1"), (F.TAG_CHUNK_IDX, F.u32(1)), (F.TAG_FINAL_CHUNK, b"\0\1")]
        peer.send(BytesMessage(data=F.encode_frame(F.TYPE_REQUEST, F.FLAG_CHUNKED, bad)))
        decoder = M.MessageDecoder()  # the app may have begun its response: skip to the reset
        while not (
            errors := [
                e for e in decoder.receive_bytes(peer.message()) if isinstance(e, M.ErrorReceived)
            ]
        ):
            pass
        assert errors[0].request_id == "r1"
        assert errors[0].text.startswith("bad frame from peer: bad_tlv")
    finally:
        receiver.stop()
        fake.close()
    resets = [r for r in _records(caplog, "anpx.tunnel") if "r1" in r.getMessage()]
    assert len(resets) == 1 and resets[0].levelno == logging.WARNING  # the peer's fault
    assert "bad_tlv" in resets[0].getMessage()


@pytest.mark.parametrize("driver", DRIVERS)
def test_413_and_431_are_in_the_access_log_stats_and_metrics(driver, caplog):
    """Item 12: answers refused before a request began were invisible to operators."""
    from anpx_core.http1 import FrontLimits

    caplog.set_level(logging.INFO, logger="anpx.access")
    front = FrontLimits(max_header_bytes=1024, max_body_bytes=10)
    gateway = start_gateway(driver, GatewaySettings(front=front))
    ports = gateway.obj.ports
    try:
        url = f"http://127.0.0.1:{ports.http}/x"
        assert httpx.get(url, headers={"x-big": "a" * 2000}).status_code == 431
        assert httpx.post(url, content=b"b" * 100).status_code == 413
        stats = httpx.get(f"http://127.0.0.1:{ports.admin}/stats").json()
        metrics = httpx.get(f"http://127.0.0.1:{ports.admin}/metrics").text
    finally:
        gateway.stop()
    by_status = stats["responses_by_status"]
    assert by_status.get("413") == 1 and by_status.get("431") == 1, stats
    assert 'status="413"} 1' in metrics and 'status="431"} 1' in metrics
    lines = [r.getMessage() for r in _records(caplog, "anpx.access")]
    assert sum(" 413 " in m for m in lines) == 1 and sum(" 431 " in m for m in lines) == 1, lines


# --- keepalive towards a v1 gateway (item 3), in fake time --------------------------------------


def _json_ping_times(v1: bool, until: float = 65.0) -> list[float]:
    """When a ReceiverCore (ping_interval 30 s) sends JSON pings to a gateway that answers
    its upgrade as v1 (no anpx-extensions) or as anpx; the gateway side is plain wsproto."""
    import json

    from wsproto import ConnectionType, WSConnection
    from wsproto.events import AcceptConnection, Request, TextMessage

    from anpx_core.receiver import ReceiverCore
    from anpx_core.websocket import WsLimits

    settings = ReceiverSettings(
        gateway_urls=["ws://gw.test:8765/"],
        ws=WsLimits(ping_interval=30.0, ping_timeout=0),
        stream_window=None if v1 else 1 << 20,
    )
    core = ReceiverCore(settings)
    core.start(0.0)
    cid = core.pop_connects()[0].cid
    core.connected(cid, 0.0)
    gateway = WSConnection(ConnectionType.SERVER)
    gateway.receive_data(core.take_output(cid)[0])
    assert any(isinstance(e, Request) for e in gateway.events())
    extra = [] if v1 else [(b"anpx-extensions", b"flow=1048576")]
    core.receive(cid, gateway.send(AcceptConnection(extra_headers=extra)), 0.0)
    times: list[float] = []
    now = 0.0
    while True:
        deadline = core.next_deadline()  # the driver's timer sleeps until then
        assert deadline is not None and deadline > now
        if deadline > until:
            break
        now = deadline
        core.handle_timer(now)
        gateway.receive_data(core.take_output(cid)[0])
        for event in gateway.events():
            if isinstance(event, TextMessage) and json.loads(event.data).get("type") == "ping":
                times.append(now)
                # answer, as the reference gateway does
                pong = json.dumps({"type": "pong"})
                core.receive(cid, gateway.send(TextMessage(data=pong)), now)
    return times


def test_json_pings_to_a_v1_gateway_come_every_v1_ping_interval():
    times = _json_ping_times(v1=True)
    gaps = [b - a for a, b in itertools.pairwise([0.0, *times])]
    # the reference drops receivers whose last JSON ping is older than 20 s
    assert times and max(gaps) <= 5.0, times
    assert times == [5.0 * i for i in range(1, 14)]  # at the deadlines, not a tick later


def test_json_pings_to_an_anpx_gateway_keep_ping_interval():
    times = _json_ping_times(v1=False)
    assert times == [30.0, 60.0], times
