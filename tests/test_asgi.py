"""AsgiHttpCall / LifespanCycle / build_scope: the ASGI 3 back end.

Real apps (Starlette) run under asyncio through the tiny driver below, which wraps the
sans-IO machines exactly as a receiver driver would.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Route

from anpx_core.asgi import (
    AsgiError,
    AsgiHttpCall,
    ClientDisconnected,
    LifespanCycle,
    ResponseAborted,
    ResponseBody,
    ResponseStart,
    build_scope,
)
from anpx_core.meta import RequestHead

from .hypothesis_profiles import examples

CLIENT = ("203.0.113.7", 50123)
SERVER = ("127.0.0.1", 8000)


def scope_for(target: str, headers=(), method: str = "GET", state=None) -> dict:
    head = RequestHead(method, target, list(headers))
    return build_scope(head, client=CLIENT, server=SERVER, scheme="https", state=state)


# --- build_scope -----------------------------------------------------------------------------


def test_scope_fields() -> None:
    scope = build_scope(
        RequestHead("get", "/api/v1/run?q=test&x=%20y", [("Host", "example.com")]),
        client=CLIENT,
        server=SERVER,
        scheme="https",
        root_path="/mount",
        http_version="1.0",
    )
    assert scope == {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.0",
        "method": "GET",
        "scheme": "https",
        "path": "/api/v1/run",
        "raw_path": b"/api/v1/run",
        "query_string": b"q=test&x=%20y",
        "root_path": "/mount",
        "headers": [(b"host", b"example.com")],
        "client": CLIENT,
        "server": SERVER,
        "state": {},
    }
    assert "extensions" not in scope  # no trailers (or any other extension) advertised


@pytest.mark.parametrize(
    ("target", "path", "raw_path", "query"),
    [
        ("/a%2Fb/c", "/a/b/c", b"/a%2Fb/c", b""),
        ("/caf%C3%A9/%7Euser", "/caf\u00e9/~user", b"/caf%C3%A9/%7Euser", b""),
        ("/bad%E9%FF", "/bad\ufffd\ufffd", b"/bad%E9%FF", b""),  # not UTF-8: U+FFFD
        ("/caf\xc3\xa9", "/caf\u00e9", b"/caf\xc3\xa9", b""),  # raw UTF-8 bytes as latin-1
        ("/sp%20ace+plus", "/sp ace+plus", b"/sp%20ace+plus", b""),  # + is not a space
        ("/p?", "/p", b"/p", b""),
        ("/p?a=1&a=2&b", "/p", b"/p", b"a=1&a=2&b"),
        ("/p?a=%2F?b", "/p", b"/p", b"a=%2F?b"),
        ("/p?q=caf\xc3\xa9", "/p", b"/p", b"q=caf\xc3\xa9"),
        ("http://example.com:8080/x/y?z=1", "/x/y", b"/x/y", b"z=1"),
        ("https://example.com?z", "/", b"/", b"z"),
        ("*", "*", b"*", b""),
    ],
)
def test_scope_tricky_targets(target: str, path: str, raw_path: bytes, query: bytes) -> None:
    scope = scope_for(target)
    assert (scope["path"], scope["raw_path"], scope["query_string"]) == (path, raw_path, query)


def test_scope_headers_keep_order_duplicates_and_bytes() -> None:
    scope = scope_for(
        "/",
        [
            ("Cookie", "a=1"),
            ("X-Latin", "caf\xe9"),  # the byte 0xE9 on the wire
            ("x-utf8", "caf\xc3\xa9"),  # UTF-8 bytes on the wire
            ("x-from-v1", "\u65e5\u672c"),  # a v1 peer's decoded text: only UTF-8 fits
            ("Set-Cookie", "b=2"),
            ("set-cookie", "c=3"),
        ],
    )
    assert scope["headers"] == [
        (b"cookie", b"a=1"),
        (b"x-latin", b"caf\xe9"),
        (b"x-utf8", b"caf\xc3\xa9"),
        (b"x-from-v1", b"\xe6\x97\xa5\xe6\x9c\xac"),
        (b"set-cookie", b"b=2"),
        (b"set-cookie", b"c=3"),
    ]


def test_scope_state_is_a_copy() -> None:
    state = {"db": "pool"}
    scope = scope_for("/", state=state)
    scope["state"]["request_only"] = True
    assert state == {"db": "pool"} and scope["state"] == {"db": "pool", "request_only": True}


def test_starlette_reads_the_scope() -> None:
    request = Request(scope_for("/caf%C3%A9%2Fx?a=1&a=2", [("host", "example.com")]))
    assert request.url.path == "/caf\u00e9/x"
    assert request.query_params.getlist("a") == ["1", "2"]
    assert request.client.host == CLIENT[0] and request.url.scheme == "https"
    assert request.headers["host"] == "example.com"


# --- the receive side ------------------------------------------------------------------------


def test_receive_streams_body_parts_then_waits_for_disconnect() -> None:
    call = AsgiHttpCall(scope_for("/", method="POST"), max_buffered=100)
    assert call.receive() is None  # nothing yet
    call.body_received(b"ab")
    call.body_received(b"cd")
    assert call.buffered == 4 and call.consumed == 0
    assert call.receive() == {"type": "http.request", "body": b"abcd", "more_body": True}
    assert call.buffered == 0 and call.consumed == 4
    assert call.receive() is None
    call.body_received(b"e")
    call.body_ended()
    assert call.receive() == {"type": "http.request", "body": b"e", "more_body": False}
    assert call.consumed == 5
    assert call.receive() is None  # an app listening for disconnect waits
    call.disconnected()
    assert call.receive() == {"type": "http.disconnect"}
    assert call.receive() == {"type": "http.disconnect"}


def test_empty_body_request() -> None:
    call = AsgiHttpCall(scope_for("/"), max_buffered=10)
    call.body_ended()
    assert call.receive() == {"type": "http.request", "body": b"", "more_body": False}


def test_receive_after_response_complete_is_disconnect() -> None:
    call = AsgiHttpCall(scope_for("/"), max_buffered=10)
    call.send({"type": "http.response.start", "status": 200})
    call.send({"type": "http.response.body", "body": b"x"})
    assert call.response_complete
    assert call.receive() == {"type": "http.disconnect"}


def test_max_buffered_is_enforced() -> None:
    call = AsgiHttpCall(scope_for("/", method="POST"), max_buffered=5)
    call.body_received(b"12345")
    with pytest.raises(AsgiError, match="max_buffered"):
        call.body_received(b"6")
    assert call.receive()["body"] == b"12345"
    call.body_received(b"67890")  # room again once the app took the bytes
    call.body_ended()
    with pytest.raises(AsgiError):
        call.body_received(b"late")


def test_disconnect_drops_buffered_body_and_send_raises_oserror() -> None:
    call = AsgiHttpCall(scope_for("/", method="POST"), max_buffered=100)
    call.body_received(b"pending")
    call.send({"type": "http.response.start", "status": 200})
    call.disconnected()
    assert call.is_disconnected and call.buffered == 0
    assert call.receive() == {"type": "http.disconnect"}
    call.body_received(b"late data is ignored")
    # ASGI HTTP spec 2.4: send() on a closed connection raises an OSError subclass.
    with pytest.raises(ClientDisconnected) as info:
        call.send({"type": "http.response.body", "body": b"x", "more_body": True})
    assert isinstance(info.value, OSError)
    assert call.app_returned(info.value) == []  # the stream is gone: nothing owed


# --- the send side ---------------------------------------------------------------------------


def test_send_produces_response_parts() -> None:
    call = AsgiHttpCall(scope_for("/"), max_buffered=10)
    start = call.send(
        {
            "type": "http.response.start",
            "status": 201,
            "headers": [
                (b"Content-Type", b"text/plain"),
                [b"x-latin", b"caf\xe9"],
                (b"set-cookie", b"a=1"),
                (b"set-cookie", b"b=2"),
                (b"transfer-encoding", b"chunked"),  # the server must ignore it (spec)
                (b"connection", b"keep-alive"),
            ],
        }
    )
    assert start == [
        ResponseStart(
            head=type(start[0].head)(
                201,
                "Created",
                [
                    ("content-type", "text/plain"),
                    ("x-latin", "caf\xe9"),
                    ("set-cookie", "a=1"),
                    ("set-cookie", "b=2"),
                ],
            )
        )
    ]
    assert call.response_started and not call.response_complete
    assert call.send({"type": "http.response.body", "body": b"a", "more_body": True}) == [
        ResponseBody(b"a", True)
    ]
    assert call.send({"type": "http.response.body", "more_body": True}) == []  # nothing to send
    assert call.send({"type": "http.response.body", "body": bytearray(b"z")}) == [
        ResponseBody(b"z", False)
    ]
    assert call.response_complete
    assert call.app_returned(None) == []


@pytest.mark.parametrize(
    ("messages", "error"),
    [
        ([{"type": "http.response.body", "body": b"x"}], "expected ASGI message 'http.response.start'"),
        ([{"type": "http.response.start", "status": 200}] * 2, "expected ASGI message 'http.response.body'"),
        ([{"type": "http.response.start", "status": 200}, {"type": "http.response.body"}, {"type": "http.response.body"}], "after the response completed"),
        ([{"type": "http.response.start", "status": 200, "trailers": True}], "trailers"),
        ([{"type": "http.response.start", "status": 200}, {"type": "http.response.trailers", "headers": []}], "http.response.trailers"),
        ([{"type": "http.response.pathsend", "path": "/etc/hosts"}], "http.response.pathsend"),
        ([{"type": "http.response.start", "status": "200"}], "'status'"),
        ([{"type": "http.response.start", "status": True}], "'status'"),
        ([{"type": "http.response.start", "status": 101}], "'status'"),
        ([{"type": "http.response.start", "status": 200, "headers": [("x", "str")]}], "byte string"),
        ([{"type": "http.response.start", "status": 200, "headers": [(b"x", b"a\r\nb: c")]}], "CR, LF"),
        ([{"type": "http.response.start", "status": 200, "headers": [(b"bad name", b"v")]}], "header name"),
        ([{"type": "http.response.start", "status": 200, "headers": [(b"x",)]}], "pair"),
        ([{"type": "http.response.start", "status": 200, "headers": 5}], "iterable"),
        ([{"type": "http.response.start", "status": 200}, {"type": "http.response.body", "body": "text"}], "byte string"),
        ([{"type": "http.response.start", "status": 200}, {"type": "http.response.body", "more_body": 1}], "more_body"),
        ([{"status": 200}], "'type'"),
        (["http.response.start"], "dicts"),
    ],
)  # fmt: skip
def test_invalid_messages_raise(messages: list, error: str) -> None:
    call = AsgiHttpCall(scope_for("/"), max_buffered=10)
    *good, bad = messages
    for message in good:
        call.send(message)
    with pytest.raises(AsgiError, match=error):
        call.send(bad)


def test_send_after_app_returned_raises() -> None:
    call = AsgiHttpCall(scope_for("/"), max_buffered=10)
    call.app_returned(None)
    with pytest.raises(AsgiError, match="after the application returned"):
        call.send({"type": "http.response.start", "status": 200})
    with pytest.raises(AsgiError):
        call.app_returned(None)


def _is_500(parts: list) -> bool:
    return (
        len(parts) == 2
        and parts[0].head.status == 500
        and ("content-type", "text/plain; charset=utf-8") in parts[0].head.headers
        and parts[1] == ResponseBody(b"Internal Server Error", False)
    )


def test_app_returned_outcomes() -> None:
    def call_after(*messages: dict) -> AsgiHttpCall:
        call = AsgiHttpCall(scope_for("/"), max_buffered=10)
        for message in messages:
            call.send(message)
        return call

    start = {"type": "http.response.start", "status": 200}
    assert _is_500(call_after().app_returned(RuntimeError("boom")))
    assert _is_500(call_after().app_returned(None))  # returned without a response
    [aborted] = call_after(start).app_returned(RuntimeError("boom"))
    assert isinstance(aborted, ResponseAborted) and "RuntimeError" in aborted.reason
    [aborted] = call_after(start, {"type": "http.response.body", "more_body": True}).app_returned(
        None
    )
    assert isinstance(aborted, ResponseAborted) and "without completing" in aborted.reason
    assert call_after(start, {"type": "http.response.body"}).app_returned(ValueError()) == []


# --- a tiny asyncio driver -------------------------------------------------------------------


class Driver:
    """Runs one ASGI app call the way a receiver driver does."""

    def __init__(self, app, call: AsgiHttpCall) -> None:
        self.app, self.call = app, call
        self.parts: list = []
        self.wake = asyncio.Event()
        self.progress = asyncio.Event()

    async def receive(self) -> dict:
        while True:
            self.wake.clear()
            message = self.call.receive()
            if message is not None:
                return message
            await self.wake.wait()

    async def send(self, message: dict) -> None:
        self.parts += self.call.send(message)
        self.progress.set()
        if self.call.response_complete:
            self.wake.set()

    def feed(self, action: Callable[[], None]) -> None:
        action()
        self.wake.set()

    async def run(self) -> None:
        try:
            await self.app(self.call.scope, self.receive, self.send)
        except Exception as exc:
            self.parts += self.call.app_returned(exc)
        else:
            self.parts += self.call.app_returned(None)

    async def wait_for_part(self, predicate: Callable[[list], bool]) -> None:
        while not predicate(self.parts):
            self.progress.clear()
            await asyncio.wait_for(self.progress.wait(), 5)

    def body(self) -> bytes:
        return b"".join(p.data for p in self.parts if isinstance(p, ResponseBody))


async def upper_stream(request: Request) -> StreamingResponse:
    async def gen() -> AsyncIterator[bytes]:
        async for chunk in request.stream():
            if chunk:
                yield chunk.upper()

    return StreamingResponse(gen(), media_type="text/plain")


async def summary(request: Request) -> JSONResponse:
    body = await request.body()
    return JSONResponse({"length": len(body), "text": body.decode(), "db": request.state.db})


async def boom(request: Request) -> PlainTextResponse:
    raise RuntimeError("boom")


async def forever(request: Request) -> StreamingResponse:
    async def gen() -> AsyncIterator[bytes]:
        while True:
            yield b"tick"
            await asyncio.sleep(0)

    return StreamingResponse(gen())


SHUTDOWN_LOG: list[str] = []


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[dict]:
    yield {"db": "connected"}
    SHUTDOWN_LOG.append("closed")


APP = Starlette(
    routes=[
        Route("/upper", upper_stream, methods=["POST"]),
        Route("/summary", summary, methods=["POST"]),
        Route("/boom", boom),
        Route("/forever", forever),
    ],
    lifespan=lifespan,
)


def test_starlette_streams_request_and_response_bodies() -> None:
    async def main() -> Driver:
        drv = Driver(APP, AsgiHttpCall(scope_for("/upper", method="POST"), max_buffered=64))
        task = asyncio.create_task(drv.run())
        drv.feed(lambda: drv.call.body_received(b"first "))
        # The first response part leaves before the request body has ended: both stream.
        await drv.wait_for_part(lambda parts: b"FIRST " in drv.body())
        assert not drv.call.response_complete
        drv.feed(lambda: drv.call.body_received(b"second"))
        await drv.wait_for_part(lambda parts: b"SECOND" in drv.body())
        drv.feed(drv.call.body_ended)
        await asyncio.wait_for(task, 5)
        return drv

    drv = asyncio.run(main())
    start = drv.parts[0]
    assert isinstance(start, ResponseStart) and start.head.status == 200
    assert ("content-type", "text/plain; charset=utf-8") in start.head.headers
    assert drv.body() == b"FIRST SECOND"
    assert drv.parts[-1] == ResponseBody(b"", False)
    assert all(p.more for p in drv.parts[1:-1])


def test_starlette_exception_becomes_500_and_failing_app_too() -> None:
    async def run(app, target: str) -> Driver:
        drv = Driver(app, AsgiHttpCall(scope_for(target), max_buffered=64))
        drv.feed(drv.call.body_ended)
        await asyncio.wait_for(drv.run(), 5)
        return drv

    # Starlette answers 500 itself and re-raises: nothing more is owed.
    drv = asyncio.run(run(APP, "/boom"))
    assert drv.parts[0].head.status == 500 and drv.call.response_complete
    assert drv.parts[-1] == ResponseBody(b"Internal Server Error", False)

    async def raw_app(scope, receive, send) -> None:
        await receive()
        raise ValueError("no response at all")

    assert _is_500(asyncio.run(run(raw_app, "/")).parts)

    async def wrong_order(scope, receive, send) -> None:
        await send({"type": "http.response.body", "body": b"oops"})

    assert _is_500(asyncio.run(run(wrong_order, "/")).parts)


def test_disconnect_stops_an_endless_starlette_stream() -> None:
    async def main() -> Driver:
        drv = Driver(APP, AsgiHttpCall(scope_for("/forever"), max_buffered=64))
        drv.feed(drv.call.body_ended)
        task = asyncio.create_task(drv.run())
        await drv.wait_for_part(lambda parts: drv.body().count(b"tick") >= 3)
        drv.feed(drv.call.disconnected)
        await asyncio.wait_for(task, 5)  # send() raised OSError, Starlette gave up
        return drv

    drv = asyncio.run(main())
    assert not any(isinstance(p, ResponseAborted) for p in drv.parts)
    assert not drv.call.response_complete


def test_raw_app_sees_body_parts_then_disconnect() -> None:
    seen: list[dict] = []

    async def app(scope, receive, send) -> None:
        while True:
            message = await receive()
            seen.append(message)
            if message["type"] == "http.disconnect":
                return

    async def main() -> Driver:
        drv = Driver(app, AsgiHttpCall(scope_for("/", method="POST"), max_buffered=64))
        task = asyncio.create_task(drv.run())
        for action in (
            lambda: drv.call.body_received(b"one"),
            lambda: drv.call.body_received(b"two"),
            drv.call.body_ended,
            drv.call.disconnected,
        ):
            drv.feed(action)
            for _ in range(3):
                await asyncio.sleep(0)
        await asyncio.wait_for(task, 5)
        return drv

    drv = asyncio.run(main())
    assert seen == [
        {"type": "http.request", "body": b"one", "more_body": True},
        {"type": "http.request", "body": b"two", "more_body": True},
        {"type": "http.request", "body": b"", "more_body": False},
        {"type": "http.disconnect"},
    ]
    assert drv.parts == []  # disconnected before any response: nothing owed


# --- lifespan --------------------------------------------------------------------------------


async def run_lifespan(app, cycle: LifespanCycle, serve=None) -> None:
    """Start the app's lifespan, ``await serve()`` if startup completed, then shut down."""
    wake = asyncio.Event()

    async def receive() -> dict:
        while (message := cycle.receive()) is None:
            wake.clear()
            await wake.wait()
        return message

    async def send(message: dict) -> None:
        cycle.send(message)

    async def main() -> None:
        try:
            await app(cycle.scope, receive, send)
        except Exception as exc:
            cycle.app_returned(exc)
        else:
            cycle.app_returned(None)

    task = asyncio.create_task(main())
    cycle.startup()
    wake.set()
    while not cycle.startup_done:
        await asyncio.sleep(0)
    if cycle.status == "started" and serve is not None:
        await serve()
    cycle.shutdown()
    wake.set()
    while not cycle.shutdown_done:
        await asyncio.sleep(0)
    await asyncio.wait_for(task, 5)


