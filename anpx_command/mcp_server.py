"""MCP (Model Context Protocol) over Streamable HTTP, built with the official ``mcp`` SDK.

The sessions become tools: ``start_session``, ``list_sessions``, ``get_session``,
``read_output`` (from a byte offset, optionally waiting for more), ``send_input`` and
``cancel_session``. The endpoint is stateless and answers JSON, so it survives a tunnel
reconnect and needs no affinity. The SDK's own Host/Origin allow-list is turned off:
behind a gateway the Host is the public one, and the command app's guard has already
checked the bearer token, ``allowed_hosts`` and ``allowed_origins`` before this runs.
Install with ``pip install 'anpx[mcp]'``.
"""

from contextlib import AbstractAsyncContextManager
from typing import Any

import anyio

from .executors import RequestError
from .sessions import Conflict, LimitReached, NotFound, Session, SessionManager, Unavailable

__all__ = ["MCP_MISSING", "build_mcp"]

MCP_MISSING = "MCP needs the mcp SDK 2.x: pip install 'anpx[mcp]'"
MAX_READ = 1024 * 1024
MAX_WAIT = 60.0


def build_mcp(manager: SessionManager, *, path: str, max_body: int) -> tuple[Any, Any]:
    """``(asgi_app, lifespan)``: the MCP endpoint at ``path`` and what must run around it."""
    try:
        from mcp.server.mcpserver import Context, MCPServer
        from mcp.server.mcpserver.exceptions import ToolError
        from mcp.server.transport_security import TransportSecuritySettings
    except ImportError as exc:
        raise RuntimeError(MCP_MISSING) from exc

    server = MCPServer(
        name="anpx-command",
        instructions=(
            "Run coding agents (claude, codex, gemini, ...) in project directories on this "
            "machine. Start a session, then read its output from byte offsets until "
            "complete is true."
        ),
    )

    def who(ctx: Context) -> str:
        request = getattr(ctx.request_context, "request", None)
        client = getattr(request, "client", None)
        return f"mcp:{getattr(client, 'host', '-')}"

    def session(session_id: str) -> Session:
        try:
            return manager.get(session_id)
        except NotFound:
            raise ToolError(f"no such session: {session_id}") from None

    @server.tool()
    async def start_session(
        executor: str,
        prompt: str,
        project_path: str,
        ctx: Context,
        resume: str | None = None,
        interactive: bool = False,
    ) -> dict[str, Any]:
        """Start an executor (claude, codex, gemini or a configured one) on a prompt in
        project_path, a directory under the configured roots. Returns the session."""
        try:
            s = await manager.start(
                executor, prompt, project_path, who=who(ctx), resume=resume, interactive=interactive
            )
        except (PermissionError, RequestError, LimitReached, Unavailable) as exc:
            raise ToolError(str(exc)) from None
        return s.to_json()

    @server.tool()
    async def list_sessions() -> dict[str, Any]:
        """Every session kept, running or ended."""
        return {"sessions": [s.to_json() for s in manager.list()]}

    @server.tool()
    async def get_session(session_id: str) -> dict[str, Any]:
        """One session: status, exit code, output size."""
        return session(session_id).to_json()

    @server.tool()
    async def read_output(
        session_id: str, offset: int = 0, limit: int = 65536, wait_seconds: float = 0
    ) -> dict[str, Any]:
        """Output from byte offset (0: the start), at most limit bytes; with wait_seconds,
        wait up to that long for output beyond offset. Pass next_offset to the next call."""
        s = session(session_id)
        if offset < 0 or offset > len(s.log):
            raise ToolError(f"offset must be from 0 to {len(s.log)}")
        limit = max(1, min(limit, MAX_READ))
        if wait_seconds > 0:
            with anyio.move_on_after(min(wait_seconds, MAX_WAIT)):
                await s.log.wait_beyond(offset)
        data = s.log.read(offset, limit)
        end = offset + len(data)
        return {
            "offset": offset,
            "next_offset": end,
            "text": data.decode("utf-8", errors="replace"),
            "status": s.status,
            "exit_code": s.exit_code,
            "complete": s.log.closed and end == len(s.log),
        }

    @server.tool()
    async def send_input(session_id: str, data: str, eof: bool = False) -> dict[str, Any]:
        """Write data to an interactive session's stdin; eof closes it."""
        session(session_id)
        try:
            return (await manager.send_input(session_id, data.encode(), eof=eof)).to_json()
        except Conflict as exc:
            raise ToolError(str(exc)) from None

    @server.tool()
    async def cancel_session(session_id: str, ctx: Context) -> dict[str, Any]:
        """Stop a session's whole process tree; its output stays readable."""
        session(session_id)
        return (await manager.cancel(session_id, who=who(ctx))).to_json()

    app = server.streamable_http_app(
        streamable_http_path=path,
        stateless_http=True,
        json_response=True,
        max_request_body_size=max_body,
        transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
    )
    lifespan: AbstractAsyncContextManager[Any] | Any = server.session_manager.run
    return app, lifespan
