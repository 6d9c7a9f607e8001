"""The engine end to end in memory: HTTP clients -> GatewayCore <-> ReceiverCore -> app.

Everything runs in :mod:`harness` (no sockets, fake time, one seeded RNG). The property
test drives many concurrent connections with random bodies, splits, modes, disconnects,
tunnel drops and slow readers, and checks that every response reaches exactly its own
request, complete and unaltered, that every failure is the documented one, and that no
state is left behind. The example tests pin each documented failure and the flow-control
guarantees one at a time.
"""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from anpx_core.gateway import GatewaySettings
from anpx_core.http1 import FrontLimits
from anpx_core.receiver import ReceiverSettings
from anpx_core.websocket import WsLimits

from .harness import (
    Disconnect,
    Exchange,
    HttpClient,
    World,
    echo_body,
    make_app,
    pattern,
)

MAX_BODY = 48 * 1024
PATIENT = 1000.0  # timeouts that must not fire in a test that is not about them
QUIET_WS = WsLimits(ping_interval=0)


def gateway_settings(**kw) -> GatewaySettings:
    base = {
        "timeout": PATIENT,
        "front": FrontLimits(
            max_body_bytes=MAX_BODY, header_timeout=PATIENT, keepalive_timeout=PATIENT
        ),
    }
    base.update(kw)
    return GatewaySettings(**base)


def receiver_settings(**kw) -> ReceiverSettings:
    base = {"gateway_urls": ["ws://gateway.test:8765/tunnel"], "reconnect_delay": 0.2}
    base.update(kw)
    return ReceiverSettings(**base)


def make_world(seed: int, gateway: GatewaySettings, receivers: list[ReceiverSettings], **kw):
    world = World(seed=seed, gateway=gateway, receivers=receivers, **kw)
    world.app = make_app(world)
    world.wait_connected(len(receivers))
    return world


def request(marker: str, body: bytes = b"", *, mode: str = "echo", method: str = "POST", **kw):
    headers = [("x-marker", marker), ("x-mode", mode), *kw.pop("headers", [])]
    return Exchange(method, f"/echo/{marker}?q=1", headers, body=body, **kw)


def expected_answer(ex: Exchange, mode: str, marker: str) -> bytes:
    if mode in ("echo", "stream"):
        return echo_body(marker, ex.body, ex.method)
    return f"{ex.method} {marker}".encode()  # early / fail-mid send the tag alone


# --- the property ---------------------------------------------------------------------------


@dataclass
class Planned:
    """One exchange of a scenario, small enough for hypothesis to print."""

    marker: str
    mode: str
    size: int
    method: str = "POST"
    chunked: bool = False
    expect: bool = False
    content_length: bool = False

    def build(self) -> Exchange:
        return request(
            self.marker,
            pattern(self.marker + "/request", self.size),
            mode=self.mode,
            method=self.method,
            chunked=self.chunked,
            expect_continue=self.expect,
            headers=[("x-cl", "1")] if self.content_length else [],
        )


MODES = ["echo", "echo", "echo", "stream", "stream", "early", "fail-before", "fail-mid", "oversize"]


@st.composite
def connection_plans(draw: st.DrawFn, index: int) -> dict:
    planned: list[Planned] = []
    for j in range(draw(st.integers(1, 3))):
        mode = draw(st.sampled_from(MODES))
        if mode == "oversize":
            size = draw(st.integers(MAX_BODY + 1, MAX_BODY + 4096))
        else:
            size = draw(st.sampled_from([0, 1, 7, 300, 5000, 20000, MAX_BODY]))
        planned.append(
            Planned(
                f"c{index}x{j}",
                mode,
                size,
                method="POST" if size else draw(st.sampled_from(["GET", "POST", "DELETE"])),
                chunked=draw(st.booleans()) if size else False,
                expect=bool(size) and draw(st.booleans()),
                content_length=draw(st.booleans()),
            )
        )
    disconnect = None
    if draw(st.integers(0, 3)) == 0:
        j = draw(st.integers(0, len(planned) - 1))
        target = planned[j]
        if target.size and draw(st.booleans()):
            after = draw(st.integers(0, target.size - 1))
            disconnect = Disconnect(j, "upload", after, reset=draw(st.booleans()))
        elif target.mode in ("echo", "stream"):
            answer = len(echo_body(target.marker, bytes(target.size), target.method))
            after = draw(st.integers(0, answer - 1))
            disconnect = Disconnect(j, "response", after, reset=draw(st.booleans()))
    pauses = draw(st.lists(st.tuples(st.integers(0, 60000), st.integers(1, 400)), max_size=2))
    return {
        "planned": planned,
        "pipeline": draw(st.integers(0, 4)) == 0,
        "disconnect": disconnect,
        "read_pauses": pauses,
        "start": draw(st.integers(0, 300)),
    }


