"""Command mode: an ASGI app that runs coding agents on this machine, and an MCP endpoint.

Off by default. ``python -m anpx_trio receiver --command-mode`` (or ``both``) serves it
through the tunnel; :func:`create_app` builds it for embedding. See docs/command-mode.md
and the threat model in docs/security.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from anpx_host.config import CommandConfig

    from .app import CommandApp

__all__ = ["create_app"]

MIN_TOKEN_BYTES = 16


def create_app(config: CommandConfig, token: bytes) -> CommandApp:
    """The command-mode app for ``config`` (its ``enabled`` is not consulted here)."""
    from .app import CommandApp
    from .claude_store import ClaudeStore
    from .executors import executors_from
    from .guard import Guard, audit, audit_logger
    from .sessions import Limits, SessionManager

    if len(token) < MIN_TOKEN_BYTES:
        raise ValueError(f"the command-mode token must be at least {MIN_TOKEN_BYTES} characters")
    if not config.roots:
        raise ValueError("command mode needs roots: the directories sessions may use")
    audit_logger(config.audit_log)
    limits = Limits(
        roots=config.roots,
        max_sessions=config.max_sessions,
        max_retained=config.max_retained,
        time_limit=config.time_limit,
        max_output_bytes=config.max_output_bytes,
        env_allow=config.env_allow,
        cancel_grace=config.cancel_grace,
    )
    executors = executors_from(
        claude_path=config.claude_path,
        codex_path=config.codex_path,
        gemini_path=config.gemini_path,
        templates=config.executors,
    )
    manager = SessionManager(executors, limits, audit)
    guard = Guard(
        token,
        failure_rate=config.auth_failure_rate,
        failure_burst=config.auth_failure_burst,
        allowed_hosts=config.allowed_hosts,
        allowed_origins=config.allowed_origins,
    )
    store = ClaudeStore(Path(config.claude_home).expanduser(), config.max_output_bytes)
    max_body = config.max_prompt_bytes + 64 * 1024  # the prompt and the JSON around it
    mcp_app = mcp_lifespan = None
    if config.enable_mcp:
        from .mcp_server import build_mcp

        mcp_app, mcp_lifespan = build_mcp(manager, path=config.mcp_path, max_body=max_body)
    app = CommandApp(
        manager,
        guard,
        store,
        max_body=max_body,
        mcp_app=mcp_app,
        mcp_path=config.mcp_path,
        mcp_lifespan=mcp_lifespan,
    )
    if config.mcp_port:
        from .local import LocalListener

        app.services.append(LocalListener(app, "127.0.0.1", config.mcp_port).run)
    return app
