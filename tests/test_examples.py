"""examples/ run as examples/README.md says: the same commands, as real processes.

Each command the test runs is first looked up, verbatim, in the README, so the documentation
and the test cannot drift apart. Only the ports differ: free loopback ports are added as
options (gateway, `both`) or written into the copied config files.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .processes import ROOT, Proc, free_port

EXAMPLES = ROOT / "examples"
README = (EXAMPLES / "README.md").read_text(encoding="utf-8")


def documented(command: str) -> list[str]:
    """``command`` split into argv, after checking the README shows exactly this command."""
    assert command in README, f"examples/README.md no longer shows: {command}"
    return shlex.split(command)


@pytest.fixture
def procs() -> Iterator:
    started: list[Proc] = []

    def start(argv: list[str], cwd: Path, env: dict[str, str] | None = None) -> Proc:
        started.append(Proc(argv, cwd, env))
        return started[-1]

    yield start
    for p in reversed(started):
        with contextlib.suppress(Exception):
            p.stop()
        if p.proc.poll() is None:
            p.proc.kill()
            p.proc.wait(5)


def gateway_ports() -> tuple[dict[str, int], list[str]]:
    ports = {"http": free_port(), "tunnel": free_port(), "admin": free_port()}
    options = ["--gateway-port", str(ports["http"]), "--wss-port", str(ports["tunnel"])]
    return ports, [*options, "--admin-port", str(ports["admin"])]


# --- FastAPI agent ---------------------------------------------------------------------------


@pytest.mark.parametrize("driver", ["anpx_trio", "anpx_asyncio"])
def test_fastapi_agent_streams_each_token_as_it_is_made(procs, driver: str) -> None:
    argv = documented("python -m anpx_trio both --local-app agent:app")
    argv[2] = driver  # "FastAPI runs on either driver"
    ports, options = gateway_ports()
    both = procs([*argv, *options], EXAMPLES / "fastapi_agent")
    both.wait_for("tunnel to")  # the receiver is connected
    documented(
        "curl -N -X POST http://127.0.0.1:8080/chat -H 'content-type: application/json' "
        """-d '{"prompt": "hello from the internet"}'"""
    )
    url = f"http://127.0.0.1:{ports['http']}"
    assert httpx.get(url + "/").json()["agent"] == "echo"
    events: list[tuple[float, str]] = []
    start = time.monotonic()
    body = {"prompt": "hello from the internet", "delay": 0.4}
    with httpx.stream("POST", url + "/chat", json=body, timeout=10) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith(("data:", "event:")):
                events.append((time.monotonic() - start, line))
    data = [line for _, line in events if line.startswith("data:")]
    assert [re.search(r'"token": "(\w+)"', d)[1] for d in data[:4]] == [
        "hello",
        "from",
        "the",
        "internet",
    ]
    assert events[-2][1] == "event: done" and data[-1] == 'data: {"tokens": 4}'
    # The first token came out while the agent was still making the others (4 x 0.4 s).
    assert events[-1][0] - events[0][0] > 1.0
    assert both.stop() == 0


# --- Flask --------------------------------------------------------------------------------------


@pytest.mark.parametrize("driver", ["anpx_trio", "anpx_asyncio"])
def test_flask_example_on_either_driver(procs, driver: str) -> None:
    ports, options = gateway_ports()
    argv = documented(f"python -m {driver} both --local-app app:app")
    both = procs([*argv, *options], EXAMPLES / "flask_app")
    both.wait_for("tunnel to")
    url = f"http://127.0.0.1:{ports['http']}"
    documented("curl -L http://127.0.0.1:8080/")
    documented("curl -d text=hi http://127.0.0.1:8080/notes")
    r = httpx.get(url + "/", follow_redirects=True)
    assert r.status_code == 200 and r.json() == {"notes": [], "served_to": "127.0.0.1"}
    assert r.history[0].status_code == 302
    added = httpx.post(url + "/notes", data={"text": "hi"})
    assert added.status_code == 201 and added.json() == {"added": "hi", "count": 1}
    assert httpx.get(url + "/notes").json()["notes"] == ["hi"]
    assert httpx.post(url + "/notes").status_code == 400
    assert both.stop() == 0


# --- forward mode -----------------------------------------------------------------------------


def test_forward_example_serves_the_local_site(procs, tmp_path: Path) -> None:
    here = EXAMPLES / "forward"
    service_port = free_port()
    ports, options = gateway_ports()
    service = documented("python -m http.server 3000 --bind 127.0.0.1 --directory site")
    service[3] = str(service_port)
    procs(service, here)
    gateway = procs([*documented("python -m anpx_trio gateway"), *options], here)
    gateway.wait_for("anpx gateway ready")
    # The documented receiver command, with receiver.toml's ports moved to the free ones.
    config = (here / "receiver.toml").read_text()
    assert '"http://127.0.0.1:3000"' in config and '"ws://127.0.0.1:8765"' in config
    (tmp_path / "receiver.toml").write_text(
        config.replace(":3000", f":{service_port}").replace(":8765", f":{ports['tunnel']}")
    )
    receiver = procs(documented("python -m anpx_trio receiver --config receiver.toml"), tmp_path)
    receiver.wait_for("tunnel to")
    documented("curl http://127.0.0.1:8080/")
    r = httpx.get(f"http://127.0.0.1:{ports['http']}/")
    assert r.status_code == 200 and r.text == (here / "site" / "index.html").read_text()
    stats = httpx.get(f"http://127.0.0.1:{ports['admin']}/stats").json()
    assert [rc["id"] for rc in stats["receivers"]] == ["static-site"]  # client_id from the file


# --- production config, tried on one machine ----------------------------------------------------


def try_locally_script() -> str:
    section = README.split("### Try it on one machine", 1)[1]
    return section.split("```sh\n", 1)[1].split("```", 1)[0]


def test_production_config_with_tls_and_auth(procs, tmp_path: Path) -> None:
    setup = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", try_locally_script()],
        cwd=tmp_path,
        # `python` in the script: this interpreter (trustme is installed with the test extra).
        env={
            **os.environ,
            "EX": str(EXAMPLES / "production"),
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert setup.returncode == 0, setup.stderr
    assert (tmp_path / "secret").stat().st_mode & 0o077 == 0
    # Free ports instead of the documented 8443 / 8765 / 8081 / 8000.
    http, tunnel, admin, app = (free_port() for _ in range(4))
    gateway_toml = tmp_path / "gateway.toml"
    text = gateway_toml.read_text()
    for old, new in [
        ("port = 8443", http),
        ("wss_port = 8765", tunnel),
        ("admin_port = 8081", admin),
    ]:
        assert old in text
        text = text.replace(old, f"{old.split('=')[0]}= {new}")
    gateway_toml.write_text(text)
    receiver_toml = tmp_path / "receiver.toml"
    text = receiver_toml.read_text()
    assert "wss://localhost:8765" in text and "http://127.0.0.1:8000" in text
    receiver_toml.write_text(
        text.replace("localhost:8765", f"localhost:{tunnel}").replace(":8000", f":{app}")
    )

    gateway = procs(documented("python -m anpx_trio gateway --config gateway.toml"), tmp_path)
    assert gateway.wait_for("anpx gateway ready") == (
        f"anpx gateway ready: open https://localhost:{http}/"
    )
    service = documented("python -m http.server 8000 --bind 127.0.0.1")
    service[3] = str(app)
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "index.html").write_text("behind the receiver")
    procs(service, tmp_path / "site")
    command = "SSL_CERT_FILE=tls/client.pem python -m anpx_trio receiver --config receiver.toml"
    argv = documented(command)[1:]
    env = {"SSL_CERT_FILE": str(tmp_path / "tls" / "client.pem")}
    receiver = procs(argv, tmp_path, env)
    receiver.wait_for(f"tunnel to localhost:{tunnel} open")
    documented("curl --cacert tls/client.pem https://localhost:8443/")
    trust = ssl.create_default_context(cafile=str(tmp_path / "tls" / "client.pem"))
    r = httpx.get(f"https://localhost:{http}/", verify=trust)
    assert r.status_code == 200 and r.text == "behind the receiver"
    health = httpx.get(f"http://127.0.0.1:{admin}/health").json()
    assert health["receivers"] == 1

    # Another secret: refused, with the log lines the README quotes.
    (tmp_path / "wrong").write_text("not-the-secret")
    (tmp_path / "wrong").chmod(0o600)
    (tmp_path / "intruder.toml").write_text(
        receiver_toml.read_text().replace(str(tmp_path / "secret"), str(tmp_path / "wrong"))
    )
    intruder = procs([*argv[:-1], "intruder.toml"], tmp_path, env)
    intruder.wait_for("gateway refused the tunnel: HTTP 401")
    line = gateway.wait_for("refused: bad signature for client")
    assert re.search(r"tunnel handshake from 127\.0\.0\.1:\d+ refused: bad signature", line)
    assert "gateway refused the tunnel: HTTP 401" in README
    assert httpx.get(f"http://127.0.0.1:{admin}/health").json()["receivers"] == 1
    intruder.stop()
    assert receiver.stop() == 0 and gateway.stop() == 0


# --- deploy/: what can be checked without root, systemd or a container engine ------------------

DEPLOY = ROOT / "deploy"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
@pytest.mark.parametrize("unit", ["anpx-gateway.service", "anpx-receiver.service"])
def test_systemd_units_verify_cleanly(unit: str, tmp_path: Path) -> None:
    text = (DEPLOY / "systemd" / unit).read_text()
    for key in ("Restart=on-failure", "NoNewPrivileges=yes", "ProtectSystem=strict"):
        assert f"\n{key}\n" in text
    assert "\nDynamicUser=yes\n" in text and "\nLoadCredential=anpx-secret:" in text
    # verify checks that ExecStart's program exists: use this interpreter for /opt/anpx's.
    (tmp_path / unit).write_text(text.replace("/opt/anpx/venv/bin/python", sys.executable))
    result = subprocess.run(
        ["systemd-analyze", "verify", str(tmp_path / unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    # Unknown keys and bad values are only warnings (exit 0): any output is a failure.
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_deploy_configs_load_and_units_name_them(tmp_path: Path) -> None:
    from anpx_host.config import load_config
    from anpx_host.launch import make_plan

    secret = tmp_path / "secret"
    secret.write_text("s")
    secret.chmod(0o600)
    configs = [DEPLOY / "gateway.toml", DEPLOY / "receiver.toml"]
    configs += [DEPLOY / "docker" / "gateway.toml", DEPLOY / "docker" / "receiver.toml"]
    for path in configs:
        # The secret files exist only on the deployed machine: point at a stand-in.
        text = re.sub(
            r'shared_secret_file = "[^"]+"', f'shared_secret_file = "{secret}"', path.read_text()
        )
        (tmp_path / "config.toml").write_text(text)
        cfg = load_config(tmp_path / "config.toml")
        assert make_plan(cfg.mode, cfg).warnings == [], path
    secret_paths = {
        "anpx-gateway.service": load_config(configs[0]).gateway.auth.shared_secret_file,
        "anpx-receiver.service": load_config(configs[1]).receiver.auth.shared_secret_file,
    }
    for unit, path in secret_paths.items():
        assert path == f"/run/credentials/{unit}/anpx-secret"  # where LoadCredential puts it


NGINX_MAIN = """
daemon off;
master_process off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    include {tmp}/anpx.conf;
}}
"""


@pytest.mark.skipif(shutil.which("nginx") is None, reason="no nginx on PATH")
def test_nginx_in_front_terminates_tls_and_carries_the_tunnel(procs, tmp_path: Path) -> None:
    """deploy/nginx/anpx.conf, deploy/gateway.toml and deploy/receiver.toml, on free ports:
    users over HTTPS (and their WebSockets) and the receiver's signed wss:// handshake both
    pass through nginx."""
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("localhost")
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "fullchain.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "privkey.pem"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    (tmp_path / "secret").write_text("nginx-test-secret")
    (tmp_path / "secret").chmod(0o600)
    https, plain, http, tunnel, admin = (free_port() for _ in range(5))

    site = (DEPLOY / "nginx" / "anpx.conf").read_text()
    replacements = [
        ("/etc/letsencrypt/live/gateway.example.org", str(tmp_path)),
        ("server_name gateway.example.org", "server_name localhost"),
        ("listen 443 ssl;", f"listen 127.0.0.1:{https} ssl;"),
        ("listen 80;", f"listen 127.0.0.1:{plain};"),
        ("127.0.0.1:8080", f"127.0.0.1:{http}"),
        ("127.0.0.1:8765", f"127.0.0.1:{tunnel}"),
        # plain HTTP's timeout, shortened: a user's WebSocket must outlive it
        ("proxy_read_timeout 90s;", "proxy_read_timeout 1s;"),
    ]
    for old, new in replacements:
        assert old in site, old
        site = site.replace(old, new)
    site = "\n".join(line for line in site.splitlines() if "[::]" not in line)  # no IPv6 here
    (tmp_path / "anpx.conf").write_text(site)
    (tmp_path / "nginx.conf").write_text(NGINX_MAIN.format(tmp=tmp_path))
    nginx = ["nginx", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")]
    check = subprocess.run([*nginx, "-t"], capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stderr
    procs(nginx, tmp_path)

    gateway_toml = (DEPLOY / "gateway.toml").read_text()
    (tmp_path / "gateway.toml").write_text(
        gateway_toml.replace("/run/credentials/anpx-gateway.service/anpx-secret", "secret")
    )
    options = ["--gateway-port", str(http), "--wss-port", str(tunnel), "--admin-port", str(admin)]
    gateway = procs(
        ["python", "-m", "anpx_asyncio", "gateway", "-c", "gateway.toml", *options], tmp_path
    )
    gateway.wait_for("anpx gateway ready")
    receiver_toml = (DEPLOY / "receiver.toml").read_text()
    assert 'gateway_url = "wss://gateway.example.org/anpx-tunnel"' in receiver_toml
    (tmp_path / "receiver.toml").write_text(
        receiver_toml.replace(
            "/run/credentials/anpx-receiver.service/anpx-secret", "secret"
        ).replace("gateway.example.org", f"localhost:{https}")
    )
    argv = ["python", "-m", "anpx_trio", "receiver", "-c", "receiver.toml"]
    receiver = procs(
        [*argv, "--local-app", "anpx_host.demo:app"],
        tmp_path,
        {"SSL_CERT_FILE": str(tmp_path / "ca.pem")},
    )
    receiver.wait_for(f"tunnel to localhost:{https} open")
    gateway.wait_for("receiver agent-1 connected")

    trust = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
    with httpx.Client(base_url=f"https://localhost:{https}", verify=trust, timeout=10) as client:
        body = os.urandom(1024 * 1024)  # the demo echo's limit
        echo = client.post("/echo?via=nginx", content=body).json()
        assert echo["body_length"] == len(body) and echo["query_string"] == "via=nginx"
        headers = dict(echo["headers"])
        assert headers["host"] == f"localhost:{https}"
        assert headers["x-forwarded-for"] == "127.0.0.1, 127.0.0.1"  # the user, then nginx
        with client.stream("GET", "/stream?n=3") as r:
            events = [block for block in r.iter_text() if block.strip()]
        assert "".join(events).count("event: tick") == 3
    from websockets.sync.client import connect

    # a user's WebSocket: upgraded by nginx, then through the tunnel to the demo's echo
    with connect(f"wss://localhost:{https}/ws/echo", ssl=trust, open_timeout=10) as ws:
        assert ws.recv(timeout=10) == "connected to the anpx demo echo"
        ws.send("via nginx")
        assert ws.recv(timeout=10) == "via nginx"
        # nothing comes back for longer than plain HTTP's read timeout (1 s here, before the
        # gateway's first ping at 30 s): the upgraded connection has its own, so it stays open
        with pytest.raises(TimeoutError):
            ws.recv(timeout=2.5)
        ws.send("still open")
        assert ws.recv(timeout=10) == "still open"
    redirect = httpx.get(f"http://127.0.0.1:{plain}/x?y=1", headers={"host": "localhost"})
    assert redirect.status_code == 301
    assert redirect.headers["location"] == "https://localhost/x?y=1"
