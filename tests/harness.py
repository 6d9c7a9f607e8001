"""A deterministic, socket-free driver for the sans-IO cores.

HTTP clients (each an independent h11 client connection) -> :class:`GatewayCore` <->
:class:`ReceiverCore` (tunnel bytes pumped between them) -> an ASGI app, or an in-memory
upstream HTTP server (an h11 server connection) in forward mode.

It follows the driver contract of ``anpx_trio._pump`` step by step, but every "socket" is a
pair of bounded :class:`Pipe` s and every task is stepped by :meth:`World.run` in a random
order with random delays, from one seeded RNG:

* a core connection has a reader task (delivers bytes only while ``can_read``, in random
  chunk sizes; otherwise it waits for the connection's wake-up key) and a writer task
  (``take_output``, pushes the bytes into the pipe as room allows, then ``written``; waits
  for the wake-up key when there is nothing to write; closes when the core says so);
* ASGI apps are coroutines stepped by hand: ``receive``/``send`` suspend on a wake-up key
  when the core says "wait", and only a wake-up named by ``pop_wakeups()`` resumes them
  (a lost wake-up shows up as a stall, exactly as it would hang a real driver);
* time is fake: each step advances it a little, an idle world jumps to the next timer; the
  cores' ``handle_timer(now)`` runs once ``now`` reaches their ``next_deadline()``.
"""

from __future__ import annotations

import dataclasses
import itertools
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import h11

from anpx_core.gateway import GatewayCore, GatewaySettings
from anpx_core.receiver import ConnectRequest, ReceiverCore, ReceiverSettings

STEP_TIME = 0.001  # fake seconds per scheduler step
IDLE_STEP = 0.1  # the most an idle world moves on in one step
UPSTREAM = ("127.0.0.1", 9000)


class Stalled(AssertionError):
    """The world stopped making progress before the goal was reached."""


# --- sockets ------------------------------------------------------------------------------------


class Pipe:
    """One direction of a socket: bytes in flight, bounded like a kernel buffer."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.chunks: deque[bytes] = deque()
        self.size = 0
        self.eof = False  # the writer closed its side: EOF after the queued bytes
        self.broken = False  # reset: queued bytes are lost, both ends fail
        self.reader_gone = False  # the reading end closed: writes fail

    @property
    def room(self) -> int:
        return max(0, self.capacity - self.size)

    def push(self, data: bytes) -> None:
        self.chunks.append(data)
        self.size += len(data)

    def pull(self, limit: int) -> bytes:
        out = bytearray()
        while self.chunks and len(out) < limit:
            chunk = self.chunks.popleft()
            take = limit - len(out)
            if len(chunk) > take:
                self.chunks.appendleft(chunk[take:])
                chunk = chunk[:take]
            out += chunk
        self.size -= len(out)
        return bytes(out)


class End:
    """One end of a socket."""

    def __init__(self, inbox: Pipe, outbox: Pipe) -> None:
        self.inbox = inbox
        self.outbox = outbox

    @property
    def readable(self) -> bool:
        """A read would return at once (data, EOF or an error)."""
        return bool(self.inbox.size) or self.inbox.eof or self.inbox.broken

    @property
    def write_failed(self) -> bool:
        return self.outbox.broken or self.outbox.reader_gone

    def close(self) -> None:
        """Close our side: the peer reads EOF after what is queued; its writes fail."""
        self.outbox.eof = True
        self.inbox.reader_gone = True

    def reset(self) -> None:
        for pipe in (self.inbox, self.outbox):
            pipe.broken = True
            pipe.chunks.clear()
            pipe.size = 0


def socket_pair(capacity: int) -> tuple[End, End]:
    ab, ba = Pipe(capacity), Pipe(capacity)
    return End(ba, ab), End(ab, ba)


# --- tasks --------------------------------------------------------------------------------------


class Task:
    done = False
    waiting = False  # parked on a wake-up key

    def runnable(self) -> bool:
        raise NotImplementedError

    def step(self) -> None:
        raise NotImplementedError

    def woken(self) -> None:
        self.waiting = False

    def sleeping(self) -> bool:
        """Asleep for a number of steps (not waiting for a wake-up): runnable again soon."""
        return False


class CoreConnection:
    """The driver's two tasks for one connection of a core, as ``Pump.serve`` runs them."""

    def __init__(self, world: World, core: Any, cid: int, end: End, label: str) -> None:
        self.world, self.core, self.cid, self.end, self.label = world, core, cid, end, label
        self.reader = _Reader(self)
        self.writer = _Writer(self)
        self.finished = False
        self.finished_at: float | None = None  # when the core was told it closed
        self.pending = b""  # taken from the core, not yet in the pipe
        self.max_pending = 0
        world.tasks += [self.reader, self.writer]
        world.connections[(id(core), cid)] = self

    def finish(self) -> None:
        """The writer returned: close the socket, tell the core (``serve``'s finally)."""
        if self.finished:
            return
        self.finished = True
        self.finished_at = self.world.now
        self.reader.done = self.writer.done = True
        self.end.close()
        self.core.closed(self.cid, self.world.now)
        self.world.sync(self.core)

    def __repr__(self) -> str:
        return f"<{self.label} cid={self.cid} r={self.reader.state()} w={self.writer.state()}>"


