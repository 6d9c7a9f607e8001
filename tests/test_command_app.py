"""The command-mode app run directly (its lifespan, its loopback listener) under asyncio and trio.

Fake agent CLIs (tests/command_fixtures/fake_agent.py) stand in for claude, codex and gemini.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from .command_helpers import AUTH, TOKEN, alive, command_config, create_app, running
from .processes import free_port

BACKENDS = ["asyncio", "trio"]


@contextlib.asynccontextmanager
async def served(tmp_path: Path, **overrides: Any) -> AsyncIterator[httpx.AsyncClient]:
    port = free_port()
    app = create_app(command_config(tmp_path, mcp_port=port, **overrides), TOKEN.encode())
    async with (
        running(app),
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers=AUTH, timeout=30) as client,
    ):
        yield client


def project(tmp_path: Path) -> str:
    return str(tmp_path / "projects" / "app")


async def start(client: httpx.AsyncClient, tmp_path: Path, prompt: str, **extra: Any) -> dict:
    body = {"executor": "claude", "prompt": prompt, "project_path": project(tmp_path), **extra}
    r = await client.post("/api/sessions", json=body)
    assert r.status_code == 201, r.text
    return r.json()


async def events(response: httpx.Response) -> AsyncIterator[dict[str, str]]:
    fields: dict[str, str] = {}
    async for line in response.aiter_lines():
        if not line:
            if fields:
                yield fields
            fields = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(": ")
            fields[name] = value


async def wait_output(client: httpx.AsyncClient, sid: str, text: bytes) -> bytes:
    """The session's output once it contains ``text`` (read through the stream)."""
    async with client.stream("GET", f"/api/sessions/{sid}/stream") as r:
        seen = b""
        async for event in events(r):
            if event["event"] == "output":
                seen += json.loads(event["data"])["text"].encode()
                if text in seen:
                    return seen
    raise AssertionError(f"{text!r} never came: {seen!r}")


