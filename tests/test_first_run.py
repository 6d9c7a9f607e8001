"""A new user's first run (issue 14, items 6-14): each case once broke, each is fixed here.

Real processes (``python -m anpx_trio`` / ``anpx_asyncio``) on loopback, as a user runs them.
"""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest

from anpx_host.config import ConfigError, load_config, parse_config
from anpx_host.launch import make_plan, ready_lines, receiver_lines, use_bound_ports

from .processes import ROOT, Proc, free_port

DRIVERS = ["anpx_trio", "anpx_asyncio"]


def run(driver: str, *args: str, cwd=ROOT, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", driver, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
    )


@pytest.mark.parametrize("driver", DRIVERS)
def test_both_with_wss_port_0_dials_the_bound_port(driver):
    """Item 6: "--wss-port 0" (pick a free port) used to make the built-in receiver dial :80."""
    http = free_port()
    proc = Proc(
        [
            "python",
            "-m",
            driver,
            "both",
            "--gateway-port",
            str(http),
            "--wss-port",
            "0",
            "--admin-port",
            "0",
        ]
    )
    try:
        line = proc.wait_for("receivers connect to")
        assert ":0/" not in line
        proc.wait_for("tunnel to")  # the receiver connected to the port the gateway bound
        r = httpx.get(f"http://127.0.0.1:{http}/echo?x=1", timeout=10)
        assert r.status_code == 200
    finally:
        proc.kill()


def test_use_bound_ports_rewrites_only_the_built_in_receiver():
    plan = make_plan("both", parse_config({"gateway": {"wss_port": 0}}))
    assert plan.receiver is not None
    use_bound_ports(plan, 40123)
    assert plan.receiver.settings.gateway_urls == ["ws://127.0.0.1:40123/"]
    cfg = parse_config(
        {"receiver": {"gateway_url": "ws://gw.example:9/", "local_url": "http://127.0.0.1:8000"}}
    )
    plan = make_plan("receiver", cfg)
    use_bound_ports(plan, 40123)
    assert plan.receiver.settings.gateway_urls == ["ws://gw.example:9/"]


@pytest.mark.parametrize("driver", DRIVERS)
def test_debug_shows_the_traceback_of_an_app_import_error(driver, tmp_path):
    """Item 9: the docs promise a traceback with --debug; without it, one line."""
    (tmp_path / "broken_app.py").write_text("import json\n\ndef helper():\n    1 / 0\n\nhelper()\n")
    args = ("receiver", "--local-app", "broken_app:app", "--gateway-url", "ws://127.0.0.1:9/")
    quiet = run(driver, *args, cwd=tmp_path)
    assert quiet.returncode == 2 and "Traceback" not in quiet.stderr
    assert len(quiet.stderr.strip().splitlines()) == 1
    loud = run(driver, *args, "--debug", cwd=tmp_path)
    assert loud.returncode == 2
    assert "Traceback" in loud.stderr and "ZeroDivisionError" in loud.stderr
    assert 'broken_app.py", line 4, in helper' in loud.stderr  # where in the user's module
    assert loud.stderr.strip().splitlines()[-1] == quiet.stderr.strip()


@pytest.mark.parametrize("driver", DRIVERS)
def test_missing_log_directory_is_one_line_and_status_2(driver, tmp_path):
    """Item 11: a [logging] file in a directory that does not exist crashed with a traceback."""
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[logging]\nfile = "{tmp_path / "nope" / "anpx.log"}"\n')
    out = run(driver, "gateway", "--config", str(cfg))
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        f"python -m {driver}: [logging] file: cannot open {tmp_path / 'nope' / 'anpx.log'}: "
        "No such file or directory"
    ]


@pytest.mark.parametrize("fmt", ["%(nosuchfield)s %(message)s", "%(asctime)s %(message)d"])
def test_a_log_format_that_fails_on_every_line_is_refused(fmt):
    """Item 11: such a format used to start, then print '--- Logging error ---' per line."""
    with pytest.raises(ConfigError, match=r"logging.*format"):
        parse_config({"logging": {"format": fmt}})


def test_gateway_tls_cert_without_enabled_is_refused(tmp_path):
    """Item 11: cert and key but no `enabled` silently served plain HTTP (anp-proxy's
    default was enabled = true). Explicit `enabled = false` stays the user's choice."""
    tls = {"cert_file": "c.pem", "key_file": "k.pem"}
    with pytest.raises(ConfigError, match=r"gateway\.tls.*enabled"):
        parse_config({"gateway": {"tls": tls}})
    assert (
        parse_config({"gateway": {"tls": {**tls, "enabled": False}}}).gateway.tls.enabled is False
    )


