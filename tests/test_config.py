"""anpx_host.config: the anp-proxy schema, our additions, validation, precedence, mapping."""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from anpx_host.config import (
    AuthConfig,
    Config,
    ConfigError,
    GatewayConfig,
    GatewayWebSocketConfig,
    LoggingConfig,
    ReceiverConfig,
    ReceiverWebSocketConfig,
    TlsConfig,
    load_config,
    parse_config,
    to_gateway_settings,
    to_receiver_settings,
)

from .hypothesis_profiles import examples

DOCS = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"

# Every key of the seed's schema, as an anp-proxy user would have written it.
SEED_TOML = """\
# ANP Proxy Configuration
mode = "both"
debug = true

[logging]
level = "warning"
format = "%(asctime)s [%(levelname)s] %(name)s: %(message)s"
file = "anp-proxy.log"
max_size = "10MB"
backup_count = 3

[gateway]
host = "0.0.0.0"
port = 8089
wss_host = "0.0.0.0"
wss_port = 8789
max_connections = 100
timeout = 30.0
keepalive_timeout = 60.0
chunk_size = 65536   # 64KB
ping_interval = 10.0

[gateway.tls]
enabled = true
cert_file = "server.crt"
key_file = "server.key"
ca_file = "ca.crt"
verify_mode = "optional"

[gateway.auth]
enabled = true
shared_secret = "gateway-secret"
token_expiry = 3600 # 1 hour
max_attempts = 3
did_wba_enabled = false
did_document_path = "docs/did_info/doc.json"
allowed_dids = ["did:wba:example.com:one"]

[gateway.database]
enabled = false
host = "localhost"
port = 3306

[receiver]
gateway_url = "wss://gateway.example.com:8789"
local_app_module = "myapp.main:app"
local_host = "127.0.0.1"
local_port = 8000
timeout = 20
keepalive_interval = 60.0
ping_interval = 15.0
reconnect_enabled = false
reconnect_delay = 5.0
max_reconnect_attempts = 10
chunk_size = 32768

[receiver.tls]
enabled = true
cert_file = "client.crt"
key_file = "client.key"
ca_file = "ca.crt"
verify_mode = "required"

[receiver.auth]
enabled = true
shared_secret = "receiver-secret"
token_expiry = 600
max_attempts = 5
"""


