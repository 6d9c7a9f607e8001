"""anpx_host.wsgi: WSGI apps served as ASGI on threads the driver hands in.

The bridge runs here on a Threads made of anyio's (under asyncio and trio), with a scripted
ASGI client; then Flask runs end to end through a real gateway and both receiver drivers.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import httpx
import pytest

from anpx_core.receiver import ReceiverSettings
from anpx_host.wsgi import WsgiApp

from .deploy import start_gateway, start_receiver, wait_until

BACKENDS = ["asyncio", "trio"]
WAIT = 5.0


class AnyioThreads:
    """anpx_host.wsgi.Threads on anyio, for either backend."""

    def __init__(self) -> None:
        self.limiter: anyio.CapacityLimiter | None = None

    async def run_sync(self, fn: Callable[[], Any]) -> Any:
        if self.limiter is None:
            self.limiter = anyio.CapacityLimiter(4)
        return await anyio.to_thread.run_sync(fn, limiter=self.limiter)

    def from_thread(self, async_fn: Callable[..., Any], *args: Any) -> Any:
        return anyio.from_thread.run(async_fn, *args)


def http_scope(**overrides: Any) -> dict[str, Any]:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/",
        "raw_path": b"/",
        "query_string": b"",
        "root_path": "",
        "headers": [],
        "client": ("203.0.113.5", 40001),
        "server": ("example.test", 8080),
    }
    scope.update(overrides)
    return scope


class Client:
    """A scripted ASGI server side: request body parts go in, sent messages are kept."""

    def __init__(self, app: WsgiApp) -> None:
        self.app = app
        self.sent: list[dict] = []
        self._sent_more: anyio.Event | None = None
        self.to_app, self.from_client = anyio.create_memory_object_stream[dict](100)

    async def receive(self) -> dict:
        return await self.from_client.receive()

    async def send(self, message: dict) -> None:
        self.sent.append(message)
        if self._sent_more is not None:
            self._sent_more.set()
            self._sent_more = None

    async def wait_sent(self, count: int) -> None:
        """Until the app has sent ``count`` messages."""
        while len(self.sent) < count:
            if self._sent_more is None:
                self._sent_more = anyio.Event()
            await self._sent_more.wait()

    async def call(self, scope: dict | None = None) -> None:
        await self.app(scope or http_scope(), self.receive, self.send)

    @property
    def body(self) -> bytes:
        return b"".join(m["body"] for m in self.sent if m["type"] == "http.response.body")

    @property
    def start(self) -> dict:
        return next(m for m in self.sent if m["type"] == "http.response.start")


def wsgi(app: Callable[..., Any]) -> WsgiApp:
    bridge = WsgiApp(app, '"test:app"')
    bridge.threads = AnyioThreads()
    return bridge


def run(backend: str, fn: Callable[[], Any]) -> Any:
    async def bounded() -> Any:
        with anyio.fail_after(20):
            return await fn()

    return anyio.run(bounded, backend=backend)


def simple(body: bytes = b"ok", status: str = "200 OK"):
    def app(environ, start_response):
        start_response(status, [("Content-Type", "text/plain")])
        return [body]

    return app


# --- environ ----------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_environ_from_the_scope(backend: str) -> None:
    seen: dict = {}

    def app(environ, start_response):
        seen.update(environ)
        return simple()(environ, start_response)

    scope = http_scope(
        method="POST",
        scheme="https",
        root_path="/api",
        path="/api/café/x y",
        raw_path=b"/api/caf%C3%A9/x%20y%2Fz",
        query_string=b"a=1&b=%20",
        headers=[
            (b"host", b"example.test"),
            (b"content-type", b"text/plain"),
            (b"content-length", b"0"),
            (b"x-many", b"1"),
            (b"x-many", b"2"),
            (b"cookie", b"a=1"),
            (b"cookie", b"b=2"),
            (b"x_sneaky", b"dropped"),
        ],
    )
    client = Client(wsgi(app))

    async def go() -> None:
        await client.to_app.send({"type": "http.request", "body": b"", "more_body": False})
        await client.call(scope)

    run(backend, go)
    expected = {
        "REQUEST_METHOD": "POST",
        "SCRIPT_NAME": "/api",
        "PATH_INFO": "/caf\xc3\xa9/x y/z",  # PEP 3333: decoded bytes, as latin-1
        "QUERY_STRING": "a=1&b=%20",
        "SERVER_NAME": "example.test",
        "SERVER_PORT": "8080",
        "REMOTE_ADDR": "203.0.113.5",
        "REMOTE_PORT": "40001",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "CONTENT_TYPE": "text/plain",
        "CONTENT_LENGTH": "0",
        "HTTP_HOST": "example.test",
        "HTTP_X_MANY": "1,2",
        "HTTP_COOKIE": "a=1; b=2",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "https",
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    assert {k: seen.get(k) for k in expected} == expected
    assert "HTTP_X_SNEAKY" not in seen and "HTTP_CONTENT_TYPE" not in seen
    assert client.start == {
        "type": "http.response.start",
        "status": 200,
        "headers": [(b"content-type", b"text/plain")],
    }
    assert client.sent[-1] == {"type": "http.response.body", "body": b"", "more_body": False}


def test_environ_defaults_without_server_or_client() -> None:
    seen: dict = {}

    def app(environ, start_response):
        seen.update(environ)
        return simple()(environ, start_response)

    client = Client(wsgi(app))

    async def go() -> None:
        await client.to_app.send({"type": "http.request", "body": b""})
        await client.call(http_scope(server=None, client=None, raw_path=None, path="/p"))

    run("asyncio", go)
    assert (seen["SERVER_NAME"], seen["SERVER_PORT"], seen["PATH_INFO"]) == (
        "localhost",
        "80",
        "/p",
    )
    assert "REMOTE_ADDR" not in seen and "CONTENT_LENGTH" not in seen


# --- request body -----------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_request_body_is_read_while_the_client_sends(backend: str) -> None:
    """Each part goes in only once the app has read the one before: a bridge that waited for
    the whole body first would never answer (and fail_after would say so)."""
    parts = [b"alpha-", b"beta-", b"gamma"]
    got: list[bytes] = []
    read = [threading.Event() for _ in parts]  # set by the app's thread as it reads each part

    def app(environ, start_response):
        for part, done in zip(parts, read, strict=True):
            got.append(environ["wsgi.input"].read(len(part)))
            done.set()
        got.append(environ["wsgi.input"].read())
        start_response("200 OK", [])
        return [b"|".join(got)]

    client = Client(wsgi(app))

    async def feed() -> None:
        for i, part in enumerate(parts):
            more = i < len(parts) - 1
            await client.to_app.send({"type": "http.request", "body": part, "more_body": more})
            assert await anyio.to_thread.run_sync(read[i].wait, WAIT)

    async def go() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(feed)
            await client.call()

    run(backend, go)
    assert client.body == b"alpha-|beta-|gamma|"


@pytest.mark.parametrize("backend", BACKENDS)
def test_readline_readlines_and_iteration_across_messages(backend: str) -> None:
    pieces = [b"one\ntw", b"", b"o\nthr", b"ee\nfour\nfi", b"ve"]
    results: dict[str, Any] = {}

    def app(environ, start_response):
        body = environ["wsgi.input"]
        results["line"] = body.readline()
        results["limited"] = body.readline(2)
        results["rest_of_line"] = body.readline()
        results["lines"] = body.readlines(1)
        results["iterated"] = list(body)
        results["after"] = body.read()
        start_response("204 No Content", [])
        return []

    client = Client(wsgi(app))

    async def go() -> None:
        for i, piece in enumerate(pieces):
            more = i < len(pieces) - 1
            await client.to_app.send({"type": "http.request", "body": piece, "more_body": more})
        await client.call()

    run(backend, go)
    assert results == {
        "line": b"one\n",
        "limited": b"tw",
        "rest_of_line": b"o\n",
        "lines": [b"three\n"],
        "iterated": [b"four\n", b"five"],
        "after": b"",
    }
    assert client.start["status"] == 204 and client.body == b""


def test_disconnect_while_reading_raises_oserror() -> None:
    errors: list[BaseException] = []

    def app(environ, start_response):
        try:
            environ["wsgi.input"].read()
        except OSError as exc:
            errors.append(exc)
            raise
        raise AssertionError("read() returned after a disconnect")

    client = Client(wsgi(app))

    async def go() -> None:
        await client.to_app.send({"type": "http.request", "body": b"x", "more_body": True})
        await client.to_app.send({"type": "http.disconnect"})
        with pytest.raises(OSError, match="client disconnected"):
            await client.call()

    run("trio", go)
    assert len(errors) == 1 and client.sent == []


# --- response ---------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_response_is_streamed_chunk_by_chunk(backend: str) -> None:
    gate = threading.Event()
    closed = threading.Event()

    class Body:
        def __iter__(self) -> Iterator[bytes]:
            yield b""  # empty: must not send the head on its own
            yield b"first"
            if not gate.wait(WAIT):
                yield b"(gate timed out)"
            yield b"second"

        def close(self) -> None:
            closed.set()

    def app(environ, start_response):
        start_response("200 OK", [("X-A", "1")])
        return Body()

    client = Client(wsgi(app))

    async def go() -> None:
        await client.to_app.send({"type": "http.request", "body": b""})
        async with anyio.create_task_group() as tg:
            tg.start_soon(client.call)
            await client.wait_sent(2)
            # The first chunk is out, with the head, while the app still waits.
            assert [m["type"] for m in client.sent] == ["http.response.start", "http.response.body"]
            assert client.sent[1] == {
                "type": "http.response.body",
                "body": b"first",
                "more_body": True,
            }
            gate.set()

    run(backend, go)
    assert client.body == b"firstsecond" and closed.is_set()
    assert client.sent[-1]["more_body"] is False


@pytest.mark.parametrize("backend", BACKENDS)
def test_large_bodies_both_ways(backend: str) -> None:
    upload = os.urandom(3 * 1024 * 1024 + 7)
    download = os.urandom(2 * 1024 * 1024 + 3)

    def app(environ, start_response):
        h, size = hashlib.sha256(), 0
        while chunk := environ["wsgi.input"].read(65536):
            h.update(chunk)
            size += len(chunk)
        start_response("200 OK", [("X-Sha", h.hexdigest()), ("X-Size", str(size))])
        return (download[i : i + 100_000] for i in range(0, len(download), 100_000))

    client = Client(wsgi(app))

    async def feed() -> None:
        step = 64 * 1024 + 1
        for i in range(0, len(upload), step):
            more = i + step < len(upload)
            await client.to_app.send(
                {"type": "http.request", "body": upload[i : i + step], "more_body": more}
            )

    async def go() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(feed)
            await client.call()

    run(backend, go)
    headers = dict(client.start["headers"])
    assert headers[b"x-sha"].decode() == hashlib.sha256(upload).hexdigest()
    assert headers[b"x-size"] == str(len(upload)).encode()
    assert client.body == download


def test_write_callable_comes_before_the_iterable() -> None:
    def app(environ, start_response):
        write = start_response("201 Created", [])
        write(b"written,")
        return [b"returned"]

    client = Client(wsgi(app))
    run("trio", client.call)
    assert client.start["status"] == 201 and client.body == b"written,returned"


# --- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_app_exception_before_start_response_is_raised(backend: str) -> None:
    def app(environ, start_response):
        raise KeyError("boom")

    client = Client(wsgi(app))

    async def go() -> None:
        with pytest.raises(KeyError, match="boom"):
            await client.call()

    run(backend, go)
    assert client.sent == []


def test_exc_info_replaces_an_unsent_head() -> None:
    def app(environ, start_response):
        start_response("200 OK", [("X-Old", "1")])
        try:
            raise ValueError("late")
        except ValueError:
            import sys

            start_response("500 Internal Server Error", [("X-New", "1")], sys.exc_info())
        return [b"error page"]

    client = Client(wsgi(app))
    run("asyncio", client.call)
    assert client.start["status"] == 500 and client.start["headers"] == [(b"x-new", b"1")]
    assert client.body == b"error page"


def test_exc_info_after_the_head_went_out_reraises_and_closes() -> None:
    closed: list[bool] = []

    class Body:
        def __init__(self, start_response) -> None:
            self.start_response = start_response

        def __iter__(self) -> Iterator[bytes]:
            yield b"partial"
            try:
                raise ValueError("mid-stream")
            except ValueError:
                import sys

                self.start_response("500 Internal Server Error", [], sys.exc_info())
            yield b"never"

        def close(self) -> None:
            closed.append(True)

    def app(environ, start_response):
        start_response("200 OK", [])
        return Body(start_response)

    client = Client(wsgi(app))

    async def go() -> None:
        with pytest.raises(ValueError, match="mid-stream"):
            await client.call()

    run("trio", go)
    assert client.start["status"] == 200 and client.body == b"partial" and closed == [True]


def test_start_response_misuse_is_an_error() -> None:
    def twice(environ, start_response):
        start_response("200 OK", [])
        start_response("200 OK", [])
        return []

    def never(environ, start_response):
        return [b""]

    def bad_status(environ, start_response):
        start_response("OK", [])
        return []

    def bytes_header(environ, start_response):
        start_response("200 OK", [(b"x", b"y")])
        return []

    cases = [
        (twice, RuntimeError, "second time"),
        (never, RuntimeError, "without calling start_response"),
        (bad_status, ValueError, "3-digit"),
        (bytes_header, TypeError, r"\(str, str\)"),
    ]
    for app, error, message in cases:
        client = Client(wsgi(app))

        async def go(client=client, error=error, message=message) -> None:
            with pytest.raises(error, match=message):
                await client.call()

        run("asyncio", go)
        assert client.sent == []


@pytest.mark.parametrize("backend", BACKENDS)
def test_send_failing_after_a_disconnect_stops_the_app(backend: str) -> None:
    produced: list[int] = []
    closed: list[bool] = []

    class Gone(OSError):
        pass

    class Body:
        def __iter__(self) -> Iterator[bytes]:
            for i in range(1000):
                produced.append(i)
                yield b"chunk"

        def close(self) -> None:
            closed.append(True)

    def app(environ, start_response):
        start_response("200 OK", [])
        return Body()

    client = Client(wsgi(app))

    async def send(message: dict) -> None:
        if len(client.sent) >= 3:
            raise Gone("the client went away")
        client.sent.append(message)

    async def go() -> None:
        with pytest.raises(Gone):
            await client.app(http_scope(), client.receive, send)

    run(backend, go)
    assert len(produced) == 3 and closed == [True]  # head+chunk, chunk, then the failing one


def test_wsgi_errors_go_to_the_log(caplog: pytest.LogCaptureFixture) -> None:
    def app(environ, start_response):
        print("first line", file=environ["wsgi.errors"])
        environ["wsgi.errors"].write("unterminated")
        return simple()(environ, start_response)

    with caplog.at_level(logging.ERROR, logger="anpx.wsgi"):
        run("trio", Client(wsgi(app)).call)
    assert [r.getMessage() for r in caplog.records if r.name == "anpx.wsgi"] == [
        "first line",
        "unterminated",
    ]


def test_lifespan_is_answered_and_threads_are_required() -> None:
    sent: list[dict] = []
    messages = iter([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])

    async def receive() -> dict:
        return next(messages)

    async def send(message: dict) -> None:
        sent.append(message)

    bridge = WsgiApp(simple(), '"test:app"')

    async def go() -> None:
        await bridge({"type": "lifespan"}, receive, send)
        with pytest.raises(RuntimeError, match='"test:app" is a WSGI app and nothing gave it'):
            await bridge(http_scope(), receive, send)
        with pytest.raises(RuntimeError, match="serves HTTP, not websocket"):
            await bridge({"type": "websocket"}, receive, send)

    run("trio", go)
    assert sent == [{"type": "lifespan.startup.complete"}, {"type": "lifespan.shutdown.complete"}]


# --- Flask end to end, through a gateway and each receiver driver -------------------------------


def flask_app(events: list[str]):
    from flask import Flask, Response, request

    app = Flask(__name__)

    @app.route("/echo/<path:rest>", methods=["GET", "POST"])
    def echo(rest: str):
        h, size = hashlib.sha256(), 0
        while chunk := request.stream.read(65536):
            h.update(chunk)
            size += len(chunk)
        return {
            "rest": rest,
            "args": request.args.to_dict(),
            "size": size,
            "sha256": h.hexdigest(),
            "remote": request.remote_addr,
            "forwarded": request.headers.get("X-Forwarded-For"),
        }

    @app.get("/endless")
    def endless():
        def parts():
            try:
                for i in range(100_000):
                    yield b"x" * 65536
                    events.append(f"part {i}")
            finally:
                events.append("closed")

        return Response(parts(), mimetype="application/octet-stream")

    @app.get("/fail")
    def fail():
        raise RuntimeError("flask handler failed")

    return app


@pytest.mark.parametrize("rc", ["trio", "asyncio"])
def test_flask_end_to_end(rc: str) -> None:
    events: list[str] = []
    flask = flask_app(events)
    flask.config["PROPAGATE_EXCEPTIONS"] = True  # the bridge's 500, not Flask's page
    gateway = start_gateway("trio")
    settings = ReceiverSettings(reconnect_delay=0.05)
    settings.gateway_urls = [f"ws://127.0.0.1:{gateway.obj.ports.tunnel}/"]
    receiver = start_receiver(rc, settings, WsgiApp(flask, '"test:flask"'))
    try:
        wait_until(lambda: len(gateway.obj.core.receivers) == 1)
        base = f"http://127.0.0.1:{gateway.obj.ports.http}"
        body = os.urandom(2 * 1024 * 1024 + 11)

        def chunked() -> Iterator[bytes]:  # no Content-Length: wsgi.input must end by itself
            for i in range(0, len(body), 300_000):
                yield body[i : i + 300_000]

        with httpx.Client(base_url=base, timeout=30) as http:
            r = http.post("/echo/a%20b/c", params={"q": "wörld"}, content=chunked())
            assert r.status_code == 200
            assert r.json() == {
                "rest": "a b/c",
                "args": {"q": "wörld"},
                "size": len(body),
                "sha256": hashlib.sha256(body).hexdigest(),
                "remote": "127.0.0.1",
                "forwarded": "127.0.0.1",
            }
            assert http.get("/fail").status_code == 500
            with http.stream("GET", "/endless") as r:
                received = 0
                for chunk in r.iter_raw():
                    received += len(chunk)
                    if received > 1024 * 1024:
                        break  # hang up mid-stream
        # The app's generator is stopped and closed, far short of its 100 000 parts.
        wait_until(lambda: "closed" in events, timeout=10)
        assert len(events) < 1000
    finally:
        receiver.stop()
        gateway.stop()
