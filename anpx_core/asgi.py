"""ASGI 3 back end: one HTTP call and the lifespan cycle, as sans-IO state machines.

The driver runs ``app(scope, receive, send)`` and wraps these machines:

* ``receive()``: ask :meth:`AsgiHttpCall.receive`; ``None`` means "nothing yet", so wait for
  a wake-up (the driver wakes the app after every ``body_received`` / ``body_ended`` /
  ``disconnected`` and after a final response body) and ask again.
* ``send(message)``: :meth:`AsgiHttpCall.send` validates the message and returns the
  :data:`ResponsePart` values to put into the tunnel. It raises :class:`AsgiError` for a bad
  message and :class:`ClientDisconnected` (an ``OSError``, ASGI HTTP spec 2.4) once the stream
  is gone; both propagate into the app.
* When the app's coroutine ends, :meth:`AsgiHttpCall.app_returned` says what the tunnel still
  owes the client: a 500, an abort, or nothing.

No ASGI extensions are advertised (in particular not ``http.response.trailers``).
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote_to_bytes

from .headers import HOP_BY_HOP, strip_hop_by_hop
from .meta import Headers, RequestHead, ResponseHead
from .strict import wire_bytes

ASGI_VERSION = {"version": "3.0", "spec_version": "2.4"}
# The lifespan sub-specification is versioned separately; 2.0 is what apps check for.
LIFESPAN_ASGI_VERSION = {"version": "3.0", "spec_version": "2.0"}

ERROR_BODY = b"Internal Server Error"

_ABSOLUTE_FORM = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^/?]*")
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9a-z]+").fullmatch
_BAD_VALUE = re.compile(rb"[\x00\r\n]").search
_PHRASES = {status.value: status.phrase for status in HTTPStatus}
# Response header names already checked, as given -> as sent (lower-case text): apps send
# the same few names on every response. Bounded: names past the cap are checked each time.
_CHECKED_NAMES: dict[bytes, str] = {}
_CHECKED_NAMES_MAX = 256


class AsgiError(Exception):
    """The application broke the ASGI protocol (bad message, wrong order) or the engine
    misused the call (fed more request body than ``max_buffered``)."""


class ClientDisconnected(OSError):
    """``send()`` after the stream went away (ASGI HTTP spec 2.4: an ``OSError`` subclass)."""


@dataclass(frozen=True, slots=True)
class ResponseStart:
    head: ResponseHead


@dataclass(frozen=True, slots=True)
class ResponseBody:
    data: bytes
    more: bool


@dataclass(frozen=True, slots=True)
class ResponseAborted:
    reason: str


ResponsePart = ResponseStart | ResponseBody | ResponseAborted


# Our strings are wire bytes read as latin-1; a str from a v1 peer may hold any character,
# and UTF-8 is the only sensible encoding for those (the meta decoder refused the rest).
_encode = wire_bytes


def build_scope(
    head: RequestHead,
    *,
    client: tuple[str, int] | None,
    server: tuple[str, int | None] | None,
    scheme: str,
    root_path: str = "",
    http_version: str = "1.1",
    state: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The ASGI 3 HTTP connection scope for ``head`` (spec version 2.4).

    ``raw_path`` is the path component exactly as received; ``path`` is that with
    percent-escapes and UTF-8 sequences decoded (invalid UTF-8 becomes U+FFFD, as uvicorn
    does). An absolute-form target (``http://host/p``) contributes only its path. ``state``
    is the lifespan state; each call gets its own shallow copy, as the lifespan spec asks.
    """
    target = head.target
    if target[:1] != "/":  # origin form needs no look for a scheme and authority
        authority = _ABSOLUTE_FORM.match(target)
        if authority:
            target = target[authority.end() :]
            if not target.startswith("/"):
                target = "/" + target
    raw_path, _, query = target.partition("?")
    if "%" in raw_path or not raw_path.isascii():
        raw = _encode(raw_path)
        path = unquote_to_bytes(raw).decode("utf-8", "replace")
    else:  # nothing to decode: the path is the raw path
        raw = raw_path.encode("ascii")
        path = raw_path
    return {
        "type": "http",
        "asgi": dict(ASGI_VERSION),
        "http_version": http_version,
        "method": head.method.upper(),
        "scheme": scheme,
        "path": path,
        "raw_path": raw,
        "query_string": _encode(query) if query else b"",
        "root_path": root_path,
        "headers": _scope_headers(head.headers),
        "client": tuple(client) if client is not None else None,
        "server": tuple(server) if server is not None else None,
        "state": dict(state) if state is not None else {},
    }


