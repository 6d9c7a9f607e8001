"""Command mode through a real gateway and receiver (separate processes), on both drivers.

The done-when checks of command mode: a fake-claude session streams to a client that
disconnects mid-way and resumes from its last event id - here even across a gateway restart,
so the tunnel reconnects meanwhile - with no byte lost or repeated; cancel stops the process
tree; an unauthenticated request gets 401; a path outside the roots is refused; the MCP SDK's
own client lists and calls the tools through the tunnel, with a public Host header.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
import pytest

from .command_helpers import AUTH, TOKEN, alive, make_fakes
from .processes import Proc, free_port

DRIVERS = ["anpx_trio", "anpx_asyncio"]


class Stack:
    def __init__(self, driver: str, tmp_path: Path) -> None:
        self.driver = driver
        self.root = tmp_path / "projects"
        (self.root / "app").mkdir(parents=True)
        fakes = make_fakes(tmp_path / "bin")
        self.config = tmp_path / "anpx.toml"
        self.config.write_text(
            "[receiver]\nreconnect_delay = 0.1\n\n"
            "[command]\n"
            f"roots = [{json.dumps(str(self.root))}]\n"
            f"claude_path = {json.dumps(fakes['claude'])}\n"
            f"codex_path = {json.dumps(fakes['codex'])}\n"
            "cancel_grace = 2.0\n"
        )
        self.http, self.tunnel = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.http}"
        self.gateway: Proc | None = None
        self.receiver: Proc | None = None

    def start_gateway(self) -> None:
        self.gateway = Proc(
            [
                "python",
                "-m",
                self.driver,
                "gateway",
                "--gateway-port",
                str(self.http),
                "--wss-port",
                str(self.tunnel),
                "--admin-port",
                "0",
            ]
        )
        self.gateway.wait_for("gateway ready")

    def start_receiver(self) -> None:
        self.receiver = Proc(
            [
                "python",
                "-m",
                self.driver,
                "receiver",
                "-c",
                str(self.config),
                "--gateway-url",
                f"ws://127.0.0.1:{self.tunnel}",
                "--command-mode",
                "--enable-mcp",
            ],
            env={"ANPX_COMMAND_TOKEN": TOKEN},
        )
        self.receiver.wait_for("tunnel to")

    def wait_served(self, timeout: float = 15.0) -> None:
        """Until the gateway has a receiver again (503 meanwhile)."""
        deadline = time.monotonic() + timeout
        while httpx.get(f"{self.url}/api/sessions", headers=AUTH).status_code != 200:
            assert time.monotonic() < deadline, "the receiver did not come back"
            time.sleep(0.05)

    def stop(self) -> None:
        for proc in (self.receiver, self.gateway):
            if proc is not None:
                proc.kill()


@pytest.fixture(params=DRIVERS, scope="module")
def stack(request, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # One gateway and receiver per driver for the module: starting them is most of the time.
    s = Stack(request.param, tmp_path_factory.mktemp(request.param))
    try:
        s.start_gateway()
        s.start_receiver()
        yield s
    finally:
        s.stop()
    assert "Traceback" not in (s.receiver.output if s.receiver else "")


def read_events(response: httpx.Response) -> Iterator[dict[str, str]]:
    fields: dict[str, str] = {}
    for line in response.iter_lines():
        if not line:
            if fields:
                yield fields
            fields = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(": ")
            fields[name] = value


def test_stream_resumes_after_client_and_tunnel_reconnect(stack: Stack) -> None:
    with httpx.Client(base_url=stack.url, headers=AUTH, timeout=30) as client:
        body = {
            "executor": "claude",
            "prompt": "halves 60",
            "project_path": str(stack.root / "app"),
            "interactive": True,
        }
        r = client.post("/api/sessions", json=body)
        assert r.status_code == 201, r.text
        sid = r.json()["id"]
        got, last_id = b"", None
        with client.stream("GET", f"/api/sessions/{sid}/stream") as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            for event in read_events(response):
                data = json.loads(event["data"])
                assert data["offset"] == len(got)
                got += data["text"].encode()
                last_id = event["id"]
                if b'"i": 59' in got:
                    break  # the client goes away mid-way; the agent waits for input
        # The tunnel goes down and comes back: the session lives on in the receiver.
        assert stack.gateway is not None
        stack.gateway.stop()
        stack.start_gateway()
        stack.wait_served()
        assert client.post(f"/api/sessions/{sid}/input", json={"data": "go\n"}).status_code == 200
        with client.stream(
            "GET", f"/api/sessions/{sid}/stream", headers={"Last-Event-ID": str(last_id)}
        ) as response:
            for event in read_events(response):
                if event["event"] == "end":
                    assert json.loads(event["data"])["status"] == "exited"
                    break
                data = json.loads(event["data"])
                assert data["offset"] == len(got)
                got += data["text"].encode()
        full = client.get(f"/api/sessions/{sid}/output").content
        assert got == full
        assert full.count(b'"type": "assistant"') == 120


def test_auth_roots_cancel_and_mcp_through_the_tunnel(stack: Stack) -> None:
    assert httpx.get(f"{stack.url}/api/sessions").status_code == 401
    assert httpx.post(f"{stack.url}/mcp", json={}).status_code == 401
    with httpx.Client(base_url=stack.url, headers=AUTH, timeout=30) as client:
        body = {"executor": "codex", "prompt": "p", "project_path": "/etc"}
        r = client.post("/api/sessions", json=body)
        assert r.status_code == 403 and "roots" in r.text
        body = {"executor": "claude", "prompt": "hang", "project_path": str(stack.root / "app")}
        sid = client.post("/api/sessions", json=body).json()["id"]
        with client.stream("GET", f"/api/sessions/{sid}/stream") as response:
            seen = b""
            for event in read_events(response):
                seen += json.loads(event["data"])["text"].encode()
                if b'"child"' in seen:
                    break
        pids = json.loads(seen.split(b"\n")[1])
        assert alive(pids["parent"]) and alive(pids["child"])
        r = client.post(f"/api/sessions/{sid}/cancel")
        assert r.status_code == 200 and r.json()["status"] == "cancelled"
        assert not alive(pids["parent"]) and not alive(pids["child"])
    anyio.run(_mcp_client, stack)


async def _mcp_client(stack: Stack) -> None:
    import httpx2
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    # The Host a public gateway passes on is not a loopback one; the SDK's own allow-list
    # would refuse it, the command app's guard is what decides.
    http = httpx2.AsyncClient(headers={**AUTH, "Host": "agents.example.com"}, timeout=30)
    transport = streamable_http_client(f"{stack.url}/mcp", http_client=http)
    async with http, Client(transport) as client:
        tools = {t.name for t in (await client.list_tools()).tools}
        assert tools == {
            "start_session",
            "list_sessions",
            "get_session",
            "read_output",
            "send_input",
            "cancel_session",
        }
        args = {"executor": "codex", "prompt": "exit 4", "project_path": str(stack.root / "app")}
        started = await client.call_tool("start_session", args)
        assert not started.is_error
        sid = started.structured_content["id"]
        assert started.structured_content["argv"][1:] == ["exec", "exit 4"]
        text, offset = "", 0
        while True:
            out = await client.call_tool(
                "read_output", {"session_id": sid, "offset": offset, "wait_seconds": 10}
            )
            text += out.structured_content["text"]
            offset = out.structured_content["next_offset"]
            if out.structured_content["complete"]:
                break
        assert out.structured_content["exit_code"] == 4 and '"exit": 4' in text
        listed = await client.call_tool("list_sessions", {})
        assert sid in [s["id"] for s in listed.structured_content["sessions"]]
        refused = await client.call_tool("start_session", {**args, "project_path": "/"})
        assert refused.is_error and "roots" in refused.content[0].text


@pytest.mark.parametrize("driver", DRIVERS)
def test_refusals_at_start_are_one_line(driver: str, tmp_path: Path) -> None:
    base = [
        "python",
        "-m",
        driver,
        "receiver",
        "--command-mode",
        "--gateway-url",
        "ws://127.0.0.1:1",
    ]
    no_token = Proc([*base, "--command-root", str(tmp_path)], env={"ANPX_COMMAND_TOKEN": ""})
    assert no_token.finish() == 2
    assert "will not start without an API token" in no_token.lines[-1]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = Proc(
            [*base, "--command-root", str(tmp_path), "--mcp-port", str(port)],
            env={"ANPX_COMMAND_TOKEN": TOKEN},
        )
        assert busy.finish() == 1
    assert busy.lines[-1].endswith(
        f"mcp_port: cannot listen on 127.0.0.1:{port}: address already in use"
    )
