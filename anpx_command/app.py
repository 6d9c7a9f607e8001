"""The command-mode ASGI app: sessions, their output, Claude Code's store, and MCP.

Routes (AgentX's API, plus replayable output)::

    POST   /api/sessions                     {executor, prompt, project_path, resume?, interactive?}
    GET    /api/sessions                     every session kept
    GET    /api/sessions/{id}                one session
    DELETE /api/sessions/{id}                stop it if running, forget it
    POST   /api/sessions/{id}/cancel         stop its process tree, keep its output
    POST   /api/sessions/{id}/input          {data, eof?} to its stdin (interactive sessions)
    GET    /api/sessions/{id}/output?offset=N&limit=M   raw output bytes from offset N
    GET    /api/sessions/{id}/stream?offset=N           SSE; event ids are offsets (Last-Event-ID)
    GET    /api/claude/projects[/working-directories|/{project_id}/sessions]
    GET    /api/claude/sessions[/{id}]       DELETE /api/claude/sessions/{id}
    *      {mcp_path}                        MCP Streamable HTTP (when enabled)

Every request passes the :class:`~anpx_command.guard.Guard` first. The app needs the
ASGI lifespan (the receiver runs it): sessions live in a task group it holds.
"""

from __future__ import annotations

import codecs
import json
import logging
import re
from collections.abc import Awaitable, Callable, Coroutine
from contextlib import AbstractAsyncContextManager
from typing import Any

import anyio
import anyio.abc

from anpx_host.launch import first_error

from .claude_store import ClaudeStore, StoreNotFound
from .executors import RequestError
from .guard import Guard, Refusal, audit, client_of
from .sessions import Conflict, LimitReached, NotFound, Session, SessionManager, Unavailable
from .web import BadRequest, field, parse_int, query, query_int, read_json, send_json, send_status

__all__ = ["CommandApp"]

Scope = dict[str, Any]  # ASGI
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

log = logging.getLogger("anpx.command")
SSE_CHUNK = 64 * 1024
MAX_READ = 4 * 1024 * 1024
KEEPALIVE = 15.0  # an SSE comment this often keeps idle proxies from closing the stream

_SID = r"([0-9a-f]{32})"
_ROUTES: list[tuple[re.Pattern[str], dict[str, str]]] = [
    (re.compile(r"/api/sessions"), {"GET": "list_sessions", "POST": "create_session"}),
    (re.compile(rf"/api/sessions/{_SID}"), {"GET": "get_session", "DELETE": "delete_session"}),
    (re.compile(rf"/api/sessions/{_SID}/cancel"), {"POST": "cancel_session"}),
    (re.compile(rf"/api/sessions/{_SID}/input"), {"POST": "send_input"}),
    (re.compile(rf"/api/sessions/{_SID}/output"), {"GET": "read_output"}),
    (re.compile(rf"/api/sessions/{_SID}/stream"), {"GET": "stream_output"}),
    (re.compile(r"/api/claude/projects"), {"GET": "claude_projects"}),
    (re.compile(r"/api/claude/projects/working-directories"), {"GET": "claude_directories"}),
    (re.compile(r"/api/claude/projects/([^/]+)/sessions"), {"GET": "claude_project_sessions"}),
    (re.compile(r"/api/claude/sessions"), {"GET": "claude_sessions"}),
    (
        re.compile(r"/api/claude/sessions/([^/]+)"),
        {"GET": "claude_session", "DELETE": "claude_delete"},
    ),
]

Service = Callable[[anyio.abc.TaskStatus[None]], Awaitable[None]]


