"""Claude Code's on-disk store (~/.claude/projects JSONL transcripts) through the command app."""

from __future__ import annotations

import shutil
from pathlib import Path

import anyio
import httpx
import pytest

from .command_helpers import AUTH, TOKEN, command_config, create_app, running

FIXTURE = Path(__file__).resolve().parent / "command_fixtures" / "claude_home"
APP_SESSION = "1b7c2a4e-0000-4000-8000-000000000001"


@pytest.fixture
def home(tmp_path: Path) -> Path:
    home = tmp_path / "claude-home"
    shutil.copytree(FIXTURE, home)
    secret = tmp_path / "secret.jsonl"
    secret.write_text('{"type": "user", "cwd": "/etc"}\n')
    # a symlink planted in the store must not be followed
    (
        home / "projects" / "-home-ada-notes" / "4e0f5d71-0000-4000-8000-000000000004.jsonl"
    ).symlink_to(secret)
    return home


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_projects_sessions_and_transcripts(backend, tmp_path, home):
    async def main() -> None:
        app = create_app(command_config(tmp_path, claude_home=str(home)), TOKEN.encode())
        transport = httpx.ASGITransport(app=app)
        async with (
            running(app),
            httpx.AsyncClient(
                transport=transport, base_url="http://testserver", headers=AUTH
            ) as client,
        ):
            projects = (await client.get("/api/claude/projects")).json()["projects"]
            assert [(p["id"], p["path"], p["session_count"]) for p in projects] == [
                ("-home-ada-code-app", "/home/ada/code/app", 2),
                ("-home-ada-notes", "/home/ada/notes", 1),
            ]
            assert projects[0]["updated"] == "2026-11-03T10:00:09.000Z"
            dirs = (await client.get("/api/claude/projects/working-directories")).json()
            assert dirs == {"directories": ["/home/ada/code/app", "/home/ada/notes"]}
            r = await client.get("/api/claude/projects/-home-ada-code-app/sessions")
            sessions = {s["id"]: s for s in r.json()["sessions"]}
            assert sessions[APP_SESSION]["summary"] == "Fix the failing login test"
            assert sessions[APP_SESSION]["message_count"] == 3
            other = sessions["2c8d3b5f-0000-4000-8000-000000000002"]
            assert (
                other["summary"] == "Add a README"
                and other["created"] == "2026-11-03T10:00:00.000Z"
            )
            everything = (await client.get("/api/claude/sessions")).json()["sessions"]
            assert len(everything) == 3
            t = (await client.get(f"/api/claude/sessions/{APP_SESSION}")).json()
            assert [m["type"] for m in t["messages"]] == [
                "summary",
                "user",
                "assistant",
                "assistant",
            ]
            assert t["cwd"] == "/home/ada/code/app" and not t["truncated"]
            for path in [
                "/api/claude/sessions/4e0f5d71-0000-4000-8000-000000000004",  # the symlink
                "/api/claude/sessions/..",
                "/api/claude/sessions/..%2F..%2Fsecret",
                "/api/claude/sessions/readme",
                "/api/claude/projects/.../sessions",
                "/api/claude/projects/..%2F..%2Fetc/sessions",
                "/api/claude/projects/-home-nobody/sessions",
            ]:
                assert (await client.get(path)).status_code == 404, path
            r = await client.delete(f"/api/claude/sessions/{APP_SESSION}")
            assert r.status_code == 200
            assert not (home / "projects" / "-home-ada-code-app" / f"{APP_SESSION}.jsonl").exists()
            assert (await client.get(f"/api/claude/sessions/{APP_SESSION}")).status_code == 404
            assert (await client.delete(f"/api/claude/sessions/{APP_SESSION}")).status_code == 404
            r = await client.get("/api/claude/projects", headers={"Authorization": "Bearer nope"})
            assert r.status_code == 401

    anyio.run(main, backend=backend)


def test_transcripts_are_read_up_to_the_cap(tmp_path, home):
    async def main() -> None:
        app = create_app(
            command_config(tmp_path, claude_home=str(home), max_output_bytes=1024), TOKEN.encode()
        )
        big = home / "projects" / "-home-ada-notes" / "5f106e82-0000-4000-8000-000000000005.jsonl"
        line = '{"type": "user", "message": {"content": "%s"}}\n' % ("x" * 200)
        big.write_text(line * 20)
        async with (
            running(app),
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://t", headers=AUTH
            ) as client,
        ):
            t = (await client.get(f"/api/claude/sessions/{big.stem}")).json()
            assert t["truncated"] and len(t["messages"]) == 1024 // len(line)

    anyio.run(main, backend="asyncio")


def test_a_missing_store_is_empty(tmp_path):
    async def main() -> None:
        app = create_app(command_config(tmp_path), TOKEN.encode())
        async with (
            running(app),
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://t", headers=AUTH
            ) as client,
        ):
            assert (await client.get("/api/claude/projects")).json() == {"projects": []}
            assert (await client.get("/api/claude/sessions")).json() == {"sessions": []}

    anyio.run(main, backend="trio")
