"""TCP services in the configuration and on the command line (docs/configuration.md, docs/tcp.md)."""

from __future__ import annotations

import ipaddress
import re
import textwrap

import pytest

from anpx_host.config import ConfigError, load_config, to_gateway_settings, to_receiver_settings
from anpx_host.launch import make_plan

from .processes import Proc, free_port
from .tcp_helpers import EchoServer, exchange


def _load(tmp_path, text: str):
    path = tmp_path / "anpx.toml"
    path.write_text(textwrap.dedent(text))
    return load_config(path)


def test_receiver_tables_become_services(tmp_path):
    cfg = _load(
        tmp_path,
        """
        [[receiver.tcp]]
        name = "db"
        local = "127.0.0.1:5432"
        [[receiver.tcp]]
        name = "ssh"
        local = "[::1]:22"
        """,
    )
    settings = to_receiver_settings(cfg)
    assert settings.tcp_services == {"db": ("127.0.0.1", 5432), "ssh": ("::1", 22)}


@pytest.mark.parametrize(
    "table",
    [
        'name = "db"',  # no local
        'name = "d b"\nlocal = "127.0.0.1:1"',  # a space in the name
        'name = "db"\nlocal = "127.0.0.1"',  # no port
        'name = "db"\nlocal = "127.0.0.1:65536"',  # port out of range
        'name = "db"\nlocal = "127.0.0.1:1"\nextra = 1',  # an unknown key
        'name = "' + "a" * 65 + '"\nlocal = "127.0.0.1:1"',  # too long
    ],
)
def test_bad_receiver_tables_name_the_key(tmp_path, table):
    with pytest.raises(ConfigError, match=r"\[receiver\] tcp: expected \[\[receiver.tcp\]\]"):
        _load(tmp_path, "[[receiver.tcp]]\n" + table)


def test_duplicate_service_names_are_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"receiver\.tcp"):
        _load(
            tmp_path,
            '[[receiver.tcp]]\nname = "db"\nlocal = "127.0.0.1:1"\n'
            '[[receiver.tcp]]\nname = "db"\nlocal = "127.0.0.1:2"\n',
        )


def test_gateway_tables_become_listeners_with_defaults(tmp_path):
    cfg = _load(
        tmp_path,
        """
        [gateway]
        host = "127.0.0.1"
        route_claims = { "rc-1" = ["/", "tcp:db"], "rc-2" = ["tcp:*"] }
        [[gateway.tcp]]
        port = 15432
        service = "db"
        allow = ["10.0.0.0/8", "127.0.0.1"]
        [[gateway.tcp]]
        port = 2222
        service = "ssh"
        host = "::1"
        """,
    )
    tcp = to_gateway_settings(cfg).tcp
    first, second = tcp.listeners
    assert (first.port, first.service, first.host) == (15432, "db", "127.0.0.1")
    assert first.allow == [ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("127.0.0.1")]
    assert (second.host, second.allow) == ("::1", [])
    assert tcp.service_claims == {"rc-1": ["db"], "rc-2": ["*"]}


@pytest.mark.parametrize(
    "table",
    [
        'service = "db"',
        'port = 70000\nservice = "db"',
        'port = 1\nservice = "db"\nallow = ["not a network"]',
        'port = 1\nservice = "db"\nhost = ""',
        'port = true\nservice = "db"',
    ],
)
def test_bad_gateway_tables_name_the_key(tmp_path, table):
    with pytest.raises(ConfigError, match=r"\[gateway\] tcp: expected \[\[gateway.tcp\]\]"):
        _load(tmp_path, "[[gateway.tcp]]\n" + table)


def test_bad_tcp_claim_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="route_claims"):
        _load(tmp_path, '[gateway]\nroute_claims = { "rc" = ["tcp:bad name"] }\n')


def test_visitor_auth_follows_the_gateway_auth(tmp_path, monkeypatch):
    from anpx_core.auth import NoAuth, SharedSecretServer

    monkeypatch.delenv("ANPX_VISITOR_SECRET", raising=False)
    plan = make_plan("gateway", _load(tmp_path, ""))
    assert isinstance(plan.gateway.settings.tcp.visitor_auth, NoAuth)  # auth off: none needed
    on = '[gateway.auth]\nenabled = true\nshared_secret = "receivers"\n'
    plan = make_plan("gateway", _load(tmp_path, on))
    assert plan.gateway.settings.tcp.visitor_auth is None  # auth on, no credential: refused
    plan = make_plan("gateway", _load(tmp_path, '[gateway]\nvisitor_secret = "v"\n' + on))
    assert isinstance(plan.gateway.settings.tcp.visitor_auth, SharedSecretServer)