@st.composite
def scenarios(draw: st.DrawFn) -> dict:
    n = draw(st.integers(1, 6))
    return {
        "seed": draw(st.integers(0, 2**32 - 1)),
        "receivers": draw(st.integers(1, 2)),
        "flow": draw(st.sampled_from(["both", "gateway-v1", "receiver-v1"])),
        "window": draw(st.sampled_from([2048, 8192, 65536])),
        "frame": draw(st.sampled_from([1024, 4096, 65536])),
        "high_water": draw(st.sampled_from([8192, 65536])),
        "drops": draw(st.lists(st.integers(0, 2000), max_size=2)),
        "connections": [draw(connection_plans(i)) for i in range(n)],
    }


def build_world(sc: dict) -> World:
    window = sc["window"]
    gw = gateway_settings(
        stream_window=None if sc["flow"] == "gateway-v1" else window,
        send_frame_size=sc["frame"],
        high_water=sc["high_water"],
    )
    rx = [
        receiver_settings(
            stream_window=None if sc["flow"] == "receiver-v1" else window,
            max_buffered_body=window,
            send_frame_size=sc["frame"],
            client_id=f"rx{i}",
        )
        for i in range(sc["receivers"])
    ]
    return make_world(sc["seed"], gw, rx)


def _ended_connection(ex: Exchange) -> bool:
    """Did this exchange end its connection (so later ones on it were never answered)?"""
    return (
        not ex.sent
        or ex.aborted is not None
        or ex.client_left
        or ex.header("connection") == "close"
    )


def check_exchange(world: World, p: Planned, ex: Exchange, previous: Exchange | None) -> None:
    mode, marker = p.mode, p.marker
    where = f"{marker} ({mode}, {len(ex.body)}B{', chunked' if ex.chunked else ''})"
    if previous is not None and _ended_connection(previous) and ex.status is None:
        # the connection ended with the previous exchange: this one was never answered
        assert not ex.complete, where
        return
    assert ex.sent, f"{where} never got its turn after the previous exchange ended cleanly"
    body = bytes(ex.response_body)
    if ex.status is not None and ex.status == 200:
        assert ex.header("x-marker") == marker, (
            f"{where}: got the response of {ex.header('x-marker')}"
        )
        answer = expected_answer(ex, mode, marker)
        assert answer.startswith(body), f"{where}: body altered"
    if ex.client_left:
        return
    disturbed = world.disturbed(ex.started, ex.ended)
    if mode == "oversize" and ex.status == 413:
        assert ex.complete and b"Too Large" in body, (where, body)
        return
    if ex.status == 503:
        assert disturbed, f"{where}: 503 while a receiver was connected: {body!r}"
        assert body in (b"no receiver connected\n", b"all receivers are busy\n"), body
        return
    if ex.status == 502:
        assert disturbed, f"{where}: 502 without a tunnel drop: {body!r}"
        assert b"receiver" in body, body
        return
    if ex.aborted is not None:
        assert ex.status is None or ex.status == 200, (where, ex.status, ex.aborted)
        assert disturbed or mode == "fail-mid", f"{where}: aborted ({ex.aborted}) undisturbed"
        return
    assert ex.complete, f"{where}: neither complete nor aborted"
    if mode == "fail-before":
        assert (ex.status, body) == (500, b"Internal Server Error"), (where, ex.status, body)
        return
    assert mode != "fail-mid", f"{where}: a response the app never finished completed"
    assert mode != "oversize", f"{where}: {ex.status} instead of 413"
    assert ex.status == 200, (where, ex.status, body)
    assert body == expected_answer(ex, mode, marker), f"{where}: body altered or incomplete"


def run_scenario(sc: dict) -> World:
    world = build_world(sc)
    exchanges = [[p.build() for p in plan["planned"]] for plan in sc["connections"]]
    clients: list[HttpClient] = []
    base = world.steps
    pending = sorted(range(len(exchanges)), key=lambda i: sc["connections"][i]["start"])
    drops = sorted(sc["drops"])

    def hook(w: World) -> None:
        while pending and w.steps - base >= sc["connections"][pending[0]]["start"]:
            i = pending.pop(0)
            plan = sc["connections"][i]
            clients.append(
                HttpClient(
                    w,
                    exchanges[i],
                    index=i,
                    pipeline=plan["pipeline"],
                    disconnect=plan["disconnect"],
                    read_pauses=plan["read_pauses"],
                )
            )
        while drops and w.steps - base >= drops[0]:
            drops.pop(0)
            w.drop_tunnel()

    world.hooks.append(hook)
    world.run(lambda: not pending and all(c.done for c in clients), max_time=200.0)
    world.settle(3.0)
    for plan, sent in zip(sc["connections"], exchanges, strict=True):
        previous = None
        for p, ex in zip(plan["planned"], sent, strict=True):
            check_exchange(world, p, ex, previous)
            previous = ex
    world.assert_no_leaks()
    return world


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(scenarios())
def test_every_response_reaches_its_request(sc: dict) -> None:
    run_scenario(sc)