class _Reader(Task):
    def __init__(self, conn: CoreConnection) -> None:
        self.conn = conn

    def state(self) -> str:
        return "done" if self.done else "wait" if self.waiting else "run"

    def runnable(self) -> bool:
        if self.done or self.waiting:
            return False
        conn = self.conn
        return conn.end.readable or not conn.core.can_read(conn.cid)

    def step(self) -> None:
        conn, world = self.conn, self.conn.world
        core, cid, inbox = conn.core, conn.cid, conn.end.inbox
        if not core.can_read(cid):
            world.park(core, cid, self)
            return
        if inbox.broken:
            core.lost(cid, world.now)
            self.done = True
        elif inbox.size:
            core.receive(cid, inbox.pull(world.read_size()), world.now)
        elif inbox.eof:
            core.receive(cid, b"", world.now)
            self.done = True
        world.sync(core)


class _Writer(Task):
    def __init__(self, conn: CoreConnection) -> None:
        self.conn = conn

    def state(self) -> str:
        if self.done:
            return "done"
        if self.conn.pending:
            return f"push({len(self.conn.pending)})"
        return "wait" if self.waiting else "run"

    def runnable(self) -> bool:
        if self.done or self.waiting:
            return False
        end = self.conn.end
        return not self.conn.pending or end.outbox.room > 0 or end.write_failed

    def step(self) -> None:
        conn, world = self.conn, self.conn.world
        core, cid, end = conn.core, conn.cid, conn.end
        if conn.pending:
            if end.write_failed:
                core.lost(cid, world.now)
                world.sync(core)
                conn.finish()
                return
            n = min(len(conn.pending), end.outbox.room, world.write_size())
            end.outbox.push(conn.pending[:n])
            conn.pending = conn.pending[n:]
            if not conn.pending:
                core.written(cid, world.now)
                world.sync(core)
            return
        data, close = core.take_output(cid)
        if data:
            conn.pending = data
            conn.max_pending = max(conn.max_pending, len(data))
        elif close:
            conn.finish()
        else:
            world.park(core, cid, self)


class _Suspend:
    """What an app coroutine yields: wait for a wake-up key, or for some steps."""

    def __init__(self, key: int | None = None, steps: int = 0) -> None:
        self.key, self.steps = key, steps

    def __await__(self):
        yield self


class AppTask(Task):
    """One ASGI call, its coroutine stepped by hand."""

    def __init__(self, world: World, core: ReceiverCore, call_id: int, scope: dict) -> None:
        self.world, self.core, self.call_id, self.scope = world, core, call_id, scope
        self.coro = world.app(scope, self._receive, self._send)
        self.sleep_until = 0
        self.error: BaseException | None = None

    async def _receive(self) -> dict:
        while True:
            message = self.core.asgi_receive(self.call_id)
            self.world.sync(self.core)
            if message is not None:
                return message
            await _Suspend(self.call_id)

    async def _send(self, message: dict) -> None:
        self.core.asgi_send(self.call_id, message, self.world.now)
        self.world.sync(self.core)
        while not self.core.asgi_writable(self.call_id):
            await _Suspend(self.call_id)

    def runnable(self) -> bool:
        return not self.done and not self.waiting and self.world.steps >= self.sleep_until

    def sleeping(self) -> bool:
        return not self.done and not self.waiting and self.world.steps < self.sleep_until

    def step(self) -> None:
        try:
            suspend = self.coro.send(None)
        except StopIteration:
            self._finish(None)
            return
        except Exception as exc:
            self._finish(exc)
            return
        if suspend.key is not None:
            self.world.park(self.core, suspend.key, self)
        else:
            self.sleep_until = self.world.steps + suspend.steps

    def _finish(self, exc: BaseException | None) -> None:
        self.done = True
        self.error = exc
        self.core.app_finished(self.call_id, exc, self.world.now)
        self.world.sync(self.core)