def test_agentx_one_service_flags_name_the_service_after_the_client_id(tmp_path):
    from anpx_host.cli import parse_command_line

    mode, cfg = parse_command_line(
        ["receiver", "--client-id", "pg1", "--local-addr", "127.0.0.2", "--local-port", "5432"]
    )
    plan = make_plan(mode, cfg)
    assert plan.receiver.settings.tcp_services == {"pg1": ("127.0.0.2", 5432)}
    assert not plan.receiver.demo  # TCP only: HTTP requests get 404, not the demo


@pytest.mark.slow
@pytest.mark.parametrize("driver", ["trio", "asyncio"])
def test_command_line_end_to_end(tmp_path, driver):
    """A gateway from a config file with a [[gateway.tcp]] listener, a receiver from
    AgentX-style flags, then the public port and the visitor command."""
    echo = EchoServer()
    http, tunnel, public = free_port(), free_port(), free_port()
    config = tmp_path / "gw.toml"
    config.write_text(
        f"[gateway]\nport = {http}\nwss_port = {tunnel}\nadmin_port = 0\n"
        f'[[gateway.tcp]]\nport = {public}\nservice = "pg1"\n'
    )
    gateway = Proc(["python", "-m", f"anpx_{driver}", "gateway", "-c", str(config)])
    receiver = None
    try:
        gateway.wait_for("gateway listening")
        receiver = Proc(
            ["python", "-m", f"anpx_{driver}", "receiver", "--gateway-url",
             f"ws://127.0.0.1:{tunnel}/", "--client-id", "pg1", "--local-port", str(echo.port)]
        )  # fmt: skip
        gateway.wait_for("tcp services pg1")
        assert exchange(public, b"hello") == b"hellobye"
        visitor = Proc(
            ["python", "-m", f"anpx_{driver}", "connect", "pg1", "--gateway-url",
             f"ws://127.0.0.1:{tunnel}/", "--listen", "127.0.0.1:0", "--log-level", "INFO"]
        )  # fmt: skip
        try:
            line = visitor.wait_for("visitor listening on")
            port = int(line.split("127.0.0.1:")[1].split()[0])
            assert exchange(port, b"via visitor") == b"via visitorbye"
        finally:
            visitor.stop()
        assert "receiver pg1 connected" in gateway.output
    finally:
        if receiver is not None:
            receiver.stop()
        gateway.stop()
        echo.close()


def test_tcp_stream_window_defaults_and_bounds(tmp_path):
    from anpx_core.tcp import MAX_TCP_STREAM_WINDOW, TCP_STREAM_WINDOW
    from anpx_host.errors import StartupError
    from anpx_host.visitorcli import parse_visitor

    cfg = _load(tmp_path, "")
    assert to_gateway_settings(cfg.gateway).tcp.limits.window == TCP_STREAM_WINDOW == 8 << 20
    assert to_receiver_settings(cfg.receiver).tcp.window == TCP_STREAM_WINDOW
    for side in ("gateway", "receiver"):
        for ok in (0, MAX_TCP_STREAM_WINDOW):
            cfg = _load(tmp_path, f"[{side}]\ntcp_stream_window = {ok}\n")
            assert getattr(cfg, side).tcp_stream_window == ok
        for bad in (-1, MAX_TCP_STREAM_WINDOW + 1):
            with pytest.raises(ConfigError, match="tcp_stream_window"):
                _load(tmp_path, f"[{side}]\ntcp_stream_window = {bad}\n")
    base = ["db", "--gateway-url", "ws://127.0.0.1:1/", "--listen", "127.0.0.1:0"]
    plan = parse_visitor([*base, "--window", str(MAX_TCP_STREAM_WINDOW)], "connect")
    assert plan.settings.tcp.window == MAX_TCP_STREAM_WINDOW
    with pytest.raises(StartupError, match="--window"):
        parse_visitor([*base, "--window", str(MAX_TCP_STREAM_WINDOW + 1)], "connect")


