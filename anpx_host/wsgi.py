"""Serve a WSGI app (PEP 3333) as an ASGI 3 app, on threads the driver hands in.

A WSGI app blocks, so each request runs in a worker thread (``Threads.run_sync``); from
there the request body is pulled and the response pushed through the ASGI ``receive`` and
``send`` on the event loop (``Threads.from_thread``), one message at a time. Nothing is
buffered beyond the message at hand: the app reads the body as the client sends it, the
receiver's flow control holds back an app that writes faster than the client reads, and a
client that goes away surfaces in the thread as an ``OSError``. The core owns no thread or
loop: the trio and asyncio receivers set :attr:`WsgiApp.threads` before serving.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import Any, Protocol
from urllib.parse import unquote_to_bytes

from anpx_core.strict import StrictError, parse_uint

__all__ = ["Threads", "WsgiApp", "build_environ"]

log = logging.getLogger("anpx.wsgi")


class Threads(Protocol):
    """Worker threads, as the driver provides them."""

    async def run_sync(self, fn: Callable[[], Any]) -> Any:
        """Run the blocking ``fn`` in a worker thread (bounded concurrency); its result."""
        ...

    def from_thread(self, async_fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        """In a worker thread: run ``async_fn(*args)`` on the event loop; its result."""
        ...


class WsgiApp:
    """The ASGI app serving ``wsgi_app``; ``name`` says which app in errors."""

    def __init__(self, wsgi_app: Callable[..., Iterable[bytes]], name: str) -> None:
        self.app = wsgi_app
        self.name = name
        self.threads: Threads | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":  # WSGI has no lifespan: agree to both steps
            while True:
                kind = (await receive())["type"]
                if kind == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif kind == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            raise RuntimeError(f"{self.name} is a WSGI app: it serves HTTP, not {scope['type']}")
        threads = self.threads
        if threads is None:
            raise RuntimeError(
                f"{self.name} is a WSGI app and nothing gave it threads: serve it with anpx's "
                "receiver (or set its .threads)"
            )
        call = _Call(self.app, scope, receive, send, threads)
        await threads.run_sync(call.run)


async def _send_all(send: Any, messages: list[dict[str, Any]]) -> None:
    for message in messages:
        await send(message)


class _Call:
    """One request, run in a worker thread: start_response, write() and the body loop."""

    def __init__(
        self,
        app: Callable[..., Iterable[bytes]],
        scope: dict[str, Any],
        receive: Any,
        send: Any,
        threads: Threads,
    ) -> None:
        self.app = app
        self.scope = scope
        self.receive = receive
        self.send = send
        self.threads = threads
        self.start: dict[str, Any] | None = None  # http.response.start, until it is sent
        self.head_sent = False

    def run(self) -> None:
        errors = _Errors()
        environ = build_environ(self.scope, _Input(self.receive, self.threads), errors)
        try:
            self._respond(self.app(environ, self.start_response))
        finally:
            errors.flush()

    def _respond(self, result: Iterable[bytes]) -> None:
        try:
            for chunk in result:
                if chunk:  # an empty chunk must not hold anything back, nor send the head
                    self.write(chunk)
            if self.start is None and not self.head_sent:
                raise RuntimeError("the WSGI app returned without calling start_response")
            self._send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()

    def start_response(
        self, status: str, headers: list[tuple[str, str]], exc_info: Any = None
    ) -> Callable[[bytes], None]:
        if exc_info is not None:
            try:
                if self.head_sent:  # too late to change the response: abort it instead
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None  # no reference cycle through the traceback
        elif self.start is not None or self.head_sent:
            raise RuntimeError("start_response called a second time without exc_info")
        self.start = {
            "type": "http.response.start",
            "status": _status_code(status),
            "headers": [_header(pair) for pair in headers],
        }
        return self.write

    def write(self, data: bytes) -> None:
        """PEP 3333's write(), and each chunk of the returned iterable."""
        if not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError(f"WSGI response data must be bytes, got {type(data).__name__}")
        self._send({"type": "http.response.body", "body": bytes(data), "more_body": True})

    def _send(self, body: dict[str, Any]) -> None:
        if self.head_sent:
            messages = [body]
        elif self.start is None:
            raise RuntimeError("the WSGI app sent a body before calling start_response")
        else:  # the head goes out with the first part of the body, in one trip to the loop
            messages = [self.start, body]
            self.start, self.head_sent = None, True
        self.threads.from_thread(_send_all, self.send, messages)


def _status_code(status: str) -> int:
    if not isinstance(status, str):
        raise TypeError(f"WSGI status must be a str, got {type(status).__name__}")
    code = status.split(" ", 1)[0]
    try:
        return parse_uint(code, 999, "WSGI status", minimum=100)  # "²00".isdigit() is true
    except StrictError:
        raise ValueError(f"WSGI status must start with a 3-digit code, got {status!r}") from None


