"""examples/command_mode runs as examples/README.md shows (free ports, a private project root)."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys

import httpx

from .processes import ROOT, Proc, free_port

EXAMPLE = ROOT / "examples" / "command_mode"
README = (ROOT / "examples" / "README.md").read_text(encoding="utf-8")


def documented(command: str) -> list[str]:
    assert command in README, f"examples/README.md no longer shows: {command}"
    return shlex.split(command)


def test_command_mode_example(tmp_path):
    work = tmp_path / "command_mode"
    shutil.copytree(EXAMPLE, work)
    projects = tmp_path / "projects"
    projects.mkdir()
    config = work / "command.toml"
    assert '"/tmp/anpx-projects"' in config.read_text()
    config.write_text(config.read_text().replace("/tmp/anpx-projects", str(projects)))
    token = "example-token-" + "x" * 20
    (work / "token.txt").write_text(token + "\n")
    (work / "token.txt").chmod(0o600)
    http, tunnel = free_port(), free_port()
    argv = documented("python -m anpx_trio both -c command.toml")
    proc = Proc(
        [*argv, "--gateway-port", str(http), "--wss-port", str(tunnel), "--admin-port", "0"],
        work,
        env={"PYTHONPATH": str(ROOT)},  # this checkout, not an installed anpx
    )
    try:
        proc.wait_for("tunnel to")
        url = f"http://127.0.0.1:{http}"
        assert httpx.get(f"{url}/api/sessions").status_code == 401
        headers = {"Authorization": f"Bearer {token}"}
        body = {"executor": "hello", "prompt": "hi", "project_path": str(projects)}
        r = httpx.post(f"{url}/api/sessions", json=body, headers=headers)
        assert r.status_code == 201, r.text
        sid = r.json()["id"]
        with httpx.stream(
            "GET", f"{url}/api/sessions/{sid}/stream", headers=headers, timeout=30
        ) as s:
            text = "".join(
                json.loads(line[6:])["text"]
                for line in s.iter_lines()
                if line.startswith("data: ") and '"offset"' in line
            )
        assert text == f"hello from {projects}\nyou said: hi\n"
        documented(
            "ANPX_COMMAND_TOKEN=$(cat token.txt) python mcp_client.py http://127.0.0.1:8080/mcp /tmp/anpx-projects"
        )
        out = subprocess.run(
            [sys.executable, "mcp_client.py", f"{url}/mcp", str(projects)],
            cwd=work,
            env={"ANPX_COMMAND_TOKEN": token, "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout.splitlines() == [
            "tools: cancel_session, get_session, list_sessions, read_output, send_input, start_session",
            f"hello from {projects}",
            "you said: hi over MCP",
            "exit code: 0",
        ]
        assert proc.stop() == 0
    finally:
        proc.kill()