def test_starlette_lifespan_state_reaches_requests() -> None:
    SHUTDOWN_LOG.clear()
    cycle = LifespanCycle()
    drivers: list[Driver] = []

    async def serve() -> None:
        assert cycle.status == "started" and SHUTDOWN_LOG == []
        call = AsgiHttpCall(
            scope_for("/summary", method="POST", state=cycle.state), max_buffered=64
        )
        call.body_received(b"hi")
        call.body_ended()
        drivers.append(Driver(APP, call))
        await asyncio.wait_for(drivers[0].run(), 5)

    asyncio.run(run_lifespan(APP, cycle, serve))
    assert cycle.status == "stopped" and SHUTDOWN_LOG == ["closed"]
    assert drivers[0].body() == b'{"length":2,"text":"hi","db":"connected"}'


def test_lifespan_startup_failure() -> None:
    @contextlib.asynccontextmanager
    async def broken(app: Starlette) -> AsyncIterator[None]:
        raise ConnectionError("database unreachable")
        yield

    cycle = LifespanCycle()
    asyncio.run(run_lifespan(Starlette(lifespan=broken), cycle))
    assert cycle.status == "failed" and "database unreachable" in cycle.message


def test_app_without_lifespan_support() -> None:
    async def http_only(scope, receive, send) -> None:
        assert scope["type"] == "http"

    cycle = LifespanCycle()
    asyncio.run(run_lifespan(http_only, cycle))
    assert cycle.status == "unsupported" and "AssertionError" in cycle.message