@pytest.mark.parametrize("driver", DRIVERS)
def test_receiver_with_nothing_to_serve_is_refused(driver):
    """Item 13: with no app and no local_url a receiver silently published the demo app."""
    out = run(driver, "receiver", "--gateway-url", "ws://127.0.0.1:9/")
    assert out.returncode == 2
    assert "nothing to serve" in out.stderr and "--local-app" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_ready_lines_never_show_a_wildcard_and_name_localhost_for_tls():
    """Item 14: `ws://0.0.0.0:...` and `https://127.0.0.1:...` (certificates say localhost)."""
    cfg = parse_config(
        {"gateway": {"host": "0.0.0.0", "wss_host": "0.0.0.0", "insecure": True, "admin_port": 0}}
    )
    lines = ready_lines(make_plan("gateway", cfg), 8080, 8765, None)
    assert "0.0.0.0" not in "\n".join(lines)
    assert lines[0] == "anpx gateway ready: open http://127.0.0.1:8080/"
    assert lines[1].startswith("  receivers connect to ws://127.0.0.1:8765/ (listening on every")
    tls = {"enabled": True, "cert_file": "c.pem", "key_file": "k.pem"}
    cfg = parse_config({"gateway": {"tls": tls, "admin_port": 0}})
    lines = ready_lines(make_plan("gateway", cfg), 8443, 8765, None)
    assert lines[0] == "anpx gateway ready: open https://localhost:8443/"
    assert lines[1] == "  receivers connect to wss://localhost:8765/"


def test_receiver_only_says_what_it_serves_and_where_it_dials():
    cfg = parse_config(
        {"receiver": {"gateway_url": "wss://gw.example/t", "local_url": "http://127.0.0.1:8000"}}
    )
    assert receiver_lines(make_plan("receiver", cfg)) == [
        "anpx receiver: serving http://127.0.0.1:8000 through wss://gw.example/t"
    ]
    cfg = parse_config({"receiver": {"local_app_module": "app:app"}})
    assert receiver_lines(make_plan("receiver", cfg))[0].startswith(
        "anpx receiver: serving app app:app"
    )
    assert receiver_lines(make_plan("both", parse_config({}))) == []


@pytest.mark.parametrize("driver", DRIVERS)
def test_receiver_prints_its_line_at_start(driver):
    proc = Proc(
        [
            "python",
            "-m",
            driver,
            "receiver",
            "--local-url",
            "http://127.0.0.1:9",
            "--gateway-url",
            "ws://127.0.0.1:9/",
        ]
    )
    try:
        proc.wait_for("anpx receiver: serving http://127.0.0.1:9 through ws://127.0.0.1:9/")
    finally:
        proc.kill()


def test_load_config_reports_the_seed_example_precisely(tmp_path):
    """Item 10: the seed's own config.example.toml is refused, with a reason that says why."""
    seed = tmp_path / "config.toml"
    seed.write_text(
        'mode = "both"\n[gateway]\nhost = "0.0.0.0"\nport = 8080\nwss_host = "0.0.0.0"\n'
        "wss_port = 8765\n[gateway.tls]\nenabled = false\n[gateway.auth]\nenabled = true\n"
    )
    cfg = load_config(seed)
    with pytest.raises(ConfigError, match="refusing plaintext"):
        make_plan(cfg.mode, cfg)


def _script(name: str) -> list[str]:
    """The installed console script, else the same entry point through this interpreter."""
    import shutil

    if shutil.which(name):
        return [shutil.which(name)]  # type: ignore[list-item]
    func = {"anpx": "anpx", "anp-proxy": "anp_proxy"}[name]
    code = (
        f"import sys; from anpx_trio.cli import {func}; sys.argv[0] = {name!r}; sys.exit({func}())"
    )
    return [sys.executable, "-c", code]


def test_pyproject_declares_the_console_scripts():
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"anpx": "anpx_trio.cli:anpx", "anp-proxy": "anpx_trio.cli:anp_proxy"}


