"""Shared by the command-mode tests: fake agent CLIs, configs, the app run with its lifespan."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio

from anpx_command import create_app
from anpx_host.config import CommandConfig

FAKE = Path(__file__).resolve().parent / "command_fixtures" / "fake_agent.py"
TOKEN = "test-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def make_fakes(directory: Path) -> dict[str, str]:
    """Executables named like each CLI that run the fake agent with this interpreter."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name in ("claude", "codex", "gemini", "aider"):
        path = directory / name
        path.write_text(
            f"#!{sys.executable}\nimport runpy\n"
            f"runpy.run_path({str(FAKE)!r}, run_name='__main__')\n"
        )
        path.chmod(0o755)
        paths[name] = str(path)
    return paths


def command_config(tmp_path: Path, **overrides: Any) -> CommandConfig:
    fakes = make_fakes(tmp_path / "bin")
    root = tmp_path / "projects"
    (root / "app").mkdir(parents=True, exist_ok=True)
    settings: dict[str, Any] = {
        "enabled": True,
        "roots": (str(root),),
        "claude_path": fakes["claude"],
        "codex_path": fakes["codex"],
        "gemini_path": fakes["gemini"],
        "executors": {"aider": (fakes["aider"], "--yes", "--message", "{prompt}")},
        "claude_home": str(tmp_path / "claude-home"),
        "cancel_grace": 2.0,
    }
    settings.update(overrides)
    return CommandConfig(**settings)


@contextlib.asynccontextmanager
async def running(app: Any) -> AsyncIterator[Any]:
    """Run ``app``'s lifespan around the block, as the receiver does."""
    to_app_send, to_app = anyio.create_memory_object_stream[dict](4)
    from_app_send, from_app = anyio.create_memory_object_stream[dict](4)

    async def lifespan() -> None:
        await app(
            {"type": "lifespan", "asgi": {"version": "3.0"}}, to_app.receive, from_app_send.send
        )

    async with anyio.create_task_group() as tg:
        tg.start_soon(lifespan)
        await to_app_send.send({"type": "lifespan.startup"})
        message = await from_app.receive()
        assert message["type"] == "lifespan.startup.complete", message
        try:
            yield app
        finally:
            await to_app_send.send({"type": "lifespan.shutdown"})
            assert (await from_app.receive())["type"] == "lifespan.shutdown.complete"


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie waiting for its parent counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    return state not in ("Z", "X")


def sse_events(text: str) -> list[dict[str, str]]:
    events = []
    for block in text.split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.split("\n"):
            if line.startswith(":") or ":" not in line:
                continue
            name, _, value = line.partition(":")
            fields[name] = value[1:] if value.startswith(" ") else value
        if fields:
            events.append(fields)
    return events


def first_line(data: bytes) -> dict[str, Any]:
    return json.loads(data.split(b"\n", 1)[0])


__all__ = ["AUTH", "TOKEN", "alive", "command_config", "create_app", "make_fakes", "running"]