def _scope_headers(headers: Headers) -> list[tuple[bytes, bytes]]:
    """The scope's ``headers``: names lower case, every string as :func:`wire_bytes` gives it."""
    try:  # the usual case, every name and value latin-1 text (wire bytes): two encodes in all
        names = "\0".join([name for name, _ in headers]).lower().encode("latin-1").split(b"\0")
        values = "\0".join([value for _, value in headers]).encode("latin-1").split(b"\0")
        if len(names) == len(headers) == len(values):  # no NUL inside a name or value
            return list(zip(names, values, strict=True))
    except (UnicodeEncodeError, TypeError):
        pass
    try:  # field by field: latin-1 text with a NUL somewhere
        return [
            (name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers
        ]
    except (UnicodeEncodeError, AttributeError):  # UTF-8 text, or not str: field by field
        return [(_encode(name.lower()), _encode(value)) for name, value in headers]


def _as_bytes(value: object, what: str) -> bytes:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    raise AsgiError(f"{what} must be a byte string, got {type(value).__name__}")


def _header_name(raw: object) -> str:
    """A response header name as sent: checked as an HTTP token, lower case."""
    if type(raw) is bytes:
        known = _CHECKED_NAMES.get(raw)
        if known is not None:
            return known
    name = _as_bytes(raw, "a response header name").lower()
    if not _TOKEN(name):
        raise AsgiError(f"invalid response header name {name!r}")
    text = name.decode("latin-1")
    if type(raw) is bytes and len(_CHECKED_NAMES) < _CHECKED_NAMES_MAX:
        _CHECKED_NAMES[raw] = text
    return text


def _response_headers(raw: object) -> Headers:
    headers, _ = _checked_headers(raw)
    return headers


def _checked_headers(raw: object) -> tuple[Headers, bool]:
    """The app's response headers as sent, and whether any is hop-by-hop (or Proxy-*)."""
    headers: Headers = []
    hop = False
    if type(raw) is list:
        pairs = raw
    else:
        try:
            pairs = list(raw)  # type: ignore[call-overload]
        except TypeError:
            raise AsgiError("'headers' must be an iterable of [name, value] pairs") from None
    for pair in pairs:
        try:
            name, value = pair
        except (TypeError, ValueError):
            raise AsgiError(f"response header {pair!r} is not a [name, value] pair") from None
        name = _header_name(name)
        if type(value) is not bytes:
            value = _as_bytes(value, "a response header value")
        if _BAD_VALUE(value):
            raise AsgiError(f"response header {name!r} has a value with CR, LF or NUL")
        if name in HOP_BY_HOP or name.startswith("proxy-"):
            hop = True
        headers.append((name, value.strip(b" \t").decode("latin-1")))
    return headers, hop


def _message_type(message: object) -> str:
    if type(message) is dict:  # what apps send: no ABC check
        kind = message.get("type")
        if type(kind) is str:
            return kind
    if not isinstance(message, Mapping):
        raise AsgiError(f"ASGI messages are dicts, got {type(message).__name__}")
    kind = message.get("type")
    if not isinstance(kind, str):
        raise AsgiError(f"ASGI message without a string 'type': {message!r}")
    return kind


class AsgiHttpCall:
    """One HTTP request/response cycle between the tunnel and an ASGI app."""

    def __init__(self, scope: dict[str, Any], max_buffered: int) -> None:
        self.scope = scope
        self.max_buffered = max_buffered
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._consumed = 0
        self._body_ended = False
        self._last_body_delivered = False
        self._disconnected = False
        self._complete = False
        # "waiting" (no start yet) -> "started" -> "complete"; "finished" once the app returned
        self._response = "waiting"

    # --- tunnel -> app ----------------------------------------------------------------------

    def body_received(self, data: bytes) -> None:
        if self._disconnected or not data:
            return
        if self._body_ended:
            raise AsgiError("request body received after its end")
        if self._buffered + len(data) > self.max_buffered:
            raise AsgiError(
                f"request body buffer overrun: {self._buffered} + {len(data)} bytes held for "
                f"the app exceeds max_buffered={self.max_buffered}"
            )
        self._chunks.append(bytes(data))
        self._buffered += len(data)

    def body_ended(self) -> None:
        self._body_ended = True

    def disconnected(self) -> None:
        """The stream was cancelled or the tunnel dropped: the app sees http.disconnect."""
        self._disconnected = True
        self._chunks.clear()
        self._buffered = 0

    def receive(self) -> dict[str, Any] | None:
        if self._disconnected or self._response in ("complete", "finished"):
            return {"type": "http.disconnect"}
        if self._last_body_delivered or not (self._chunks or self._body_ended):
            return None  # wait for body, its end, or the disconnect
        # Hand over everything buffered at once: fewer wake-ups, same bytes.
        body = self._chunks.popleft() if len(self._chunks) == 1 else b"".join(self._chunks)
        self._chunks.clear()
        self._buffered = 0
        self._consumed += len(body)
        self._last_body_delivered = self._body_ended
        return {"type": "http.request", "body": body, "more_body": not self._body_ended}

    @property
    def buffered(self) -> int:
        """Request body bytes held for the app (the engine grants no credit past max_buffered)."""
        return self._buffered

    @property
    def consumed(self) -> int:
        """Request body bytes handed to the app so far."""
        return self._consumed

    @property
    def is_disconnected(self) -> bool:
        return self._disconnected

    @property
    def response_started(self) -> bool:
        return self._response != "waiting"

    @property
    def response_complete(self) -> bool:
        return self._complete

    # --- app -> tunnel ----------------------------------------------------------------------

    def send(self, message: dict[str, Any]) -> list[ResponsePart]:
        kind = _message_type(message)
        if self._disconnected:
            raise ClientDisconnected("the client went away")
        state = self._response
        if state == "waiting":
            if kind != "http.response.start":
                raise AsgiError(f"expected ASGI message 'http.response.start', got {kind!r}")
            return [ResponseStart(self._start(message))]
        if state == "finished":
            raise AsgiError(f"ASGI message {kind!r} sent after the application returned")
        if state == "complete":
            raise AsgiError(f"unexpected ASGI message {kind!r} after the response completed")
        if kind != "http.response.body":
            raise AsgiError(f"expected ASGI message 'http.response.body', got {kind!r}")
        body = message.get("body", b"")
        if type(body) is not bytes:
            body = _as_bytes(body, "'body'")
        more = message.get("more_body", False)
        if more is not False and more is not True:
            raise AsgiError(f"'more_body' must be a bool, got {type(more).__name__}")
        if not more:
            self._response = "complete"
            self._complete = True
        elif not body:
            return []  # nothing to forward
        return [ResponseBody(body, more)]

    def _start(self, message: Mapping[str, Any]) -> ResponseHead:
        status = message.get("status")
        if type(status) is not int and (isinstance(status, bool) or not isinstance(status, int)):
            raise AsgiError(f"'status' must be an integer from 200 to 999, got {status!r}")
        if not 200 <= status <= 999:
            raise AsgiError(f"'status' must be an integer from 200 to 999, got {status!r}")
        if message.get("trailers", False):
            raise AsgiError("response trailers are not supported (http.response.trailers)")
        headers, hop = _checked_headers(message.get("headers", ()))
        if hop:
            headers = strip_hop_by_hop(headers)
        self._response = "started"
        return ResponseHead(status, _PHRASES.get(status, ""), headers)

    def app_returned(self, exc: BaseException | None) -> list[ResponsePart]:
        """The app's coroutine ended (``exc`` is what it raised, if anything)."""
        state, self._response = self._response, "finished"
        if state == "finished":
            raise AsgiError("app_returned called twice")
        if self._disconnected or state == "complete":
            return []
        if state == "waiting":
            head = ResponseHead(
                500,
                "Internal Server Error",
                [
                    ("content-type", "text/plain; charset=utf-8"),
                    ("content-length", str(len(ERROR_BODY))),
                ],
            )
            return [ResponseStart(head), ResponseBody(ERROR_BODY, False)]
        if exc is None:
            return [ResponseAborted("application returned without completing the response")]
        return [ResponseAborted(f"application raised {type(exc).__name__} mid-response")]


class LifespanCycle:
    """The ASGI lifespan protocol, as uvicorn's ``lifespan="auto"`` runs it.

    The driver starts ``app(cycle.scope, receive, send)`` as a task, calls :meth:`startup`,
    waits (waking ``receive`` as for HTTP) until :attr:`startup_done`, serves while
    :attr:`status` is ``"started"`` (or ``"unsupported"``: the app raised or returned before
    answering ``lifespan.startup``, so it simply has no lifespan), and on exit calls
    :meth:`shutdown` and waits for :attr:`shutdown_done`. ``"failed"`` means do not serve.
    """

    def __init__(self) -> None:
        self.state: dict[str, Any] = {}
        self.scope: dict[str, Any] = {
            "type": "lifespan",
            "asgi": dict(LIFESPAN_ASGI_VERSION),
            "state": self.state,
        }
        # idle -> starting -> started | failed | unsupported -> stopping -> stopped | stop_failed
        # "error": the app raised after startup completed (shutdown is then skipped).
        self.status = "idle"
        self.message = ""  # the app's failure message, or what it raised
        self._pending: deque[dict[str, Any]] = deque()
        self._returned = False

    def startup(self) -> None:
        """Queue lifespan.startup (a no-op if the app already gave up on lifespan)."""
        if self.status == "idle":
            self.status = "starting"
            self._pending.append({"type": "lifespan.startup"})
        elif self.status != "unsupported":
            raise AsgiError(f"lifespan startup requested in state {self.status!r}")

    def shutdown(self) -> None:
        """Ask the app to shut down; a no-op unless startup completed and the app still runs."""
        if self.status == "started" and not self._returned:
            self.status = "stopping"
            self._pending.append({"type": "lifespan.shutdown"})
        elif self.status == "started":
            self.status = "stopped"

    @property
    def startup_done(self) -> bool:
        return self.status not in ("idle", "starting")

    @property
    def shutdown_done(self) -> bool:
        """Nothing left to wait for: shut down, or there was never anything to shut down."""
        return self.status not in ("idle", "starting", "started", "stopping")

    def receive(self) -> dict[str, Any] | None:
        return self._pending.popleft() if self._pending else None

    def send(self, message: dict[str, Any]) -> None:
        kind = _message_type(message)
        expected = {
            "lifespan.startup.complete": "starting",
            "lifespan.startup.failed": "starting",
            "lifespan.shutdown.complete": "stopping",
            "lifespan.shutdown.failed": "stopping",
        }.get(kind)
        if expected is None:
            raise AsgiError(f"unknown lifespan message {kind!r}")
        if self.status != expected:
            raise AsgiError(f"lifespan message {kind!r} is not valid in state {self.status!r}")
        if kind.endswith(".failed"):
            text = message.get("message", "")
            self.message = text if isinstance(text, str) else repr(text)
        self.status = {
            "lifespan.startup.complete": "started",
            "lifespan.startup.failed": "failed",
            "lifespan.shutdown.complete": "stopped",
            "lifespan.shutdown.failed": "stop_failed",
        }[kind]

    def app_returned(self, exc: BaseException | None) -> None:
        self._returned = True
        if self.status in ("idle", "starting"):
            # Like uvicorn's auto mode: an app that cannot answer lifespan.startup (it raised,
            # or returned, before sending anything) does not support the protocol.
            self.status = "unsupported"
            self.message = repr(exc) if exc is not None else "returned during startup"
        elif self.status == "stopping":
            # Returning without a word during shutdown is how simple apps finish.
            self.status = "stopped" if exc is None else "stop_failed"
            self.message = repr(exc) if exc is not None else ""
        elif self.status == "started" and exc is not None:
            self.status = "error"
            self.message = repr(exc)