def err(data: dict, overrides: dict | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_config(data, overrides)
    return info.value


# --- defaults ------------------------------------------------------------------------------


def test_defaults_run_safely_on_a_fresh_machine() -> None:
    cfg = load_config(None)
    assert cfg.mode == "gateway" and cfg.debug is False
    g = cfg.gateway
    assert (g.host, g.port, g.wss_host, g.wss_port) == ("127.0.0.1", 8080, "127.0.0.1", 8765)
    assert (g.admin_host, g.admin_port) == ("127.0.0.1", 8081)
    assert g.tls.enabled is False and g.auth.enabled is False and g.insecure is False
    assert (g.timeout, g.keepalive_timeout, g.chunk_size, g.ping_interval) == (
        30.0,
        5.0,
        262144,
        30.0,
    )
    assert (g.max_streams_per_receiver, g.max_header_bytes, g.max_body_bytes) == (
        100,
        65536,
        104857600,
    )
    assert (g.header_timeout, g.stream_window, g.max_frame_size) == (10.0, 1048576, 16777216)
    assert g.shutdown_grace == 10.0
    r = cfg.receiver
    assert r.gateway_url == "ws://127.0.0.1:8765" and r.urls == ("ws://127.0.0.1:8765",)
    assert (r.reconnect_enabled, r.reconnect_delay, r.max_reconnect_attempts) == (True, 1.0, 0)
    assert (r.keepalive_interval, r.timeout, r.ping_interval) == (30.0, 30.0, 30.0)
    assert r.tls.verify_mode == "required"  # a receiver verifies the gateway by default
    assert g.tls.verify_mode == "none"  # a gateway asks no client certificates by default
    assert r.backend == "demo" and r.forward is None
    assert cfg.logging.level == "INFO" and cfg.logging.max_size == 10 * 1024 * 1024
    assert cfg.ignored == ()


def test_config_is_frozen() -> None:
    cfg = load_config(None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.gateway.port = 1  # type: ignore[misc]


# --- the seed's config.toml ----------------------------------------------------------------


def test_seed_config_with_every_seed_key_loads_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(SEED_TOML, encoding="utf-8")
    cfg = load_config(path)
    assert cfg.mode == "both" and cfg.debug is True
    assert cfg.logging == LoggingConfig(
        level="WARNING",
        format="%(asctime)s [%(levelname)s] %(name)s: %(message)s",
        file="anp-proxy.log",
        max_size=10 * 1024 * 1024,
        backup_count=3,
    )
    g = cfg.gateway
    assert (g.host, g.port, g.wss_host, g.wss_port) == ("0.0.0.0", 8089, "0.0.0.0", 8789)
    assert (g.max_connections, g.timeout, g.keepalive_timeout) == (100, 30.0, 60.0)
    assert (g.chunk_size, g.ping_interval) == (65536, 10.0)
    assert g.tls == TlsConfig(True, "server.crt", "server.key", "ca.crt", "optional")
    assert g.auth == AuthConfig(
        True,
        "gateway-secret",
        3600,
        3,
        did_document_path="docs/did_info/doc.json",
        allowed_dids=("did:wba:example.com:one",),
    )
    r = cfg.receiver
    # An explicit gateway_url is kept in `both` mode.
    assert r.gateway_url == "wss://gateway.example.com:8789"
    assert (r.local_app_module, r.local_host, r.local_port) == ("myapp.main:app", "127.0.0.1", 8000)
    assert (r.timeout, r.keepalive_interval, r.ping_interval) == (20.0, 60.0, 15.0)
    assert isinstance(r.timeout, float)
    assert (r.reconnect_enabled, r.reconnect_delay, r.max_reconnect_attempts) == (False, 5.0, 10)
    assert r.chunk_size == 32768
    assert r.tls == TlsConfig(True, "client.crt", "client.key", "ca.crt", "required")
    assert r.auth == AuthConfig(True, "receiver-secret", 600, 5)
    # An app module wins over the seed's local_host/local_port.
    assert r.backend == "app" and r.forward is None
    assert cfg.ignored == ("[gateway] database",)


def test_did_wba_keys_are_checked() -> None:
    e = err({"gateway": {"auth": {"allowed_dids": ["alice"]}}})
    assert str(e).startswith(
        "config error: [gateway.auth] allowed_dids: expected an array of did:wba"
    )
    e = err({"mode": "receiver", "receiver": {"auth": {"did_wba_enabled": True}}})
    assert str(e) == (
        "config error: [receiver.auth] did_document_path: required when did_wba_enabled = true"
    )
    e = err({"gateway": {"wss_host": "0.0.0.0", "auth": {"did_wba_enabled": True}}})
    assert "did_service_domains: required with did_wba_enabled when wss_host is a wildcard" in str(
        e
    )
    e = err({"gateway": {"auth": {"did_wba_enabled": True, "did_fetch": False}}})
    assert str(e) == "config error: [gateway.auth] did_fetch: false needs did_documents_dir"


def test_seed_keys_are_ignored_only_where_the_seed_had_them() -> None:
    e = err({"receiver": {"database": {"enabled": False}}})
    assert str(e) == "config error: [receiver.database]: unknown section"
    e = err({"logging": {"did_wba_enabled": False}})
    assert str(e) == "config error: [logging] did_wba_enabled: unknown key"


# --- one-line errors -----------------------------------------------------------------------

ERRORS = [
    (
        {"gateway": {"port": "abc"}},
        'config error: [gateway] port: expected an integer from 0 to 65535, got "abc"',
    ),
    (
        {"receiver": {"gatway_url": "ws://x"}},
        "config error: [receiver] gatway_url: unknown key (did you mean gateway_url?)",
    ),
    ({"gateway": {"port": 65536}}, "config error: [gateway] port: expected an integer from 0 to 65535, got 65536"),
    ({"gateway": {"port": True}}, "config error: [gateway] port: expected an integer from 0 to 65535, got true"),
    ({"gateway": {"port": 8080.0}}, "config error: [gateway] port: expected an integer from 0 to 65535, got 8080.0"),
    ({"gateway": {"timeout": 0}}, "config error: [gateway] timeout: expected a number of seconds > 0, got 0"),
    ({"gateway": {"timeout": True}}, "config error: [gateway] timeout: expected a number of seconds > 0, got true"),
    ({"gateway": {"timeout": math.inf}}, "config error: [gateway] timeout: expected a number of seconds > 0, got Infinity"),
    ({"gateway": {"ping_interval": -1}}, "config error: [gateway] ping_interval: expected a number of seconds >= 0, got -1"),
    ({"gateway": {"max_connections": 0}}, "config error: [gateway] max_connections: expected an integer >= 1, got 0"),
    ({"gateway": {"chunk_size": 100}}, "config error: [gateway] chunk_size: expected an integer of bytes from 1024 to 1073741824, got 100"),
    ({"mode": "proxy"}, 'config error: mode: expected one of "gateway", "receiver", "both", got "proxy"'),
    ({"debug": "yes"}, 'config error: debug: expected true or false, got "yes"'),
    ({"logging": {"level": "verbose"}}, 'config error: [logging] level: expected one of "DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL", got "verbose"'),
    ({"logging": {"max_size": "10XB"}}, 'config error: [logging] max_size: expected a size in bytes: an integer >= 0 or a string like "10MB", got "10XB"'),
    ({"logging": {"max_size": -1}}, 'config error: [logging] max_size: expected a size in bytes: an integer >= 0 or a string like "10MB", got -1'),
    ({"logging": {"file": 3}}, "config error: [logging] file: expected a file path (a string), got 3"),
    ({"logging": {"format": "%(asctime"}}, 'config error: [logging] format: expected a logging format string such as "%(asctime)s %(levelname)s %(message)s", got "%(asctime"'),
    ({"gateway": {"tls": {"verify_mode": "strict"}}}, 'config error: [gateway.tls] verify_mode: expected one of "none", "optional", "required", got "strict"'),
    ({"gateway": {"host": ""}}, 'config error: [gateway] host: expected a non-empty string, got ""'),
    ({"gateway": {"tls": True}}, "config error: [gateway] tls: expected a table [gateway.tls], got true"),
    ({"gateway": {"tsl": {"enabled": True}}}, "config error: [gateway.tsl]: unknown section (did you mean [gateway.tls]?)"),
    ({"gatewy": {}}, "config error: [gatewy]: unknown section (did you mean [gateway]?)"),
    ({"extras": {}}, "config error: [extras]: unknown section (sections are [logging], [gateway], [receiver], [command] and [visitor])"),
    ({"verbose": True}, "config error: verbose: unknown key"),
    ({"gateway": 5}, "config error: gateway: expected a table [gateway], got 5"),
    ({"gateway": {"odd key": 1}}, 'config error: [gateway] "odd key": unknown key'),
    ({"receiver": {"gateway_url": "http://gw:8765"}}, 'config error: [receiver] gateway_url: expected a ws:// or wss:// URL with a host, e.g. ws://127.0.0.1:8765, got "http://gw:8765"'),
    ({"receiver": {"gateway_url": "ws://gw:99999"}}, 'config error: [receiver] gateway_url: expected a ws:// or wss:// URL with a host, e.g. ws://127.0.0.1:8765, got "ws://gw:99999"'),
    ({"receiver": {"gateway_url": "ws:///path"}}, 'config error: [receiver] gateway_url: expected a ws:// or wss:// URL with a host, e.g. ws://127.0.0.1:8765, got "ws:///path"'),
    ({"receiver": {"gateway_urls": []}}, "config error: [receiver] gateway_urls: expected a non-empty array of ws:// or wss:// URLs, got []"),
    ({"receiver": {"gateway_urls": ["ws://a", 5]}}, 'config error: [receiver] gateway_urls: expected a non-empty array of ws:// or wss:// URLs, got ["ws://a", 5]'),
    ({"receiver": {"local_app_module": "myapp"}}, 'config error: [receiver] local_app_module: expected "module:attribute", e.g. "myapp.main:app", got "myapp"'),
    ({"receiver": {"local_app_module": "a..b:app"}}, 'config error: [receiver] local_app_module: expected "module:attribute", e.g. "myapp.main:app", got "a..b:app"'),
    ({"receiver": {"local_url": "https://127.0.0.1:8000"}}, 'config error: [receiver] local_url: expected "http://host:port" (a local HTTP service), e.g. "http://127.0.0.1:8000", got "https://127.0.0.1:8000"'),
    ({"receiver": {"local_url": "http://127.0.0.1:8000/app"}}, 'config error: [receiver] local_url: expected "http://host:port" (a local HTTP service), e.g. "http://127.0.0.1:8000", got "http://127.0.0.1:8000/app"'),
    ({"receiver": {"local_port": 0}}, "config error: [receiver] local_port: expected an integer from 1 to 65535, got 0"),
    ({"receiver": {"root_path": "/api/"}}, 'config error: [receiver] root_path: expected "" or a path starting with "/" and not ending with "/", e.g. "/api", got "/api/"'),
    ({"receiver": {"client_id": "a\nb"}}, 'config error: [receiver] client_id: expected printable ASCII without leading or trailing spaces, at most 128 characters, got "a\\nb"'),
    ({"receiver": {"max_reconnect_attempts": -1}}, "config error: [receiver] max_reconnect_attempts: expected an integer >= 0, got -1"),
    ({"receiver": {"reconnect_delay": 0}}, "config error: [receiver] reconnect_delay: expected a number of seconds > 0, got 0"),
]  # fmt: skip


@pytest.mark.parametrize(("data", "message"), ERRORS)
def test_error_names_the_key_and_what_is_expected(data: dict, message: str) -> None:
    e = err(data)
    assert str(e) == message
    assert "\n" not in str(e)
    assert e.from_option is False


def test_secret_values_never_appear_in_errors() -> None:
    e = err({"gateway": {"auth": {"shared_secret": 987654321}}})
    assert str(e) == (
        "config error: [gateway.auth] shared_secret: expected a non-empty string, got an integer"
    )
    e = err({"receiver": {"auth": {"shared_secret": ""}}})
    assert str(e) == (
        "config error: [receiver.auth] shared_secret: expected a non-empty string, "
        "got an empty string"
    )


def test_long_and_multiline_values_stay_on_one_short_line() -> None:
    e = err({"gateway": {"host": ["x" * 500, "line\nbreak"]}})
    text = str(e)
    assert "\n" not in text and len(text) < 150
    assert text.startswith('config error: [gateway] host: expected a non-empty string, got ["xxx')
    assert text.endswith("...")


def test_first_bad_key_in_file_order_is_reported() -> None:
    e = err({"gateway": {"port": "x", "wss_port": "y"}})
    assert e.path == "gateway.port"


# --- accepted forms ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "size"),
    [
        (0, 0),
        (1000, 1000),
        ("10MB", 10 * 1024**2),
        ("10mb", 10 * 1024**2),
        ("512 KiB", 512 * 1024),
        ("1g", 1024**3),
        ("2GB", 2 * 1024**3),
        ("123", 123),
        ("64B", 64),
    ],
)
def test_log_max_size_accepts_bytes_and_unit_strings(value: object, size: int) -> None:
    assert parse_config({"logging": {"max_size": value}}).logging.max_size == size


def test_integers_are_fine_where_floats_are_expected() -> None:
    cfg = parse_config({"gateway": {"timeout": 7, "ping_interval": 0}})
    assert cfg.gateway.timeout == 7.0 and type(cfg.gateway.timeout) is float
    assert cfg.gateway.ping_interval == 0.0


def test_log_level_is_case_insensitive_and_empty_paths_mean_unset() -> None:
    cfg = parse_config({"logging": {"level": "debug", "file": ""}})
    assert cfg.logging.level == "DEBUG" and cfg.logging.file is None


def test_dotted_attribute_app_and_gateway_url_list() -> None:
    cfg = parse_config(
        {
            "receiver": {
                "local_app_module": "pkg.main:holder.app",
                "gateway_urls": ["ws://a:1", "wss://b/tunnel?x=1"],
                "root_path": "/api",
                "client_id": "edge node-1",
            }
        }
    )
    r = cfg.receiver
    assert r.local_app_module == "pkg.main:holder.app"
    assert r.urls == ("ws://a:1", "wss://b/tunnel?x=1")
    assert (r.root_path, r.client_id) == ("/api", "edge node-1")


@pytest.mark.parametrize(
    ("receiver", "backend", "forward"),
    [
        ({}, "demo", None),
        ({"local_port": 8000}, "forward", ("127.0.0.1", 8000)),
        ({"local_host": "10.0.0.5", "local_port": 9000}, "forward", ("10.0.0.5", 9000)),
        ({"local_url": "http://127.0.0.1:8000"}, "forward", ("127.0.0.1", 8000)),
        ({"local_url": "http://backend/"}, "forward", ("backend", 80)),
        ({"local_url": "http://[::1]:81"}, "forward", ("::1", 81)),
        ({"local_app_module": "m:app"}, "app", None),
        ({"local_app_module": "m:app", "local_port": 8000}, "app", None),
    ],
)
def test_backend_selection(receiver: dict, backend: str, forward: tuple | None) -> None:
    r = parse_config({"receiver": receiver}).receiver
    assert (r.backend, r.forward) == (backend, forward)


# --- cross-field checks --------------------------------------------------------------------

CROSS = [
    (
        {"gateway": {"tls": {"enabled": True}}},
        "config error: [gateway.tls] cert_file: required when enabled = true",
    ),
    (
        {"gateway": {"tls": {"key_file": "k.pem"}}},
        "config error: [gateway.tls] key_file: needs cert_file as well",
    ),
    (
        {"receiver": {"tls": {"key_file": "k.pem"}}},
        "config error: [receiver.tls] key_file: needs cert_file as well",
    ),
    (
        {"gateway": {"auth": {"shared_secret": "s", "shared_secret_file": "f"}}},
        "config error: [gateway.auth] shared_secret_file: conflicts with shared_secret; set only one",
    ),
    (
        {"receiver": {"auth": {"shared_secret": "s", "shared_secret_file": "f"}}},
        "config error: [receiver.auth] shared_secret_file: conflicts with shared_secret; set only one",
    ),
    (
        {"gateway": {"chunk_size": 8192, "max_frame_size": 4096}},
        "config error: [gateway] chunk_size: must not exceed max_frame_size (4096)",
    ),
    (
        {"receiver": {"chunk_size": 8192, "max_frame_size": 4096}},
        "config error: [receiver] chunk_size: must not exceed max_frame_size (4096)",
    ),
    (
        {"gateway": {"wss_port": 8080}},
        "config error: [gateway] wss_port: 8080 is already taken by port",
    ),
    (
        {"gateway": {"admin_port": 8765}},
        "config error: [gateway] admin_port: 8765 is already taken by wss_port",
    ),
    (
        {"gateway": {"host": "0.0.0.0", "wss_host": "10.0.0.1", "wss_port": 8080}},
        "config error: [gateway] wss_port: 8080 is already taken by port",
    ),
    (
        {"receiver": {"local_app_module": "m:app", "local_url": "http://127.0.0.1:1"}},
        "config error: [receiver] local_url: conflicts with local_app_module; set only one",
    ),
    (
        {"receiver": {"local_url": "http://127.0.0.1:1", "local_port": 2}},
        "config error: [receiver] local_url: conflicts with local_port; set only one",
    ),
    (
        {"receiver": {"gateway_url": "ws://a", "gateway_urls": ["ws://b"]}},
        "config error: [receiver] gateway_urls: conflicts with gateway_url; set only one",
    ),
    (
        {"receiver": {"tls": {"enabled": True}}},
        'config error: [receiver] gateway_url: must be wss:// when [receiver.tls] enabled = true, got "ws://127.0.0.1:8765"',
    ),
    (
        {"receiver": {"tls": {"enabled": True}, "gateway_urls": ["wss://a", "ws://b"]}},
        'config error: [receiver] gateway_urls: must be wss:// when [receiver.tls] enabled = true, got "ws://b"',
    ),
]


@pytest.mark.parametrize(("data", "message"), CROSS)
def test_cross_field_checks(data: dict, message: str) -> None:
    assert str(err(data)) == message


def test_listeners_may_share_a_port_on_different_addresses_and_port_0_never_clashes() -> None:
    parse_config({"gateway": {"host": "10.0.0.1", "wss_host": "10.0.0.2", "wss_port": 8080}})
    parse_config({"gateway": {"port": 0, "wss_port": 0, "admin_port": 0}})
    parse_config({"gateway": {"admin_port": 0, "wss_port": 8081}})


def test_certificate_files_are_not_opened_here(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.pem")
    cfg = parse_config({"gateway": {"tls": {"enabled": True, "cert_file": missing}}})
    assert cfg.gateway.tls.cert_file == missing


# --- precedence ----------------------------------------------------------------------------


def test_precedence_option_over_file_over_default(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[gateway]\nport = 9000\nwss_port = 9001\n")
    cfg = load_config(path, {"gateway.port": 9100})
    assert cfg.gateway.port == 9100  # option
    assert cfg.gateway.wss_port == 9001  # file
    assert cfg.gateway.admin_port == 8081  # default


def test_option_replaces_the_files_other_way_of_saying_the_same_thing() -> None:
    file = {
        "receiver": {"local_url": "http://127.0.0.1:8000", "gateway_urls": ["ws://a", "ws://b"]}
    }
    cfg = parse_config(file, {"receiver.local_app_module": "m:app"})
    assert cfg.receiver.backend == "app" and cfg.receiver.local_url is None
    cfg = parse_config(
        {"receiver": {"local_app_module": "m:app"}}, {"receiver.local_url": "http://h:1"}
    )
    assert cfg.receiver.forward == ("h", 1) and cfg.receiver.local_app_module is None
    cfg = parse_config(
        {"receiver": {"local_host": "10.1.1.1", "local_port": 5}},
        {"receiver.local_url": "http://h:1"},
    )
    assert cfg.receiver.forward == ("h", 1)
    cfg = parse_config(file, {"receiver.gateway_url": "wss://c"})
    assert cfg.receiver.urls == ("wss://c",)
    # Within one layer a contradiction is still an error.
    e = err({}, {"receiver.local_app_module": "m:app", "receiver.local_url": "http://h:1"})
    assert e.path == "receiver.local_url"


def test_option_errors_are_marked_as_coming_from_an_option() -> None:
    e = err({"gateway": {"port": 9000}}, {"gateway.port": 70000})
    assert (e.path, e.from_option) == ("gateway.port", True)
    e = err({"gateway": {"port": "x"}}, {"gateway.wss_port": 9})
    assert (e.path, e.from_option) == ("gateway.port", False)
    e = err({}, {"gateway.bogus": 1})
    assert str(e) == "config error: [gateway] bogus: unknown key"
    assert e.from_option is True


def test_overrides_do_not_modify_the_callers_data() -> None:
    data = {"gateway": {"port": 9000}}
    parse_config(data, {"gateway.port": 9100, "gateway.tls.enabled": False})
    assert data == {"gateway": {"port": 9000}}


# --- both: the receiver follows the gateway ------------------------------------------------


@pytest.mark.parametrize(
    ("gateway", "url"),
    [
        ({}, "ws://127.0.0.1:8765"),
        ({"wss_port": 9000}, "ws://127.0.0.1:9000"),
        ({"wss_host": "0.0.0.0", "wss_port": 9001}, "ws://127.0.0.1:9001"),
        ({"wss_host": "::", "wss_port": 9002}, "ws://[::1]:9002"),
        ({"wss_host": "10.1.2.3"}, "ws://10.1.2.3:8765"),
        ({"wss_host": "fd00::7"}, "ws://[fd00::7]:8765"),
        ({"tls": {"enabled": True, "cert_file": "c.pem"}}, "wss://127.0.0.1:8765"),
    ],
)
def test_both_mode_points_the_receiver_at_its_own_gateway(gateway: dict, url: str) -> None:
    cfg = parse_config({"mode": "both", "gateway": gateway})
    assert cfg.receiver.urls == (url,)


def test_explicit_url_and_other_modes_are_left_alone() -> None:
    cfg = parse_config(
        {"mode": "both", "gateway": {"wss_port": 9000}, "receiver": {"gateway_url": "ws://x:1"}}
    )
    assert cfg.receiver.urls == ("ws://x:1",)
    cfg = parse_config({"mode": "receiver", "gateway": {"wss_port": 9000}})
    assert cfg.receiver.urls == ("ws://127.0.0.1:8765",)


# --- files ---------------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"config error: cannot read {path}: No such file or directory"


def test_invalid_toml_is_one_line_with_position(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('mode = "both"\n[gateway]\nport = \n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    text = str(info.value)
    assert text.startswith(f"config error: {path}: invalid TOML: ")
    assert "line 3" in text and "\n" not in text


def test_non_utf8_file(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes('mode = "gateway" # caf\xe9\n'.encode("latin-1"))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"config error: {path}: ")
    assert "\n" not in str(info.value)


def test_empty_file_is_all_defaults(tmp_path: Path) -> None:
    path = tmp_path / "empty.toml"
    path.write_text("# nothing\n")
    assert load_config(path) == load_config(None)


# --- engine settings -----------------------------------------------------------------------


def test_gateway_settings_carry_every_limit() -> None:
    cfg = parse_config(
        {
            "gateway": {
                "timeout": 12.5,
                "max_streams_per_receiver": 7,
                "max_connections": 55,
                "max_header_bytes": 4096,
                "max_body_bytes": 1000,
                "header_timeout": 3.0,
                "keepalive_timeout": 4.0,
                "ping_interval": 6.0,
                "stream_window": 5000,
                "chunk_size": 2048,
                "max_frame_size": 300000,
            }
        }
    )
    s = to_gateway_settings(cfg)
    assert (s.timeout, s.max_streams_per_receiver, s.max_connections) == (12.5, 7, 55)
    f = s.front
    assert (f.max_header_bytes, f.max_body_bytes, f.header_timeout, f.keepalive_timeout) == (
        4096,
        1000,
        3.0,
        4.0,
    )
    assert (s.ws.ping_interval, s.ws.max_message_size) == (6.0, 300000)
    assert (s.stream_window, s.send_frame_size, s.codec.max_frame_size) == (5000, 2048, 300000)


def test_receiver_settings_carry_every_setting() -> None:
    cfg = parse_config(
        {
            "receiver": {
                "gateway_urls": ["ws://a:1", "ws://b:2"],
                "client_id": "r1",
                "local_url": "http://127.0.0.1:8000",
                "reconnect_enabled": False,
                "reconnect_delay": 2.5,
                "max_reconnect_attempts": 4,
                "ping_interval": 7.0,
                "timeout": 9.0,
                "stream_window": 1 << 20,
                "chunk_size": 4096,
                "max_frame_size": 1 << 16,
                "root_path": "/x",
            }
        }
    )
    s = to_receiver_settings(cfg)
    assert s.gateway_urls == ["ws://a:1", "ws://b:2"]
    assert (s.client_id, s.forward, s.root_path) == ("r1", ("127.0.0.1", 8000), "/x")
    assert (s.reconnect_enabled, s.reconnect_delay, s.max_reconnect_attempts) == (False, 2.5, 4)
    assert (s.ws.ping_interval, s.ws.ping_timeout, s.ws.max_message_size) == (7.0, 9.0, 1 << 16)
    assert (s.stream_window, s.send_frame_size, s.codec.max_frame_size) == (1 << 20, 4096, 1 << 16)
    # The gateway may send a whole window of body before the app reads any.
    assert s.max_buffered_body >= s.stream_window


def test_stream_window_zero_means_no_flow_control_offered() -> None:
    cfg = parse_config({"gateway": {"stream_window": 0}, "receiver": {"stream_window": 0}})
    assert to_gateway_settings(cfg).stream_window is None
    assert to_receiver_settings(cfg).stream_window is None


# --- properties ----------------------------------------------------------------------------

_SECTIONS = {
    "": Config,
    "logging": LoggingConfig,
    "gateway": GatewayConfig,
    "gateway.tls": TlsConfig,
    "gateway.auth": AuthConfig,
    "receiver": ReceiverConfig,
    "receiver.tls": TlsConfig,
    "receiver.auth": AuthConfig,
    "gateway.websocket": GatewayWebSocketConfig,
    "receiver.websocket": ReceiverWebSocketConfig,
}


def _leaf_keys() -> list[str]:
    keys = []
    for prefix, cls in _SECTIONS.items():
        for f in dataclasses.fields(cls):
            if f.metadata.get("section") or f.metadata.get("internal"):
                continue
            keys.append(f"{prefix}.{f.name}" if prefix else f.name)
    return keys


LEAVES = _leaf_keys()
junk = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=True),
    st.text(max_size=30),
    st.lists(st.text(max_size=5), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)


@settings(max_examples=examples(300), deadline=None)
@given(st.dictionaries(st.sampled_from([*LEAVES, "gateway.nope", "x"]), junk, max_size=6))
def test_any_input_gives_a_config_or_one_line_config_error(overrides: dict) -> None:
    overrides = {k: v for k, v in overrides.items() if v is not None}
    try:
        cfg = parse_config({}, overrides)
    except ConfigError as e:
        text = str(e)
        assert text.startswith("config error: ") and "\n" not in text
        assert e.path is not None
        return
    assert isinstance(cfg, Config)


@settings(max_examples=examples(200), deadline=None)
@given(st.one_of(st.integers(-(2**17), 2**17), st.sampled_from([-1, 0, 65535, 65536])))
def test_port_range_edges(port: int) -> None:
    try:
        cfg = parse_config({"gateway": {"port": port, "wss_port": 0, "admin_port": 0}})
    except ConfigError as e:
        assert not 0 <= port <= 65535
        assert e.path == "gateway.port"
    else:
        assert 0 <= port <= 65535 and cfg.gateway.port == port


def _doc_sections() -> dict[str, str]:
    """Section name ("" for the top level) -> its part of the reference."""
    parts = {}
    for chunk in re.split(r"^## ", DOCS.read_text(encoding="utf-8"), flags=re.M)[1:]:
        title, _, body = chunk.partition("\n")
        m = re.search(r"`\[([\w.]+)\]`", title)
        if m:
            parts[m.group(1)] = body
        elif title.startswith("Top level"):
            parts[""] = body
    return parts


def test_every_key_is_documented_in_its_section() -> None:
    parts = _doc_sections()
    for key in LEAVES:
        section, _, name = key.rpartition(".")
        assert section in parts, f"no section {section!r} in {DOCS.name}"
        assert f"| `{name}` |" in parts[section], f"{key} is not documented"


def test_documented_defaults_match_the_code() -> None:
    parts = _doc_sections()
    for key in LEAVES:
        section, _, name = key.rpartition(".")
        row = re.search(rf"^\| `{name}` \|[^|]*\| ([^|]*) \|", parts[section], re.M)
        assert row, f"{key}: no table row"
        documented = row.group(1).strip()
        default = _default_of(key)
        expected = "unset" if default is None else f"`{default}`"
        assert documented.startswith(expected), (
            f"{key}: documented {documented!r}, code {default!r}"
        )


def _default_of(key: str) -> object:
    node: object = Config()
    for name in key.split("."):
        node = getattr(node, name)
    if isinstance(node, bool):
        return "true" if node else "false"
    if isinstance(node, str):
        return f'"{node}"'
    if isinstance(node, tuple):
        return "[" + ", ".join(f'"{x}"' for x in node) + "]"  # as written in TOML
    return node


# --- direct construction (the embedding API: ReceiverConfig(gateway_url=...)) --------------


def test_sections_built_in_code_get_the_same_checks() -> None:
    r = ReceiverConfig(gateway_url="wss://gw.example:443", timeout=5, gateway_urls=["ws://a"])
    assert r.timeout == 5.0 and type(r.timeout) is float
    assert r.gateway_urls == ("ws://a",)  # normalised to a tuple, so the config stays hashable
    assert LoggingConfig(level="debug", max_size="1MB").max_size == 1024 * 1024
    cases = [
        (lambda: ReceiverConfig(gateway_url="http://x"), "ReceiverConfig.gateway_url: expected a ws://"),
        (lambda: ReceiverConfig(timeout=True), "ReceiverConfig.timeout: expected a number of seconds > 0, got true"),
        (lambda: ReceiverConfig(tls=3), "ReceiverConfig.tls: expected a TlsConfig, got an integer"),
        (lambda: GatewayConfig(port=-1), "GatewayConfig.port: expected an integer from 0 to 65535, got -1"),
        (lambda: AuthConfig(shared_secret=""), "AuthConfig.shared_secret: expected a non-empty string, got an empty string"),
        (lambda: Config(mode="all"), 'Config.mode: expected one of "gateway", "receiver", "both", got "all"'),
    ]  # fmt: skip
    for make, message in cases:
        with pytest.raises(ConfigError) as info:
            make()
        assert str(info.value).startswith(f"config error: {message}")


def test_settings_from_a_section_alone() -> None:
    r = ReceiverConfig(gateway_url="ws://gw:1", local_url="http://127.0.0.1:9", client_id="x")
    s = to_receiver_settings(r)
    assert (s.gateway_urls, s.forward, s.client_id) == (["ws://gw:1"], ("127.0.0.1", 9), "x")
    assert to_gateway_settings(GatewayConfig(timeout=3)).timeout == 3.0


def _differences(ours: object, theirs: object, path: str = "") -> list[str]:
    """Field paths where two settings trees differ (auth objects compared by type)."""
    if dataclasses.is_dataclass(ours) and type(ours) is type(theirs):
        return [
            diff
            for f in dataclasses.fields(ours)
            for diff in _differences(
                getattr(ours, f.name), getattr(theirs, f.name), f"{path}.{f.name}"
            )
        ]
    if callable(ours) and callable(theirs):
        return []  # injected sources (ids, jitter): the host passes real ones, tests fixed ones
    if path == ".auth":
        return [] if type(ours) is type(theirs) else [f"{path}: {ours!r} != {theirs!r}"]
    return [] if ours == theirs else [f"{path}: {ours!r} != {theirs!r}"]


def test_every_config_default_is_the_embedding_default() -> None:
    # one set of defaults: the command line and an embedder get the same engine
    from anpx_core.gateway import GatewaySettings
    from anpx_core.receiver import ReceiverSettings

    assert _differences(to_gateway_settings(GatewayConfig()), GatewaySettings()) == []
    from anpx_host.launch import with_entropy

    receiver = to_receiver_settings(ReceiverConfig())
    embedded = with_entropy(ReceiverSettings())  # what the drivers run an embedder's with
    # the same gateway, spelt with and without the trailing slash
    assert [u.rstrip("/") for u in receiver.gateway_urls] == [
        u.rstrip("/") for u in embedded.gateway_urls
    ]
    receiver.gateway_urls = embedded.gateway_urls
    assert _differences(receiver, embedded) == []


def test_the_defaults_check_sees_a_drift() -> None:
    from anpx_core.gateway import GatewaySettings

    drifted = to_gateway_settings(GatewayConfig(timeout=31.0, ping_interval=1.0))
    assert _differences(drifted, GatewaySettings()) == [
        ".timeout: 31.0 != 30.0",
        ".ws.ping_interval: 1.0 != 30.0",
    ]


def test_websocket_sections_map_to_the_units_settings() -> None:
    from anpx_host.config import to_ws_settings

    cfg = parse_config(
        {
            "gateway": {"websocket": {"max_per_address": 0, "max_message_size": 1024}},
            "receiver": {"websocket": {"max_open": 1, "idle_timeout": 60}},
        }
    )
    gw = to_ws_settings(cfg.gateway.websocket)
    assert (gw.max_per_client, gw.max_message_size, gw.max_open) == (0, 1024, 1000)
    rx = to_ws_settings(cfg.receiver.websocket)
    assert (rx.max_open, rx.idle_timeout, rx.max_per_client) == (1, 60.0, 0)
    with pytest.raises(ConfigError, match=r"\[gateway.websocket\] max_message_size"):
        parse_config({"gateway": {"websocket": {"max_message_size": 1023}}})
    with pytest.raises(ConfigError, match=r"\[receiver.websocket\] max_open"):
        parse_config({"receiver": {"websocket": {"max_open": 0}}})


def test_request_ids_are_random_uuid4_text() -> None:
    import uuid

    from anpx_host.config import uuid4_text

    ids = {uuid4_text() for _ in range(200)}
    assert len(ids) == 200
    for text in ids:
        parsed = uuid.UUID(text)
        assert str(parsed) == text
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122