@pytest.mark.parametrize("name", ["anp-proxy", "anpx"])
def test_seed_command_line_mode_and_config(name, tmp_path):
    """Item 6 (console scripts): `anp-proxy --mode both --config FILE`, the seed's way."""
    http, tunnel = free_port(), free_port()
    cfg = tmp_path / "config.toml"
    cfg.write_text(
        f"[gateway]\nport = {http}\nwss_port = {tunnel}\nadmin_port = 0\n"
        '[receiver]\nlocal_app_module = "anpx_host.demo:app"\n'
    )
    proc = Proc([*_script(name), "--mode", "both", "--config", str(cfg)])
    try:
        proc.wait_for("gateway ready")
        proc.wait_for("tunnel to")
        assert httpx.get(f"http://127.0.0.1:{http}/echo", timeout=10).status_code == 200
    finally:
        proc.kill()
    out = subprocess.run(
        [*_script(name), "--mode", "receiver"], capture_output=True, text=True, timeout=30, cwd=ROOT
    )
    assert out.returncode == 2 and out.stderr.startswith(f"{name}: ")


DEPLOY = ROOT / "deploy"


@pytest.mark.parametrize("side", ["gateway", "receiver"])
def test_systemd_unit_reads_nothing_its_dynamic_user_cannot(side):
    """Item 8: /etc/anpx was root:root 750 while the units ran as DynamicUser=yes and read
    the config there (exit 2, then RestartPreventExitStatus=2 kept them down). Now every file
    the service reads comes in through LoadCredential= (read by systemd as root, copied for
    this service alone), and deploy/README.md installs each source file."""
    import re

    from anpx_host.config import load_config

    unit_name = f"anpx-{side}.service"
    unit = (DEPLOY / "systemd" / unit_name).read_text()
    assert "\nDynamicUser=yes\n" in unit
    exec_start = re.search(r"^ExecStart=(.*)$", unit, re.M).group(1)  # type: ignore[union-attr]
    assert "/etc/" not in exec_start  # nothing read straight from root-only /etc/anpx
    config_cred = re.search(r"--config %d/(\S+)", exec_start).group(1)  # type: ignore[union-attr]
    creds = dict(re.findall(r"^LoadCredential=([^:\s]+):(\S+)$", unit, re.M))
    assert creds[config_cred] == f"/etc/anpx/{side}.toml"
    cfg = load_config(DEPLOY / f"{side}.toml")
    secret = getattr(cfg, side).auth.shared_secret_file
    prefix = f"/run/credentials/{unit_name}/"
    assert secret.startswith(prefix) and secret[len(prefix) :] in creds
    readme = (DEPLOY / "README.md").read_text()
    assert "install -d -m 700 /etc/anpx" in readme
    for source in creds.values():
        assert source.startswith("/etc/anpx/")
        name = source.rsplit("/", 1)[1]
        # the README creates it: the secret by redirect, a config by install -m 600
        assert f"> {source}" in readme or f"deploy/{name} /etc/anpx/" in readme, source


def test_demo_shows_no_made_up_client_port():
    """Item 14: the demo printed `client: 127.0.0.1:0` (the tunnel carries no client port)."""
    from anpx_host.demo import _client

    assert _client({"client": ("203.0.113.7", 0)}) == "203.0.113.7"
    assert _client({"client": ("203.0.113.7", 5123)}) == "203.0.113.7:5123"


@pytest.mark.parametrize("driver", DRIVERS)
def test_the_demo_websocket_echo_works_out_of_the_box(driver):
    """Issue 15: `both` with the demo app; its index links the WebSocket echo console, whose
    WebSocket echoes through the tunnel."""
    from websockets.sync.client import connect

    http = free_port()
    ports = ["--gateway-port", str(http), "--wss-port", "0", "--admin-port", "0"]
    proc = Proc(["python", "-m", driver, "both", *ports])
    try:
        proc.wait_for("tunnel to")
        index = httpx.get(f"http://127.0.0.1:{http}/", headers={"accept": "text/html"}, timeout=10)
        assert "href='/ws'" in index.text
        page = httpx.get(f"http://127.0.0.1:{http}/ws", timeout=10)
        assert page.status_code == 200 and "/ws/echo" in page.text
        with connect(f"ws://127.0.0.1:{http}/ws/echo", open_timeout=10) as ws:
            assert ws.recv(timeout=10) == "connected to the anpx demo echo"
            ws.send("hello")
            assert ws.recv(timeout=10) == "hello"
            ws.send(b"\x00\x01")
            assert ws.recv(timeout=10) == b"\x00\x01"
    finally:
        proc.kill()