def _header(pair: tuple[str, str]) -> tuple[bytes, bytes]:
    name, value = pair
    if not isinstance(name, str) or not isinstance(value, str):
        raise TypeError(f"WSGI response headers must be (str, str) pairs, got {pair!r}")
    return name.lower().encode("latin-1"), value.encode("latin-1")


def build_environ(scope: dict[str, Any], body: Any, errors: Any) -> dict[str, Any]:
    """The PEP 3333 environ for an ASGI HTTP ``scope``; ``body`` is wsgi.input."""
    script_name = scope.get("root_path", "").encode("utf-8").decode("latin-1")
    raw_path = scope.get("raw_path") or scope["path"].encode("utf-8")
    path_info = unquote_to_bytes(raw_path).decode("latin-1")
    if script_name and (path_info == script_name or path_info.startswith(script_name + "/")):
        path_info = path_info[len(script_name) :]
    scheme = scope.get("scheme", "http")
    server = scope.get("server") or ("localhost", None)
    port = server[1] if server[1] is not None else (443 if scheme == "https" else 80)
    environ: dict[str, Any] = {
        "REQUEST_METHOD": scope["method"],
        "SCRIPT_NAME": script_name,
        "PATH_INFO": path_info,
        "QUERY_STRING": scope.get("query_string", b"").decode("latin-1"),
        "SERVER_NAME": server[0],
        "SERVER_PORT": str(port),
        "SERVER_PROTOCOL": f"HTTP/{scope.get('http_version', '1.1')}",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": scheme,
        "wsgi.input": body,
        "wsgi.errors": errors,
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
        # wsgi.input ends where the body does, so frameworks may read a chunked body too.
        "wsgi.input_terminated": True,
    }
    client = scope.get("client")
    if client is not None:
        environ["REMOTE_ADDR"], environ["REMOTE_PORT"] = client[0], str(client[1])
    for raw_name, raw_value in scope.get("headers", []):
        name = raw_name.decode("latin-1").upper()
        if "_" in name:  # X_Forwarded_For would pose as X-Forwarded-For: drop, as gunicorn does
            continue
        key = name.replace("-", "_")
        if key not in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            key = "HTTP_" + key
        value = raw_value.decode("latin-1")
        if key in environ:  # a repeated header: one field, as CGI has it
            value = environ[key] + ("; " if key == "HTTP_COOKIE" else ",") + value
        environ[key] = value
    return environ


class _Input:
    """wsgi.input: the request body, pulled from the ASGI ``receive`` as the app reads."""

    def __init__(self, receive: Any, threads: Threads) -> None:
        self._receive = receive
        self._threads = threads
        self._buffer = bytearray()
        self._more = True

    def _pull(self) -> None:
        message = self._threads.from_thread(self._receive)
        if message["type"] == "http.disconnect":
            self._more = False
            raise OSError("client disconnected")
        self._buffer += message.get("body", b"")
        self._more = message.get("more_body", False)

    def _take(self, size: int) -> bytes:
        if size < 0 or size > len(self._buffer):
            size = len(self._buffer)
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data

    def read(self, size: int | None = -1) -> bytes:
        size = -1 if size is None else size
        while self._more and (size < 0 or len(self._buffer) < size):
            self._pull()
        return self._take(size)

    def readline(self, size: int | None = -1) -> bytes:
        size = -1 if size is None else size
        start = 0
        while (end := self._buffer.find(b"\n", start)) < 0 and self._more:
            if 0 <= size <= len(self._buffer):
                break
            start = len(self._buffer)
            self._pull()
        if end >= 0 and (size < 0 or end < size):
            size = end + 1
        return self._take(size)

    def readlines(self, hint: int = -1) -> list[bytes]:
        lines: list[bytes] = []
        total = 0
        while line := self.readline():
            lines.append(line)
            total += len(line)
            if 0 < hint <= total:
                break
        return lines

    def __iter__(self) -> Iterator[bytes]:
        while line := self.readline():
            yield line


class _Errors:
    """wsgi.errors: what the app writes there goes to the log, a line at a time."""

    def __init__(self) -> None:
        self._partial = ""

    def write(self, text: str) -> None:
        lines = (self._partial + text).split("\n")
        self._partial = lines.pop()
        for line in lines:
            log.error("%s", line)

    def writelines(self, lines: Iterable[str]) -> None:
        for text in lines:
            self.write(text)

    def flush(self) -> None:
        if self._partial:
            log.error("%s", self._partial)
            self._partial = ""