async def finished(client: httpx.AsyncClient, sid: str) -> dict:
    async with client.stream("GET", f"/api/sessions/{sid}/stream") as r:
        async for event in events(r):
            if event["event"] == "end":
                return json.loads(event["data"])
    raise AssertionError("no end event")


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_session_runs_the_exact_argv_in_the_project_with_allowed_env(
    backend, tmp_path, monkeypatch
):
    monkeypatch.setenv("ANPX_TEST_SECRET", "must not leak")

    async def main() -> None:
        async with served(tmp_path, env_allow=("PATH",)) as client:
            s = await start(client, tmp_path, "hello there")
            assert s["argv"][1:] == [
                "-p",
                "hello there",
                "--output-format",
                "stream-json",
                "--verbose",
            ]
            end = await finished(client, s["id"])
            assert (end["status"], end["exit_code"]) == ("exited", 0)
            out = (await client.get(f"/api/sessions/{s['id']}/output")).content
            first = json.loads(out.split(b"\n")[0])
            assert first["argv"] == s["argv"][1:]
            assert first["cwd"] == project(tmp_path)
            # LC_CTYPE: set by the fake's own Python (locale coercion), not inherited
            assert set(first["env"]) - {"LC_CTYPE"} == {"PATH", "PWD"}
            listed = (await client.get("/api/sessions")).json()["sessions"]
            assert [x["id"] for x in listed] == [s["id"]]

    anyio.run(main, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_stream_resumes_from_last_event_id_without_loss_or_repeat(backend, tmp_path):
    async def main() -> None:
        async with served(tmp_path) as client:
            s = await start(client, tmp_path, "halves 40", interactive=True)
            got = b""
            last_id = None
            async with client.stream("GET", f"/api/sessions/{s['id']}/stream") as r:
                async for event in events(r):
                    data = json.loads(event["data"])
                    assert data["offset"] == len(got)
                    got += data["text"].encode()
                    last_id = event["id"]
                    if b'"i": 39' in got:
                        break  # disconnect mid-way: the agent waits for input now
            assert int(last_id) == len(got)
            r = await client.post(f"/api/sessions/{s['id']}/input", json={"data": "go\n"})
            assert r.status_code == 200
            headers = {"Last-Event-ID": last_id}
            async with client.stream(
                "GET", f"/api/sessions/{s['id']}/stream", headers=headers
            ) as r:
                async for event in events(r):
                    if event["event"] == "end":
                        assert int(event["id"]) == len(got)
                        break
                    data = json.loads(event["data"])
                    assert data["offset"] == len(got)
                    got += data["text"].encode()
            full = (await client.get(f"/api/sessions/{s['id']}/output")).content
            assert got == full
            assert full.count(b'"type": "assistant"') == 80 and b'"result"' in full
            part = await client.get(f"/api/sessions/{s['id']}/output?offset=10&limit=5")
            assert part.content == full[10:15]
            assert part.headers["x-output-next-offset"] == "15"
            assert part.headers["x-output-complete"] == "false"
            tail = await client.get(f"/api/sessions/{s['id']}/output?offset={len(full)}")
            assert tail.content == b"" and tail.headers["x-output-complete"] == "true"

    anyio.run(main, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_cancel_kills_the_process_tree_and_keeps_the_output(backend, tmp_path):
    async def main() -> None:
        async with served(tmp_path) as client:
            s = await start(client, tmp_path, "hang")
            out = await wait_output(client, s["id"], b'"child"')
            pids = json.loads(out.split(b"\n")[1])
            assert alive(pids["parent"]) and alive(pids["child"])
            r = await client.post(f"/api/sessions/{s['id']}/cancel")
            assert r.status_code == 200 and r.json()["status"] == "cancelled"
            assert not alive(pids["parent"]) and not alive(pids["child"])
            kept = await client.get(f"/api/sessions/{s['id']}/output")
            assert kept.content == out
            again = await client.post(f"/api/sessions/{s['id']}/cancel")
            assert again.json()["status"] == "cancelled"

    anyio.run(main, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_exit_codes_input_and_delete(backend, tmp_path):
    async def main() -> None:
        async with served(tmp_path) as client:
            s = await start(client, tmp_path, "exit 3")
            end = await finished(client, s["id"])
            assert (end["status"], end["exit_code"]) == ("exited", 3)
            r = await client.post(f"/api/sessions/{s['id']}/input", json={"data": "x"})
            assert r.status_code == 409  # not interactive
            e = await start(client, tmp_path, "echo", interactive=True)
            await client.post(f"/api/sessions/{e['id']}/input", json={"data": "one\n"})
            await client.post(f"/api/sessions/{e['id']}/input", json={"data": "two\n", "eof": True})
            assert (await finished(client, e["id"]))["status"] == "exited"
            out = (await client.get(f"/api/sessions/{e['id']}/output")).content
            assert out.endswith(b"echo: one\necho: two\n")
            h = await start(client, tmp_path, "hang")
            pids = json.loads((await wait_output(client, h["id"], b'"child"')).split(b"\n")[1])
            assert (await client.delete(f"/api/sessions/{h['id']}")).status_code == 200
            assert not alive(pids["parent"]) and not alive(pids["child"])
            for method, path in [
                ("GET", f"/api/sessions/{h['id']}"),
                ("GET", f"/api/sessions/{h['id']}/output"),
                ("POST", f"/api/sessions/{h['id']}/cancel"),
                ("DELETE", f"/api/sessions/{h['id']}"),
                ("GET", "/api/sessions/not-an-id"),
            ]:
                assert (await client.request(method, path)).status_code == 404
            assert (await client.put("/api/sessions")).status_code == 405

    anyio.run(main, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_executor_and_resume_reach_the_process(backend, tmp_path):
    async def main() -> None:
        async with served(tmp_path) as client:
            cases = [
                ("codex", {}, ["exec", "p1"]),
                ("gemini", {}, ["-p", "p1"]),
                ("aider", {}, ["--yes", "--message", "p1"]),
                (
                    "claude",
                    {"resume": "abc-123"},
                    [
                        "-p",
                        "p1",
                        "--output-format",
                        "stream-json",
                        "--verbose",
                        "--resume",
                        "abc-123",
                    ],
                ),
            ]
            for executor, extra, expected in cases:
                s = await start(client, tmp_path, "p1", executor=executor, **extra)
                await finished(client, s["id"])
                out = (await client.get(f"/api/sessions/{s['id']}/output")).content
                assert json.loads(out.split(b"\n")[0])["argv"] == expected
            bad = {"executor": "claude", "prompt": "p", "project_path": project(tmp_path)}
            for change, status in [
                ({"executor": "bash"}, 422),
                ({"resume": "../etc"}, 422),
                ({"prompt": "a\x00b"}, 422),
                ({"prompt": 5}, 400),
                ({"interactive": "yes"}, 400),
            ]:
                r = await client.post("/api/sessions", json={**bad, **change})
                assert r.status_code == status, (change, r.text)
            r = await client.post("/api/sessions", content=b"{not json")
            assert r.status_code == 400
            r = await client.post("/api/sessions", json={**bad, "prompt": "x" * 400_000})
            assert r.status_code == 413

    anyio.run(main, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_project_path_is_confined_to_the_roots(backend, tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (tmp_path / "projects" / "escape").parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / "projects" / "escape").symlink_to(outside)
    (tmp_path / "projects-evil").mkdir()

    async def main() -> None:
        async with served(tmp_path) as client:
            root = tmp_path / "projects"
            for path, status in [
                (str(outside), 403),
                (str(root / "escape"), 403),  # a symlink out of the root
                (str(root / "app" / ".." / ".." / "elsewhere"), 403),
                (str(tmp_path / "projects-evil"), 403),  # a sibling sharing the prefix
                ("/", 403),
                ("projects/app", 422),  # relative
                (str(root / "missing"), 422),
                (str(root), 201),  # the root itself is allowed
            ]:
                body = {"executor": "codex", "prompt": "p", "project_path": path}
                r = await client.post("/api/sessions", json=body)
                assert r.status_code == status, (path, r.text)
                if status == 201:
                    await finished(client, r.json()["id"])

    anyio.run(main, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_authentication_and_throttled_failures(backend, tmp_path):
    async def main() -> None:
        async with served(tmp_path, auth_failure_burst=3) as client:
            for headers in [{}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}]:
                r = await client.get(
                    "/api/sessions",
                    headers={**headers, "Authorization": headers.get("Authorization", "")},
                )
                assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
            r = await client.get("/api/sessions", headers={"Authorization": "Bearer wrong"})
            assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
            r = await client.get("/api/sessions")  # the right token, but the address is throttled
            assert r.status_code == 429
            r = await client.post("/mcp", headers={"Authorization": ""})
            assert r.status_code == 429

    anyio.run(main, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_host_and_origin_checks(backend, tmp_path):
    async def main() -> None:
        async with served(
            tmp_path,
            allowed_hosts=("agents.example.com", "127.0.0.1:*"),
            allowed_origins=("https://ui.example.com",),
        ) as client:
            assert (await client.get("/api/sessions")).status_code == 200
            r = await client.get("/api/sessions", headers={"Host": "agents.example.com"})
            assert r.status_code == 200
            r = await client.get("/api/sessions", headers={"Host": "evil.example"})
            assert r.status_code == 421
            r = await client.get("/api/sessions", headers={"Origin": "https://evil.example"})
            assert r.status_code == 403
            r = await client.get("/api/sessions", headers={"Origin": "https://ui.example.com"})
            assert r.status_code == 200

    anyio.run(main, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_limits_sessions_time_and_output(backend, tmp_path):
    async def main() -> None:
        async with served(
            tmp_path, max_sessions=1, max_retained=2, max_output_bytes=4096
        ) as client:
            s = await start(client, tmp_path, "spam")
            end = await finished(client, s["id"])
            assert end["status"] == "output_limit" and end["output_truncated"]
            assert end["output_bytes"] == 4096
            h = await start(client, tmp_path, "hang")
            r = await client.post(
                "/api/sessions",
                json={"executor": "codex", "prompt": "p", "project_path": project(tmp_path)},
            )
            assert r.status_code == 429  # one may run at once
            await client.post(f"/api/sessions/{h['id']}/cancel")
            third = await start(client, tmp_path, "p")  # the oldest ended one makes room
            ids = [x["id"] for x in (await client.get("/api/sessions")).json()["sessions"]]
            assert ids == [h["id"], third["id"]]
        async with served(tmp_path, time_limit=0.5) as client:
            s = await start(client, tmp_path, "hang")
            assert (await finished(client, s["id"]))["status"] == "timed_out"

    anyio.run(main, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_offsets_are_parsed_strictly(backend, tmp_path):
    async def main() -> None:
        async with served(tmp_path) as client:
            s = await start(client, tmp_path, "p")
            await finished(client, s["id"])
            base = f"/api/sessions/{s['id']}"
            for query, status in [
                ("offset=abc", 400),
                ("offset=-1", 400),
                ("offset=+1", 400),
                ("offset=1_0", 400),
                ("offset=%E2%91%A0", 400),  # a Unicode digit
                ("offset=99999999999999999999999", 400),
                ("offset=100000", 416),
                ("limit=0", 400),
                ("offset=0&limit=1", 200),
            ]:
                assert (await client.get(f"{base}/output?{query}")).status_code == status, query
            r = await client.get(f"{base}/stream", headers={"Last-Event-ID": "x1"})
            assert r.status_code == 400
            r = await client.get(f"{base}/stream", headers={"Last-Event-ID": "100000"})
            assert r.status_code == 416

    anyio.run(main, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_shutdown_stops_running_sessions(backend, tmp_path):
    async def main() -> None:
        async with served(tmp_path) as client:
            s = await start(client, tmp_path, "hang")
            pids = json.loads((await wait_output(client, s["id"], b'"child"')).split(b"\n")[1])
        assert not alive(pids["parent"]) and not alive(pids["child"])

    anyio.run(main, backend=backend)


def test_the_app_refuses_weak_setups(tmp_path):
    with pytest.raises(ValueError, match="at least 16"):
        create_app(command_config(tmp_path), b"short")
    with pytest.raises(ValueError, match="roots"):
        create_app(command_config(tmp_path, roots=()), TOKEN.encode())