def pause(steps: int) -> _Suspend:
    """``await pause(n)`` in an app: let ``n`` scheduler steps pass."""
    return _Suspend(steps=steps)


# --- HTTP clients -------------------------------------------------------------------------------


@dataclass(eq=False)
class Exchange:
    """One request a client sends, and everything it saw of the response."""

    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes = b""
    chunked: bool = False
    parts: list[bytes] | None = None  # body pieces as handed to h11 (chunk boundaries)
    expect_continue: bool = False
    raw: bytes | None = None  # send these bytes instead of a request built by h11
    # what happened
    sent: bool = False
    body_sent: int = 0
    status: int | None = None
    informational: list[int] = field(default_factory=list)
    response_headers: list[tuple[str, str]] = field(default_factory=list)
    response_body: bytearray = field(default_factory=bytearray)
    complete: bool = False
    aborted: str | None = None  # why the response ended without EndOfMessage
    client_left: bool = False  # the client disconnected on purpose
    started: float = 0.0
    ended: float | None = None

    def header(self, name: str) -> str | None:
        return next((v for n, v in self.response_headers if n == name), None)

    @property
    def finished(self) -> bool:
        return self.complete or self.aborted is not None or self.client_left


@dataclass
class Disconnect:
    """Leave mid-upload (after ``after`` body bytes were sent) or mid-response (after
    ``after`` body bytes were received), by closing (FIN) or resetting the socket."""

    exchange: int
    phase: str  # "upload" | "response"
    after: int
    reset: bool = False