def test_lifespan_transitions_are_checked() -> None:
    cycle = LifespanCycle()
    with pytest.raises(AsgiError, match="not valid in state 'idle'"):
        cycle.send({"type": "lifespan.startup.complete"})
    cycle.startup()
    assert cycle.receive() == {"type": "lifespan.startup"} and cycle.receive() is None
    with pytest.raises(AsgiError, match="not valid"):
        cycle.send({"type": "lifespan.shutdown.complete"})
    with pytest.raises(AsgiError, match="unknown lifespan message"):
        cycle.send({"type": "lifespan.startup.done"})
    cycle.send({"type": "lifespan.startup.complete"})
    assert cycle.startup_done and not cycle.shutdown_done
    with pytest.raises(AsgiError):
        cycle.send({"type": "lifespan.startup.complete"})
    cycle.shutdown()
    assert cycle.receive() == {"type": "lifespan.shutdown"}
    cycle.send({"type": "lifespan.shutdown.failed", "message": "left a mess"})
    assert cycle.status == "stop_failed" and cycle.message == "left a mess"
    assert cycle.shutdown_done


def test_lifespan_app_crash_after_startup_skips_shutdown() -> None:
    cycle = LifespanCycle()
    cycle.startup()
    assert cycle.receive() == {"type": "lifespan.startup"}
    cycle.send({"type": "lifespan.startup.complete"})
    cycle.app_returned(RuntimeError("died"))
    assert cycle.status == "error" and "died" in cycle.message
    cycle.shutdown()
    assert cycle.status == "error"
    assert cycle.receive() is None and cycle.shutdown_done


