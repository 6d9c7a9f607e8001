"""WebSockets through both coordinators in fake time (tests/harness.py): wsproto clients ->
GatewayCore <-> ReceiverCore -> an ASGI echo app or (forward mode) an in-memory wsproto
service, with random scheduling, chunking, pipe sizes and slow readers.

Property: every client gets each of its messages echoed, whole and in order; its close code
and reason reach the app (or the service) and its code comes back; other clients' sessions
never mix in; nothing is left in flight afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Message,
    Ping,
    RejectConnection,
    Request,
    TextMessage,
)

from anpx_core.gateway import GatewaySettings
from anpx_core.receiver import ReceiverSettings
from anpx_core.websocket import WsLimits
from anpx_core.ws_relay import WsSettings

from .harness import CoreConnection, End, Task, World, pause, socket_pair
from .hypothesis_profiles import examples

QUIET = WsLimits(ping_interval=0)
PATIENT = WsSettings(ping_interval=0, idle_timeout=0, close_timeout=1000, open_timeout=1000)


@dataclass
class Plan:
    messages: list[str | bytes]
    fragments: int  # each message sent in this many frames (at most)
    close: tuple[int, str]
    read_pause: int  # steps the client reads nothing after it opened (a slow consumer)
    keep_open: bool = False  # never close (the other side goes first)


@dataclass(eq=False)
class WsClient(Task):
    world: World
    plan: Plan
    index: int
    end: End = field(init=False)
    ws: WSConnection = field(init=False)
    out: bytearray = field(default_factory=bytearray)
    accepted: bool = False
    refused: int | None = None
    sent: int = 0
    parts: list[Any] = field(default_factory=list)
    received: list[str | bytes] = field(default_factory=list)
    close_rcvd: CloseConnection | None = None
    close_sent: bool = False
    lost: bool = False
    resume_at: int = 0

    def __post_init__(self) -> None:
        world = self.world
        ours, theirs = socket_pair(world.capacity())
        self.end = ours
        peer = (f"10.1.0.{self.index + 1}", 41000 + self.index)
        cid = world.gateway.open_client(world.now, peer, ("gateway.test", 80))
        CoreConnection(world, world.gateway, cid, theirs, "wsclient")
        world.sync(world.gateway)
        self.ws = WSConnection(ConnectionType.CLIENT)
        request = Request(host="gateway.test", target=f"/ws/{self.index}", subprotocols=["p1"])
        self.out += self.ws.send(request)
        world.tasks.append(self)

    @property
    def finished(self) -> bool:
        return self.done

    def runnable(self) -> bool:
        return not self.done

    def _write(self) -> None:
        world, end = self.world, self.end
        if self.out and not end.write_failed:
            n = min(len(self.out), end.outbox.room, world.write_size())
            end.outbox.push(bytes(self.out[:n]))
            del self.out[:n]

    def _send(self, event: Any) -> None:
        if self.ws.state in (ConnectionState.OPEN, ConnectionState.REMOTE_CLOSING):
            self.out += self.ws.send(event)

    def step(self) -> None:
        world, end = self.world, self.end
        self._write()
        if self.accepted and not self.close_sent and self.sent < len(self.plan.messages):
            message = self.plan.messages[self.sent]
            self.sent += 1
            pieces = _pieces(message, self.plan.fragments)
            for i, piece in enumerate(pieces):
                self._send(Message(data=piece, message_finished=i == len(pieces) - 1))
        if self.accepted and not self.close_sent and len(self.received) == len(self.plan.messages):
            self.close_sent = True
            code, reason = self.plan.close
            self._send(CloseConnection(code=code, reason=reason))
        if world.steps < self.resume_at or not end.readable:
            return
        if end.inbox.broken or (end.inbox.eof and not end.inbox.size):
            self.lost = self.close_rcvd is None
            self._finish()
            return
        self.ws.receive_data(end.inbox.pull(world.read_size()))
        for event in self.ws.events():
            if isinstance(event, AcceptConnection):
                self.accepted = True
                self.resume_at = world.steps + self.plan.read_pause
            elif isinstance(event, RejectConnection):
                self.refused = event.status_code
            elif isinstance(event, TextMessage | BytesMessage):
                self.parts.append(event.data)
                if event.message_finished:
                    empty: str | bytes = "" if isinstance(self.parts[0], str) else b""
                    self.received.append(empty.join(self.parts))  # type: ignore[arg-type]
                    self.parts = []
            elif isinstance(event, Ping):
                self._send(event.response())
            elif isinstance(event, CloseConnection):
                self.close_rcvd = event
                if self.ws.state is ConnectionState.REMOTE_CLOSING:
                    self._send(event.response())
        if self.ws.state is ConnectionState.CLOSED or self.refused is not None:
            self._write()
            if not self.out:
                self._finish()

    def _finish(self) -> None:
        self.end.close()
        self.done = True


def _pieces(message: str | bytes, fragments: int) -> list[Any]:
    if fragments <= 1 or len(message) < fragments:
        return [message]
    step = -(-len(message) // fragments)
    return [message[i : i + step] for i in range(0, len(message), step)]


def make_ws_app(world: World, disconnects: dict[str, tuple[int, str]]) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "websocket"
        assert (await receive())["type"] == "websocket.connect"
        if world.rng.random() < 0.3:
            await pause(world.rng.randint(1, 20))
        await send({"type": "websocket.accept", "subprotocol": scope["subprotocols"][0]})
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                disconnects[scope["path"]] = (message["code"], message.get("reason") or "")
                return
            if world.rng.random() < 0.2:
                await pause(world.rng.randint(1, 10))  # a slow app: credit holds the client
            if message.get("text") is not None:
                await send({"type": "websocket.send", "text": message["text"]})
            else:
                await send({"type": "websocket.send", "bytes": message["bytes"]})

    return app


texts = st.text(max_size=2000)
blobs = st.integers(0, 300_000).map(lambda n: bytes(range(256)) * (n // 256) + b"x" * (n % 256))
plans = st.builds(
    Plan,
    messages=st.lists(st.one_of(texts, blobs), max_size=6),
    fragments=st.integers(1, 4),
    close=st.tuples(
        st.sampled_from([1000, 1001, 3000, 4000, 4999]),
        st.text(max_size=20).filter(lambda r: len(r.encode()) <= 100),
    ),
    read_pause=st.sampled_from([0, 0, 50, 400]),
)


@settings(
    max_examples=examples(15),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(seed=st.integers(0, 2**32), plans=st.lists(plans, min_size=1, max_size=3))
def test_websocket_sessions_through_both_cores(seed: int, plans: list[Plan]) -> None:
    disconnects: dict[str, tuple[int, str]] = {}
    gateway = GatewaySettings(ws=QUIET, websocket=PATIENT, stream_window=256 * 1024)
    receiver = ReceiverSettings(
        gateway_urls=["ws://gateway.test:8765/tunnel"],
        ws=QUIET,
        websocket=WsSettings(ping_interval=0, idle_timeout=0, max_per_client=0),
        stream_window=256 * 1024,
    )
    world = World(seed=seed, gateway=gateway, receivers=[receiver])
    world.app = make_ws_app(world, disconnects)
    world.wait_connected()
    clients = [WsClient(world, plan, i) for i, plan in enumerate(plans)]
    world.run(lambda: all(c.finished for c in clients), max_time=600.0)
    world.run(lambda: world.gateway.in_flight == 0 and world.receivers[0].in_flight == 0)
    world.settle(1.0)
    for i, (client, plan) in enumerate(zip(clients, plans, strict=True)):
        assert client.refused is None and not client.lost, world.describe()
        assert client.received == plan.messages
        assert client.close_rcvd is not None and client.close_rcvd.code == plan.close[0]
        assert disconnects[f"/ws/{i}"] == plan.close
    world.assert_no_leaks()


@dataclass(eq=False)
class WsService(Task):
    """One connection of an in-memory WebSocket echo service (forward mode)."""

    world: World
    end: End
    closes: dict[str, tuple[int, str]]
    ws: WSConnection = field(default_factory=lambda: WSConnection(ConnectionType.SERVER))
    out: bytearray = field(default_factory=bytearray)
    path: str = ""

    def __post_init__(self) -> None:
        self.world.tasks.append(self)

    def runnable(self) -> bool:
        return not self.done

    def step(self) -> None:
        world, end = self.world, self.end
        if self.out and not end.write_failed:
            n = min(len(self.out), end.outbox.room, world.write_size())
            end.outbox.push(bytes(self.out[:n]))
            del self.out[:n]
            return
        if self.ws.state is ConnectionState.CLOSED and not self.out:
            end.close()
            self.done = True
            return
        if not end.readable:
            return
        if end.inbox.broken or (end.inbox.eof and not end.inbox.size):
            end.close()
            self.done = True
            return
        self.ws.receive_data(end.inbox.pull(world.read_size()))
        for event in self.ws.events():
            if isinstance(event, Request):
                self.path = event.target
                self.out += self.ws.send(AcceptConnection(subprotocol=event.subprotocols[0]))
            elif isinstance(event, TextMessage | BytesMessage):
                self.out += self.ws.send(
                    Message(data=event.data, message_finished=event.message_finished)
                )
            elif isinstance(event, Ping):
                self.out += self.ws.send(event.response())
            elif isinstance(event, CloseConnection):
                self.closes[self.path] = (event.code, event.reason)
                if self.ws.state is ConnectionState.REMOTE_CLOSING:
                    self.out += self.ws.send(event.response())


class ForwardWorld(World):
    """The harness, with a WebSocket echo service as the local service."""

    closes: dict[str, tuple[int, str]]

    def _connect(self, core: Any, request: Any) -> None:
        if request.purpose != "upstream":
            super()._connect(core, request)
            return
        ours, theirs = socket_pair(self.capacity())
        WsService(self, theirs, self.closes)
        core.connected(request.cid, self.now)
        CoreConnection(self, core, request.cid, ours, "upstream")
        self.sync(core)


@settings(
    max_examples=examples(10),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(seed=st.integers(0, 2**32), plans=st.lists(plans, min_size=1, max_size=3))
def test_forwarded_websocket_sessions_through_both_cores(seed: int, plans: list[Plan]) -> None:
    gateway = GatewaySettings(ws=QUIET, websocket=PATIENT, stream_window=256 * 1024)
    receiver = ReceiverSettings(
        gateway_urls=["ws://gateway.test:8765/tunnel"],
        forward=("127.0.0.1", 9000),
        ws=QUIET,
        websocket=WsSettings(ping_interval=0, idle_timeout=0, max_per_client=0, close_timeout=1000),
        stream_window=256 * 1024,
    )
    ForwardWorld.closes = {}
    world = ForwardWorld(seed=seed, gateway=gateway, receivers=[receiver])
    world.wait_connected()
    clients = [WsClient(world, plan, i) for i, plan in enumerate(plans)]
    world.run(lambda: all(c.finished for c in clients), max_time=600.0)
    world.run(lambda: world.gateway.in_flight == 0 and world.receivers[0].in_flight == 0)
    world.settle(1.0)
    for i, (client, plan) in enumerate(zip(clients, plans, strict=True)):
        assert client.refused is None and not client.lost, world.describe()
        assert client.received == plan.messages
        assert client.close_rcvd is not None and client.close_rcvd.code == plan.close[0]
        assert ForwardWorld.closes[f"/ws/{i}"] == plan.close
    world.assert_no_leaks()


def test_a_dropped_tunnel_closes_the_client_with_1011_and_the_app_sees_1006() -> None:
    disconnects: dict[str, tuple[int, str]] = {}
    gateway = GatewaySettings(ws=QUIET, websocket=PATIENT)
    receiver = ReceiverSettings(
        gateway_urls=["ws://gateway.test:8765/tunnel"], ws=QUIET, reconnect_delay=1000
    )
    world = World(seed=7, gateway=gateway, receivers=[receiver])
    world.app = make_ws_app(world, disconnects)
    world.wait_connected()
    plan = Plan(messages=["a"] * 3, fragments=1, close=(1000, ""), read_pause=0, keep_open=True)
    client = WsClient(world, plan, 0)
    world.run(lambda: len(client.received) == 3)
    assert world.drop_tunnel()
    world.run(lambda: client.finished and "/ws/0" in disconnects)
    assert client.close_rcvd is not None and client.close_rcvd.code == 1011
    assert disconnects["/ws/0"] == (1006, "")
    world.run(lambda: world.gateway.in_flight == 0 and world.receivers[0].in_flight == 0)