class HttpClient(Task):
    """A client connection: sends its exchanges in order (or pipelined), reads responses
    with its own h11 client connection, may pause reading (slow consumer) or leave."""

    def __init__(
        self,
        world: World,
        exchanges: list[Exchange],
        *,
        index: int,
        pipeline: bool = False,
        disconnect: Disconnect | None = None,
        read_pauses: list[tuple[int, int]] = (),
        read_at: int = 0,
        keep_open: bool = False,
        leave_at: float | None = None,
        leave_reset: bool = False,
    ) -> None:
        self.world = world
        self.exchanges = exchanges
        self.pipeline = pipeline
        self.disconnect = disconnect
        self.read_pauses = sorted(read_pauses)  # (after response bytes, pause steps)
        self.read_at = read_at  # step from which reading resumes
        self.received = 0  # response body bytes across all exchanges
        ours, theirs = socket_pair(world.capacity())
        self.end = ours
        peer = (f"10.0.{index // 250}.{index % 250 + 1}", 40000 + index)
        cid = world.gateway.open_client(world.now, peer, ("gateway.test", 80))
        self.conn = CoreConnection(world, world.gateway, cid, theirs, "client")
        self.cid = cid
        world.sync(world.gateway)
        self.parser = h11.Connection(h11.CLIENT)  # reads the responses
        self.out = bytearray()  # produced, not yet in the pipe
        self.to_send = 0  # index of the next exchange to put on the wire
        self.current = 0  # index of the exchange whose response we read
        self.body_plan: deque[bytes] = deque()  # body parts of the exchange being sent
        self.sending: Exchange | None = None
        self.waiting_continue = False
        self.closed = False
        self.write_dead = False
        self.keep_open = keep_open  # after the last response, wait for the server to close
        # leave at this fake time whatever the state (e.g. a client that never reads)
        self.leave_at, self.leave_reset = leave_at, leave_reset
        self.server_closed = False
        world.tasks.append(self)

    # -- producing requests --

    def _start_exchange(self, ex: Exchange, index: int) -> None:
        ex.sent = True
        ex.started = self.world.now
        self.sending = ex
        if ex.raw is not None:
            self.out += ex.raw
            self.sending = None
            if index == self.current:
                self._replay_bodiless(ex)
            return
        headers = [("host", "app.test"), *ex.headers]
        if ex.chunked:
            headers.append(("transfer-encoding", "chunked"))
        elif ex.body or ex.method in ("POST", "PUT"):
            headers.append(("content-length", str(len(ex.body))))
        if ex.expect_continue:
            headers.append(("expect", "100-continue"))
        self._writer = h11.Connection(h11.CLIENT)  # a fresh one per request: pipelining
        request = h11.Request(method=ex.method, target=ex.target, headers=headers)
        self.out += self._writer.send(request)
        parts = ex.parts if ex.parts is not None else self.world.split(ex.body)
        self.body_plan = deque(p for p in parts if p)
        self.waiting_continue = ex.expect_continue and bool(ex.body)
        if self.pipeline:
            if index == self.current:
                self._replay_bodiless(ex)
        else:
            self._replay(request)

    def _replay(self, event: Any) -> None:
        """Keep the parsing connection's view of our side in step with what we sent."""
        if self.parser.our_state in (h11.MUST_CLOSE, h11.CLOSED, h11.ERROR):
            return
        self.parser.send(event)

    def _replay_bodiless(self, ex: Exchange) -> None:
        """Pipelined or raw requests: the parser only needs the method and a finished request."""
        self.parser.send(h11.Request(method=ex.method, target="/", headers=[("host", "app.test")]))
        self.parser.send(h11.EndOfMessage())

    def _produce(self) -> None:
        """Put the next piece of request bytes into ``out``."""
        ex = self.sending
        if ex is None:
            if self.to_send >= len(self.exchanges) or self.closed:
                return
            if not self.pipeline and self.to_send != self.current:
                return  # wait for the previous response
            self.to_send += 1
            self._start_exchange(self.exchanges[self.to_send - 1], self.to_send - 1)
            return
        if self.waiting_continue:
            return
        if self.body_plan:
            part = self.body_plan.popleft()
            event = h11.Data(data=part)
            ex.body_sent += len(part)
        else:
            event = h11.EndOfMessage()
            self.sending = None
        self.out += self._writer.send(event)
        if not self.pipeline:
            self._replay(event)

    # -- the task --

    def runnable(self) -> bool:
        return not self.done

    def step(self) -> None:
        world = self.world
        if self.closed:
            self.done = True
            return
        if self.leave_at is not None and world.now >= self.leave_at:
            self._leave_now()
            return
        if not self.out and not self.write_dead:
            self._produce()
        if self.out:
            if self.end.write_failed:
                # The server closed its side: stop sending, but read what it said first
                # (a server that answers early closes lingering, as h11's docs advise).
                self.write_dead = True
                self.out.clear()
                self.sending = None
            n = min(len(self.out), self.end.outbox.room, world.write_size())
            if n:
                self.end.outbox.push(bytes(self.out[:n]))
                del self.out[:n]
        self._maybe_leave("upload")
        if self.closed:
            return
        if world.steps >= self.read_at and self.end.readable:
            if self.end.inbox.broken:
                self._connection_lost("connection reset")
                return
            data = self.end.inbox.pull(world.read_size())
            self.parser.receive_data(data)  # b"" at EOF
            self._parse()
        if not self.closed and self.current >= len(self.exchanges) and not self.out:
            if not self.keep_open:
                self._close()
            elif self.end.inbox.eof and not self.end.inbox.size:
                self.server_closed = True
                self._close()

    def _leave_now(self) -> None:
        for ex in self.exchanges:
            if ex.sent and not ex.finished:
                ex.client_left = True
                ex.ended = self.world.now
        if self.leave_reset:
            self.end.reset()
        else:
            self.end.close()
        self.closed = True

    def _maybe_leave(self, phase: str) -> None:
        plan = self.disconnect
        if plan is None or plan.phase != phase or self.closed:
            return
        if plan.exchange >= len(self.exchanges):
            return
        ex = self.exchanges[plan.exchange]
        if phase == "upload":
            ready = ex.sent and ex.body_sent >= plan.after and not self.out
        else:
            ready = ex.status is not None and len(ex.response_body) >= plan.after
        if ready and not ex.finished:
            for other in self.exchanges:
                if other.sent and not other.finished:
                    other.client_left = True
                    other.ended = self.world.now
            self.disconnect = None
            if plan.reset:
                self.end.reset()
            else:
                self.end.close()
            self.closed = True

    def _parse(self) -> None:
        while not self.closed and self.current < len(self.exchanges):
            ex = self.exchanges[self.current]
            try:
                event = self.parser.next_event()
            except h11.RemoteProtocolError as exc:
                self._connection_lost(f"bad response: {exc}")
                return
            if event is h11.NEED_DATA:
                return
            if event is h11.PAUSED:
                if not self._next_cycle():
                    return
                continue
            if isinstance(event, h11.InformationalResponse):
                ex.informational.append(event.status_code)
                if event.status_code == 100 and self.sending is ex:
                    self.waiting_continue = False
            elif isinstance(event, h11.Response):
                ex.status = event.status_code
                ex.response_headers = [
                    (n.decode("latin-1"), v.decode("latin-1")) for n, v in event.headers
                ]
                if self.sending is ex:
                    self.waiting_continue = False
            elif isinstance(event, h11.Data):
                ex.response_body += event.data
                self.received += len(event.data)
                self._maybe_pause()
                self._maybe_leave("response")
            elif isinstance(event, h11.EndOfMessage):
                ex.complete = True
                ex.ended = self.world.now
                if self.sending is ex:  # answered early: the rest of the upload is moot
                    self.sending = None
                    self.body_plan.clear()
                    self.out.clear()
                    self._close()
                    return
                if not self._next_cycle():
                    return
            elif isinstance(event, h11.ConnectionClosed):
                self._connection_lost("connection closed")
                return

    def _next_cycle(self) -> bool:
        """The current exchange is complete: move on, or close if the connection is done."""
        parser = self.parser
        self.current += 1
        if self.current >= len(self.exchanges):
            if not self.keep_open:
                self._close()
            return False
        if parser.our_state is h11.DONE and parser.their_state is h11.DONE:
            parser.start_next_cycle()
            if self.current < self.to_send:  # already on the wire (pipelined)
                self._replay_bodiless(self.exchanges[self.current])
            return True
        self._close()  # the server closes after this response
        return False

    def _maybe_pause(self) -> None:
        while self.read_pauses and self.received >= self.read_pauses[0][0]:
            _, steps = self.read_pauses.pop(0)
            self.read_at = self.world.steps + steps

    def resume_reading(self) -> None:
        self.read_at = 0

    def _connection_lost(self, why: str) -> None:
        for ex in self.exchanges[self.current :]:
            if ex.sent and not ex.finished:
                ex.aborted = why
                ex.ended = self.world.now
        self.end.close()
        self.closed = True

    def _close(self) -> None:
        """Close after the last response (or when the server closes): done here."""
        for ex in self.exchanges[self.current :]:
            if ex.sent and not ex.finished:
                ex.aborted = "connection closed by the client after an earlier response"
                ex.ended = self.world.now
        self.end.close()
        self.closed = True