def test_a_receiver_may_offer_64_services_and_no_more():
    from anpx_core.tcp import MAX_SERVICES, parse_services

    def offer(names: list[str]) -> list[tuple[str, str]]:
        return [("anpx-extensions", "tcp=1"), ("anpx-tcp-services", ", ".join(names))]

    names = [f"s{i}" for i in range(MAX_SERVICES)]
    assert parse_services(offer(names)) == names
    assert parse_services(offer(names + names)) == names  # repeats count once
    with pytest.raises(ValueError, match="more than 64 services"):
        parse_services(offer([*names, "one-more"]))
    # a header packed with distinct names is refused at the 65th, whatever follows
    with pytest.raises(ValueError, match="more than 64 services"):
        parse_services(offer([f"n{i}" for i in range(20_000)]))


def test_visitor_section_and_options(tmp_path):
    from anpx_host.errors import StartupError
    from anpx_host.visitorcli import parse_visitors

    secret = tmp_path / "s"
    secret.write_text("shh\n")
    path = tmp_path / "v.toml"
    path.write_text(
        f"""[visitor]
gateway_url = "ws://127.0.0.1:8765"
client_id = "laptop"
visitor_secret_file = "{secret}"
window = 65536

[[visitor.connect]]
service = "db"
listen = "127.0.0.1:15432"

[[visitor.connect]]
service = "ssh"
listen = "127.0.0.1:2222"
"""
    )
    plans = parse_visitors(["--config", str(path)], "connect")
    assert [(p.settings.service, p.listen) for p in plans] == [
        ("db", ("127.0.0.1", 15432)),
        ("ssh", ("127.0.0.1", 2222)),
    ]
    assert {p.settings.client_id for p in plans} == {"laptop"}
    assert {p.settings.tcp.window for p in plans} == {65536}
    # a SERVICE picks its table; options win over the file
    only = parse_visitors(["ssh", "--config", str(path), "--window", "0"], "connect")
    assert [(p.settings.service, p.listen, p.settings.tcp.window) for p in only] == [
        ("ssh", ("127.0.0.1", 2222), 0)
    ]
    stdio = parse_visitors(["db", "--config", str(path), "--stdio"], "connect")
    assert [p.listen for p in stdio] == [None]
    url = parse_visitors(["db", "--config", str(path), "--gateway-url", "ws://h:1/"], "connect")
    assert url[0].settings.gateway_url == "ws://h:1/"
    refusals = [
        (["--config", str(path), "--listen", "127.0.0.1:1"], "go with a SERVICE"),
        (["--gateway-url", "ws://h:1/"], "name a SERVICE"),
        (["web", "--config", str(path)], "give --listen"),
        (["db", "--listen", "127.0.0.1:1"], "--gateway-url is required"),
    ]
    for argv, message in refusals:
        with pytest.raises(StartupError, match=message):
            parse_visitors(argv, "connect")


@pytest.mark.parametrize(
    "body, key",
    [
        ('[visitor]\ngateway_url = "http://h"\n', "[visitor] gateway_url"),
        ('[visitor]\nclient_id = " x"\n', "[visitor] client_id"),
        ("[visitor]\nwindow = -1\n", "[visitor] window"),
        ('[[visitor.connect]]\nservice = "db"\n', "[visitor] connect"),
        ('[[visitor.connect]]\nservice = "a b"\nlisten = "127.0.0.1:1"\n', "[visitor] connect"),
        (
            '[[visitor.connect]]\nservice = "a"\nlisten = "127.0.0.1:1"\n'
            '[[visitor.connect]]\nservice = "b"\nlisten = "127.0.0.1:1"\n',
            "each listen address once",
        ),
        ('[visitor]\nlisten = "127.0.0.1:1"\n', "[visitor] listen: unknown key"),
    ],
)
def test_visitor_section_errors_name_the_key(tmp_path, body, key):
    from anpx_host.errors import StartupError
    from anpx_host.visitorcli import parse_visitors

    path = tmp_path / "v.toml"
    path.write_text(body)
    with pytest.raises(StartupError, match=re.escape(key)):
        parse_visitors(["--config", str(path)], "connect")