# --- property: any body split reaches the app intact ---------------------------------------


@settings(max_examples=examples(200), deadline=None)
@given(
    body=st.binary(max_size=4000),
    cuts=st.lists(st.integers(min_value=0, max_value=4000), max_size=20),
    reads=st.lists(st.booleans(), min_size=1, max_size=40),
)
def test_any_split_reaches_the_app_intact(body: bytes, cuts: list[int], reads: list[bool]) -> None:
    call = AsgiHttpCall(scope_for("/", method="POST"), max_buffered=len(body))
    bounds = sorted({min(c, len(body)) for c in cuts} | {0, len(body)})
    got: list[dict] = []

    def read() -> None:
        if (message := call.receive()) is not None:
            got.append(message)

    for i, (a, b) in enumerate(itertools.pairwise(bounds)):
        call.body_received(body[a:b])
        assert call.buffered <= len(body)
        if reads[i % len(reads)]:
            read()
    call.body_ended()
    read()
    assert call.receive() is None
    assert b"".join(m["body"] for m in got) == body and call.consumed == len(body)
    assert [m["more_body"] for m in got] == [True] * (len(got) - 1) + [False]


@settings(max_examples=examples(25), deadline=None)
@given(parts=st.lists(st.binary(min_size=1, max_size=300), max_size=8))
def test_any_split_reaches_a_starlette_app_intact(parts: list[bytes]) -> None:
    async def main() -> Driver:
        drv = Driver(APP, AsgiHttpCall(scope_for("/upper", method="POST"), max_buffered=300))
        task = asyncio.create_task(drv.run())
        for part in parts:
            drv.feed(lambda part=part: drv.call.body_received(part))
            await drv.wait_for_part(lambda _: drv.call.buffered == 0)
        drv.feed(drv.call.body_ended)
        await asyncio.wait_for(task, 5)
        return drv

    drv = asyncio.run(main())
    assert drv.body() == b"".join(parts).upper()


def test_lifespan_app_that_returned_after_startup_needs_no_shutdown() -> None:
    cycle = LifespanCycle()
    cycle.startup()
    assert cycle.receive() == {"type": "lifespan.startup"}
    cycle.send({"type": "lifespan.startup.complete"})
    cycle.app_returned(None)
    assert cycle.status == "started" and not cycle.shutdown_done
    cycle.shutdown()  # nobody is left to receive lifespan.shutdown
    assert cycle.receive() is None and cycle.status == "stopped" and cycle.shutdown_done