class CommandApp:
    def __init__(
        self,
        manager: SessionManager,
        guard: Guard,
        store: ClaudeStore,
        *,
        max_body: int = 256 * 1024,
        mcp_app: Any = None,
        mcp_path: str = "/mcp",
        mcp_lifespan: Callable[[], AbstractAsyncContextManager[Any]] | None = None,
        services: list[Callable[..., Coroutine[Any, Any, None]]] | None = None,
    ) -> None:
        self.manager = manager
        self.guard = guard
        self.store = store
        self.max_body = max_body
        self.mcp_app = mcp_app
        self.mcp_path = mcp_path
        self.mcp_lifespan = mcp_lifespan
        self.services = services or []  # extra tasks for the app's lifetime (a local listener)

    # --- ASGI --------------------------------------------------------------------------

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            await send({"type": "websocket.close", "code": 1008})
            return
        try:
            self.guard.check(scope)
        except Refusal as refusal:
            await send_status(send, refusal.status, refusal.reason, refusal.headers)
            return
        path = scope["path"]
        root = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root) :] or "/"
        if self.mcp_app is not None and (
            path == self.mcp_path or path.startswith(self.mcp_path + "/")
        ):
            await self.mcp_app(scope, receive, send)
            return
        try:
            await self._route(path, scope, receive, send)
        except BadRequest as exc:
            await send_status(send, exc.status, exc.reason)

    async def _lifespan(self, receive: Any, send: Any) -> None:
        await receive()  # lifespan.startup
        started = False
        try:
            async with anyio.create_task_group() as tg:
                await tg.start(self.manager.run)
                if self.mcp_lifespan is not None:
                    await tg.start(self._hold, self.mcp_lifespan)
                for service in self.services:
                    await tg.start(service)
                await send({"type": "lifespan.startup.complete"})
                started = True
                await receive()  # lifespan.shutdown
                tg.cancel_scope.cancel()
        except Exception as group:
            exc = first_error(group)  # task groups wrap the error that matters
            log.error("command mode stopped: %s", exc)
            if not started:
                await send({"type": "lifespan.startup.failed", "message": str(exc)})
                return
        await send({"type": "lifespan.shutdown.complete"})

    @staticmethod
    async def _hold(
        context: Callable[[], AbstractAsyncContextManager[Any]],
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        async with context():
            task_status.started()
            await anyio.sleep_forever()

    async def _route(self, path: str, scope: dict[str, Any], receive: Any, send: Any) -> None:
        for pattern, methods in _ROUTES:
            match = pattern.fullmatch(path)
            if match is None:
                continue
            handler = methods.get(scope["method"])
            if handler is None:
                allow = ", ".join(methods).encode()
                await send_status(send, 405, "method not allowed", [(b"allow", allow)])
                return
            await getattr(self, handler)(scope, receive, send, *match.groups())
            return
        await send_status(send, 404, "not found")

    # --- sessions ----------------------------------------------------------------------

    async def create_session(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = await read_json(receive, self.max_body)
        executor = field(body, "executor", str)
        prompt = field(body, "prompt", str)
        project_path = field(body, "project_path", str)
        resume = field(body, "resume", str, None)
        interactive = field(body, "interactive", bool, False)
        try:
            session = await self.manager.start(
                executor,
                prompt,
                project_path,
                who=client_of(scope),
                resume=resume,
                interactive=interactive,
            )
        except PermissionError as exc:
            raise BadRequest(str(exc), 403) from None
        except RequestError as exc:
            raise BadRequest(str(exc), 422) from None
        except LimitReached as exc:
            raise BadRequest(str(exc), 429) from None
        except Unavailable as exc:
            raise BadRequest(str(exc), 503) from None
        await send_json(send, 201, session.to_json())

    async def list_sessions(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send_json(send, 200, {"sessions": [s.to_json() for s in self.manager.list()]})

    def _session(self, session_id: str) -> Session:
        try:
            return self.manager.get(session_id)
        except NotFound:
            raise BadRequest("no such session", 404) from None

    async def get_session(
        self, scope: Scope, receive: Receive, send: Send, session_id: str
    ) -> None:
        await send_json(send, 200, self._session(session_id).to_json())

    async def cancel_session(
        self, scope: Scope, receive: Receive, send: Send, session_id: str
    ) -> None:
        self._session(session_id)
        session = await self.manager.cancel(session_id, who=client_of(scope))
        await send_json(send, 200, session.to_json())

    async def delete_session(
        self, scope: Scope, receive: Receive, send: Send, session_id: str
    ) -> None:
        self._session(session_id)
        await self.manager.delete(session_id, who=client_of(scope))
        await send_json(send, 200, {"deleted": session_id})

    async def send_input(self, scope: Scope, receive: Receive, send: Send, session_id: str) -> None:
        self._session(session_id)
        body = await read_json(receive, self.max_body)
        data = field(body, "data", str, "")
        eof = field(body, "eof", bool, False)
        try:
            session = await self.manager.send_input(session_id, data.encode(), eof=eof)
        except Conflict as exc:
            raise BadRequest(str(exc), 409) from None
        await send_json(send, 200, session.to_json())

    async def read_output(
        self, scope: Scope, receive: Receive, send: Send, session_id: str
    ) -> None:
        session = self._session(session_id)
        params = query(scope)
        length = len(session.log)
        offset = query_int(params, "offset", 0, 0, 2**62)
        limit = query_int(params, "limit", MAX_READ, 1, MAX_READ)
        if offset > length:
            raise BadRequest(f"offset: beyond the output ({length} bytes)", 416)
        data = session.log.read(offset, limit)
        complete = session.log.closed and offset + len(data) == length
        headers = [
            (b"content-type", b"application/octet-stream"),
            (b"content-length", str(len(data)).encode()),
            (b"cache-control", b"no-store"),
            (b"x-output-offset", str(offset).encode()),
            (b"x-output-next-offset", str(offset + len(data)).encode()),
            (b"x-output-complete", b"true" if complete else b"false"),
            (b"x-session-status", session.status.encode()),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": data})

    async def stream_output(
        self, scope: Scope, receive: Receive, send: Send, session_id: str
    ) -> None:
        session = self._session(session_id)
        params = query(scope)
        offset = query_int(params, "offset", 0, 0, 2**62)
        for name, value in scope.get("headers", ()):
            if name == b"last-event-id":
                offset = parse_int(value.decode("latin-1").strip(), "Last-Event-ID", 0, 2**62)
        if offset > len(session.log):
            raise BadRequest(f"offset: beyond the output ({len(session.log)} bytes)", 416)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/event-stream; charset=utf-8"),
                    (b"cache-control", b"no-store"),
                    (b"x-accel-buffering", b"no"),
                ],
            }
        )
        async with anyio.create_task_group() as tg:
            tg.start_soon(_cancel_on_disconnect, receive, tg.cancel_scope)
            await _stream(session, offset, send)
            tg.cancel_scope.cancel()

    # --- Claude Code's store -------------------------------------------------------------

    async def claude_projects(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send_json(send, 200, {"projects": await self.store.projects()})

    async def claude_directories(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send_json(send, 200, {"directories": await self.store.working_directories()})

    async def claude_project_sessions(
        self, scope: Scope, receive: Receive, send: Send, project_id: str
    ) -> None:
        try:
            sessions = await self.store.project_sessions(project_id)
        except StoreNotFound:
            raise BadRequest("no such project", 404) from None
        await send_json(send, 200, {"sessions": sessions})

    async def claude_sessions(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send_json(send, 200, {"sessions": await self.store.all_sessions()})

    async def claude_session(
        self, scope: Scope, receive: Receive, send: Send, session_id: str
    ) -> None:
        try:
            await send_json(send, 200, await self.store.session(session_id))
        except StoreNotFound:
            raise BadRequest("no such session", 404) from None

    async def claude_delete(
        self, scope: Scope, receive: Receive, send: Send, session_id: str
    ) -> None:
        try:
            await self.store.delete_session(session_id)
        except StoreNotFound:
            raise BadRequest("no such session", 404) from None
        audit("claude_delete", who=client_of(scope), session=session_id)
        await send_json(send, 200, {"deleted": session_id})


async def _cancel_on_disconnect(receive: Any, scope: anyio.CancelScope) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    scope.cancel()


def _event(kind: str, event_id: int, data: str) -> bytes:
    return f"event: {kind}\nid: {event_id}\ndata: {data}\n\n".encode()


async def _stream(session: Session, offset: int, send: Any) -> None:
    """SSE from ``offset``: ``output`` events whose id is the offset after their bytes, then
    one ``end`` event once the session has ended and everything was sent."""
    log_ = session.log
    while True:
        with anyio.move_on_after(KEEPALIVE):
            await log_.wait_beyond(offset)
        available = len(log_) - offset
        if available > 0:
            chunk = log_.read(offset, SSE_CHUNK)
            if not log_.closed or offset + len(chunk) < len(log_):
                chunk = _whole_characters(chunk)
            if not chunk:  # only part of a character so far: wait for the rest
                with anyio.move_on_after(KEEPALIVE):
                    await log_.wait_beyond(offset + available)
                continue
            text = chunk.decode("utf-8", errors="replace")
            data = json.dumps({"offset": offset, "text": text}, ensure_ascii=False)
            offset += len(chunk)
            await send(
                {
                    "type": "http.response.body",
                    "body": _event("output", offset, data),
                    "more_body": True,
                }
            )
        elif log_.closed:
            data = json.dumps(session.to_json())
            await send({"type": "http.response.body", "body": _event("end", offset, data)})
            return
        else:
            await send(
                {"type": "http.response.body", "body": b": keepalive\n\n", "more_body": True}
            )


def _whole_characters(chunk: bytes) -> bytes:
    """``chunk`` without a trailing incomplete UTF-8 sequence (sent with the next event)."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    decoder.decode(chunk, final=False)
    pending = len(decoder.getstate()[0])
    return chunk[: len(chunk) - pending] if pending else chunk