# --- the upstream HTTP service (forward mode) ---------------------------------------------------


class Upstream(Task):
    """One connection of an in-memory HTTP/1.1 service, driven through an h11 server.

    Its behaviour comes from the request: ``x-upstream`` = ``echo`` (default) |
    ``close-before`` (EOF before answering) | ``close-mid`` (EOF mid-body) | ``garbage``.
    ``idle_close`` makes it close a kept-alive connection after a response.
    """

    def __init__(self, world: World, end: End, *, idle_close: bool = False) -> None:
        self.world, self.end, self.idle_close = world, end, idle_close
        self.h11 = h11.Connection(h11.SERVER)
        self.out = bytearray()
        self.request: h11.Request | None = None
        self.body = bytearray()
        self.closing = False
        self.served = 0
        world.tasks.append(self)

    def runnable(self) -> bool:
        return not self.done

    def step(self) -> None:
        world, end = self.world, self.end
        if self.out:
            if end.write_failed:
                self.done = True
                return
            n = min(len(self.out), end.outbox.room, world.write_size())
            end.outbox.push(bytes(self.out[:n]))
            del self.out[:n]
            if self.out:
                return
        if self.closing:
            end.close()
            self.done = True
            return
        if not end.readable:
            return
        if end.inbox.broken:
            self.done = True
            return
        self.h11.receive_data(end.inbox.pull(world.read_size()))
        while True:
            try:
                event = self.h11.next_event()
            except h11.RemoteProtocolError:
                self.closing = True
                return
            if event is h11.NEED_DATA:
                return
            if isinstance(event, h11.ConnectionClosed):
                self.closing = True
                return
            if event is h11.PAUSED:
                self.h11.start_next_cycle()
                continue
            if isinstance(event, h11.Request):
                self.request, self.body = event, bytearray()
            elif isinstance(event, h11.Data):
                self.body += event.data
            elif isinstance(event, h11.EndOfMessage):
                self._respond()
                if self.closing:
                    return

    def _respond(self) -> None:
        assert self.request is not None
        headers = {n.decode(): v.decode() for n, v in self.request.headers}
        mode = headers.get("x-upstream", "echo")
        marker = headers.get("x-marker", "")
        self.served += 1
        if mode == "close-before":
            self.closing = True
            return
        if mode == "garbage":
            self.out += b"HTTP/1.1 banana\r\n\r\n"
            self.closing = True
            return
        body = echo_body(marker, bytes(self.body), self.request.method.decode())
        response = h11.Response(
            status_code=200,
            headers=[("x-marker", marker), ("content-length", str(len(body)))],
        )
        self.out += self.h11.send(response)
        if mode == "close-mid":
            self.out += self.h11.send(h11.Data(data=body[: len(body) // 2]))
            self.closing = True
            return
        for part in self.world.split(body):
            self.out += self.h11.send(h11.Data(data=part))
        self.out += self.h11.send(h11.EndOfMessage())
        if self.h11.our_state is h11.MUST_CLOSE or self.idle_close:
            self.closing = True


def echo_body(marker: str, body: bytes, method: str = "POST") -> bytes:
    """What the echo services answer: the request's marker around its body."""
    tag = f"{method} {marker}".encode()
    return tag + b"|" + body + b"|" + tag


# --- the world ----------------------------------------------------------------------------------


class World:
    """Everything in memory: one gateway, receivers, clients, apps, fake time, one RNG."""

    def __init__(
        self,
        *,
        seed: int,
        gateway: GatewaySettings | None = None,
        receivers: list[ReceiverSettings] | None = None,
        app: Callable[..., Any] | None = None,
        capacity: tuple[int, int] = (1024, 65536),
        io_size: tuple[int, int] = (1, 65536),
        run_probability: float | None = None,
    ) -> None:
        self.rng = random.Random(seed)
        self.connections: dict[tuple[int, int], CoreConnection] = {}
        self.now = 1000.0
        self.steps = 0
        self.app = app
        self.tasks: list[Task] = []
        self._parked: dict[tuple[int, int], list[Task]] = {}
        self._capacity = capacity
        self._io = io_size
        self.run_probability = (
            run_probability if run_probability is not None else self.rng.uniform(0.3, 1.0)
        )
        self.gateway = GatewayCore(gateway or GatewaySettings())
        self.receivers = [
            ReceiverCore(dataclasses.replace(s, jitter=self.rng.random))
            for s in ([ReceiverSettings()] if receivers is None else receivers)
        ]
        self.tunnels: list[tuple[CoreConnection, CoreConnection]] = []  # (gateway, receiver)
        self.upstreams: list[Upstream] = []
        self.upstream_down = False
        self.upstream_idle_close = False
        self.app_tasks: list[AppTask] = []
        self.drops: list[float] = []  # when a tunnel was cut
        self.cut: list[tuple[float, CoreConnection]] = []  # (when, its gateway side)
        # [start, end] intervals during which the gateway had no receiver (end None: ongoing)
        self.outages: list[list[float | None]] = []
        self.hooks: list[Callable[[World], None]] = []  # run after every step
        for core in self.receivers:
            core.start(self.now)
            self.sync(core)

    # -- randomness --

    def capacity(self) -> int:
        return self._log_uniform(*self._capacity)

    def read_size(self) -> int:
        return self._log_uniform(*self._io)

    def write_size(self) -> int:
        return self._log_uniform(*self._io)

    def _log_uniform(self, low: int, high: int) -> int:
        return min(high, max(low, int(2 ** self.rng.uniform(0, high.bit_length()))))

    def split(self, data: bytes, max_parts: int = 6) -> list[bytes]:
        """``data`` cut at random places into at most ``max_parts`` pieces."""
        if len(data) < 2:
            return [data]
        cuts = sorted(self.rng.sample(range(1, len(data)), min(max_parts - 1, len(data) - 1)))
        cuts = cuts[: self.rng.randint(0, len(cuts))]
        bounds = [0, *cuts, len(data)]
        return [data[a:b] for a, b in itertools.pairwise(bounds)]

    # -- wake-ups --

    def park(self, core: Any, key: int, task: Task) -> None:
        task.waiting = True
        self._parked.setdefault((id(core), key), []).append(task)

    def sync(self, core: Any) -> None:
        """Fire the core's wake-ups; for a receiver, also start connections and app calls."""
        for key in core.pop_wakeups():
            for task in self._parked.pop((id(core), key), ()):
                task.woken()
        for cid in getattr(core, "pop_aborts", set)():
            conn = self.connections.get((id(core), cid))
            if conn is not None and not conn.finished:
                conn.end.reset()  # as a driver aborts the socket, a pending write too
                conn.finish()
        if isinstance(core, ReceiverCore):
            for request in core.pop_connects():
                self._connect(core, request)
            for call_id, scope in core.pop_app_calls():
                task = AppTask(self, core, call_id, scope)
                self.app_tasks.append(task)
                self.tasks.append(task)

    def _connect(self, core: ReceiverCore, request: ConnectRequest) -> None:
        if request.purpose == "upstream":
            if self.upstream_down:
                core.connect_failed(request.cid, self.now, "connection refused")
                self.sync(core)
                return
            ours, theirs = socket_pair(self.capacity())
            self.upstreams.append(Upstream(self, theirs, idle_close=self.upstream_idle_close))
            core.connected(request.cid, self.now)
            CoreConnection(self, core, request.cid, ours, "upstream")
            self.sync(core)
            return
        gw_end, rx_end = socket_pair(self.capacity())
        gw_cid = self.gateway.open_tunnel(self.now, ("192.0.2.1", 50000 + request.cid))
        gw_conn = CoreConnection(self, self.gateway, gw_cid, gw_end, "tunnel")
        self.sync(self.gateway)
        core.connected(request.cid, self.now)
        rx_conn = CoreConnection(self, core, request.cid, rx_end, "link")
        self.tunnels.append((gw_conn, rx_conn))
        self.sync(core)

    # -- actions --

    def drop_tunnel(self, index: int | None = None) -> bool:
        """Cut one live tunnel (a reset: queued bytes are lost)."""
        live = [t for t in self.tunnels if not t[0].finished and not t[1].finished]
        if not live:
            return False
        gw, _rx = live[self.rng.randrange(len(live)) if index is None else index]
        gw.end.reset()
        self.drops.append(self.now)
        self.cut.append((self.now, gw))
        return True

    def cores(self) -> list[GatewayCore | ReceiverCore]:
        return [self.gateway, *self.receivers]

    def run_due_timers(self) -> None:
        """Every core's timers, at their deadlines."""
        for core in self.cores():
            deadline = core.next_deadline()
            if deadline is not None and deadline <= self.now:
                core.handle_timer(self.now)
                self.sync(core)

    def next_timer(self) -> float:
        deadlines = [d for core in self.cores() if (d := core.next_deadline()) is not None]
        return min(deadlines, default=self.now + 3600.0)

    # -- running --

    def step(self) -> bool:
        """Run each runnable task with probability ``run_probability``; False if none was."""
        runnable = [t for t in self.tasks if t.runnable()]
        if runnable:
            self.rng.shuffle(runnable)
            ran = False
            for task in runnable:
                if task.runnable() and (self.rng.random() < self.run_probability or not ran):
                    task.step()
                    ran = True
            self.now += STEP_TIME
        elif any(t.sleeping() for t in self.tasks):
            self.now += STEP_TIME  # a task sleeps for some steps: time goes on step by step
        else:
            # idle: on to the next timer, but at most IDLE_STEP at a time, so that scenarios
            # counting steps (clients starting at step N) keep their pace in time
            self.now = max(self.now, min(self.next_timer(), self.now + IDLE_STEP))
        self.steps += 1
        self.run_due_timers()
        self._track_outage()
        for hook in self.hooks:
            hook(self)
        self.tasks = [t for t in self.tasks if not t.done]
        return bool(runnable)

    def _track_outage(self) -> None:
        down = not self.gateway.receivers
        ongoing = bool(self.outages) and self.outages[-1][1] is None
        if down and not ongoing:
            self.outages.append([self.now, None])
        elif not down and ongoing:
            self.outages[-1][1] = self.now

    def disturbed(self, start: float, end: float | None) -> bool:
        """Was a tunnel cut, or no receiver connected, at some time in [start, end]?"""
        end = self.now if end is None else end
        if any(start <= t <= end for t in self.drops):
            return True
        # a cut the gateway had not noticed yet when the request began (it reads a tunnel
        # only while it may: a v1 tunnel paused for a slow client notices late)
        if any(
            t <= end and (gw.finished_at is None or gw.finished_at >= start) for t, gw in self.cut
        ):
            return True
        return any(a <= end and (b is None or b >= start) for a, b in self.outages)

    def run(self, until: Callable[[], bool], *, max_time: float = 120.0) -> None:
        deadline = self.now + max_time
        while not until():
            self.step()
            if self.now > deadline:
                raise Stalled(self.describe())

    def settle(self, seconds: float = 2.0) -> None:
        """Let the world run a while after the clients are done (apps finish, timers fire)."""
        end = self.now + seconds
        while self.now < end:
            self.step()

    def wait_connected(self, tunnels: int = 1) -> None:
        self.run(lambda: len(self.gateway.receivers) >= tunnels, max_time=30.0)

    def describe(self) -> str:
        lines = [
            f"now={self.now:.3f} steps={self.steps} gateway in_flight={self.gateway.in_flight}"
        ]
        for task in self.tasks:
            if isinstance(task, HttpClient):
                states = [
                    (e.status, len(e.response_body), e.complete, e.aborted) for e in task.exchanges
                ]
                lines.append(
                    f"client cid={task.cid} current={task.current} out={len(task.out)} "
                    f"cont={task.waiting_continue} exchanges={states} conn={task.conn!r}"
                )
            elif isinstance(task, AppTask):
                lines.append(f"app call={task.call_id} waiting={task.waiting}")
        for gw, rx in self.tunnels:
            lines.append(f"tunnel {gw!r} <-> {rx!r}")
        return "\n".join(lines)

    # -- invariants --

    def assert_no_leaks(self) -> None:
        """Nothing left over once every exchange is over."""
        gateway = self.gateway
        assert gateway.in_flight == 0, self.describe()
        for conn in gateway._conns.values():
            assert type(conn).__name__ == "TunnelConn", f"gateway still holds {conn!r}"
        for tunnel in gateway.tunnels.open:
            session = tunnel.session
            assert session is not None
            assert session.stream_count == 0, f"gateway streams left: {list(session._streams)}"
            assert not session._decoder._partials, f"gateway partials: {session._decoder._partials}"
            assert not tunnel.congested and not tunnel.paused
        for core in self.receivers:
            assert core.in_flight == 0, f"receiver calls left: {core._calls}"
            for link in core._links:
                assert not link.streams, f"receiver link streams left: {link.streams}"
                if link.session is not None:
                    session = link.session
                    assert session.stream_count == 0, f"receiver streams: {list(session._streams)}"
                    partials = session._decoder._partials
                    assert not partials, f"receiver partials: {partials}"
        for task in self.app_tasks:
            assert task.done, f"app call {task.call_id} still running"


# --- the test app -------------------------------------------------------------------------------


def pattern(marker: str, size: int) -> bytes:
    """``size`` bytes that belong to ``marker`` alone."""
    return random.Random(marker).randbytes(size)


def make_app(world: World) -> Callable[..., Any]:
    """An ASGI app whose behaviour each request picks with ``x-mode``:

    ``echo`` (default): read the whole body (sleeping ``x-nap`` steps between reads), answer
    :func:`echo_body` in random parts, with a Content-Length when ``x-cl: 1``; ``stream``: answer each body part as it arrives;
    ``early``: answer ``tag`` without reading the body; ``big``: answer ``x-size`` bytes of
    :func:`pattern` (in ``x-part``-byte parts if given); ``fail-before`` / ``fail-mid``: raise before / after the response head;
    ``hang``: never answer, wait for the disconnect.
    """

    async def nap() -> None:
        if world.rng.random() < 0.3:
            await pause(world.rng.randint(1, 20))

    async def app(scope: dict, receive: Callable, send: Callable) -> None:
        assert scope["type"] == "http"
        headers = dict(scope["headers"])
        mode = headers.get(b"x-mode", b"echo").decode()
        marker = headers.get(b"x-marker", b"").decode()
        tag = f"{scope['method']} {marker}".encode()
        start: dict[str, Any] = {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"x-marker", marker.encode()), (b"content-type", b"application/x-test")],
        }
        await nap()
        if mode == "fail-before":
            raise RuntimeError("the app failed before answering")
        if mode == "hang":
            while (await receive())["type"] != "http.disconnect":
                pass
            return
        if mode in ("early", "fail-mid"):
            await send(start)
            await nap()
            await send({"type": "http.response.body", "body": tag, "more_body": mode != "early"})
            if mode == "fail-mid":
                raise RuntimeError("the app failed mid-response")
            return
        if mode == "big":
            data = pattern(marker, int(headers[b"x-size"]))
            await send(start)
            step = int(headers.get(b"x-part", b"0"))  # fixed part size, else random cuts
            parts = (
                [data[i : i + step] for i in range(0, len(data), step)]
                if step
                else world.split(data, max_parts=64)
            )
            for part in parts:
                await send({"type": "http.response.body", "body": part, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        if mode == "stream":
            await send(start)
            await send({"type": "http.response.body", "body": tag + b"|", "more_body": True})
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                await send(
                    {"type": "http.response.body", "body": message["body"], "more_body": True}
                )
                if not message.get("more_body", False):
                    break
                await nap()
            await send({"type": "http.response.body", "body": b"|" + tag, "more_body": False})
            return
        body = bytearray()
        slow = int(headers.get(b"x-nap", b"0"))  # steps to sleep between receives
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message["body"]
            if not message.get("more_body", False):
                break
            await (pause(slow) if slow else nap())
        answer = echo_body(marker, bytes(body), scope["method"])
        if headers.get(b"x-cl") == b"1":
            start["headers"].append((b"content-length", str(len(answer)).encode()))
        await send(start)
        parts = world.split(answer)
        for i, part in enumerate(parts):
            await nap()
            last = i == len(parts) - 1
            await send({"type": "http.response.body", "body": part, "more_body": not last})

    return app
